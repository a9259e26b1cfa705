"""RabbitMQ (AMQP 0-9-1, pika): ``amqp://user:pass@host:5672/vhost``.

Features
    A topic is a durable fanout exchange; each consumer group is a durable
    queue bound to it (every group gets every message published after it
    exists; members of a group compete).  Queues are quorum queues by default:
    replicated, fsynced, and they count redeliveries (``x-delivery-count``),
    which becomes ``Delivery.attempt``.  ``confirm`` uses publisher confirms
    with a sliding window of unconfirmed messages (``confirm_window``), so a
    batch costs about one round trip, not one per message; a basic.nack, a
    basic.return (unroutable, ``mandatory``) or a channel lost before the
    confirm fails exactly the records concerned.  ``persistent`` adds
    delivery_mode=2.  Manual ack is basic.ack / basic.nack(requeue) with
    basic.qos = the consumer's prefetch; acks of consecutive deliveries go out
    as one basic.ack(multiple).  ``ordering="per_key"`` moves a group onto N
    lane queues with ``x-single-active-consumer``: every message's routing key
    is its key's slot (CRC-32 of the key mod 32) and the group's direct
    exchange binds slot s to lane s mod N, so one key stays in one lane and
    exactly one consumer process works a lane at a time, in order.  Delayed
    sends go through a per-topic delay queue (``x-message-ttl``) that
    dead-letters into the topic when due.  The message id and content type
    travel as the AMQP ``message_id`` and ``content_type`` properties (what
    other AMQP clients read), the key in an ``x-mqkit-key`` header.
    Everything pika does runs on one I/O thread per client (SelectConnection):
    producers and consumers in any number of threads share it; heartbeats are
    answered while handlers run.  A lost connection is re-established with
    backoff; consumers resume, and RabbitMQ has already requeued what they had
    not acked.
Connection string
    ``amqp://user:password@host:5672/vhost`` (vhost ``/`` is ``%2F``; the default
    user is guest/guest), ``amqps://`` for TLS (port 5671), several hosts as
    ``host1:5672,host2:5672`` (tried in turn on reconnect), options as query
    parameters, e.g. ``?queue_type=classic&confirm_window=256``.
Options
    ``queue_type`` quorum (default) | classic; ``lanes`` (4) lanes of an ordered
    group this client creates (``declare(..., partitions=N, ordered=True)``
    also sets it; at most 32); ``confirm_window`` (1000) unconfirmed messages
    in flight; ``confirm_timeout`` (30 s) before an unconfirmed send fails;
    ``mandatory`` (true) fail sends that no group queue would receive;
    ``heartbeat`` (30 s); ``reconnect_max_delay`` (5 s); ``ca_file`` for amqps.
    A send waits up to the ``connect_timeout`` setting for a lost connection.
Limits
    TTL is not a broker TTL: the SDK checks the expiry header when a message
    reaches a consumer and dead-letters it with reason ``expired`` (a broker
    TTL would drop it).  Delays are rounded UP to two significant digits (one
    delay queue per value, at most 10% late), at most 20 days.  A delayed
    ``nack`` is held by the consumer and requeued when due: if the consumer
    closes first, it is requeued at once.  Turning a group ordered is one-way:
    its old queue is unbound, still drained by the group's consumers, and
    unordered consumers of an ordered group read its lanes (one active
    consumer per lane).  The lane count is fixed by whoever creates the lanes
    first; clients creating the same group's lanes at the same moment must
    agree on it.  Prefetch applies per lane and is capped at 65535 (AMQP's
    limit).  ``stats`` reports ready messages, not unacked ones (AMQP cannot
    tell; use the management API).  Ops tools (replay, fanout) read a group
    as an ordered member, which turns that group into lanes.
    AMQP cannot list queues: ``delete_topic`` deletes the groups this client
    declared or consumed; delete others with rabbitmqctl.  With
    ``queue_type=classic``, ``attempt`` is only 1 or 2 (the redelivered flag)
    and a delay queue's dead-lettering is not crash-safe.  An ack whose
    channel has closed since cannot be delivered: it is logged, and RabbitMQ
    delivers the message again (use ``dedupe``).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mqkit.adapter import Adapter, PublishOutcome, Subscription, TopicStats
from mqkit.capabilities import Capabilities, Support
from mqkit.errors import ConfigError, MissingDriver, MQError
from mqkit.message import H_CONTENT_TYPE, Record

from ._link import Batch, Link, NotFound, Outgoing
from ._names import (
    SLOTS,
    delay_bucket_ms,
    delay_name,
    group_queue,
    lane_queue,
    lanes_exchange,
    slot,
)
from ._subscription import KEY_HEADER, MOVED_TO_PROPERTIES, RabbitSubscription, amqp_content_type

__all__ = ["RabbitMQAdapter", "RabbitMQOptions"]

_NOTES = {
    "confirm": "publisher confirms, pipelined: a sliding window of confirm_window unconfirmed "
    "messages per client; nack / return / lost channel fail exactly those records",
    "persistent": "durable quorum (or classic) queues, delivery_mode=2",
    "attempt_count": "quorum queues' x-delivery-count + 1",
    "per_key_ordering": "key -> one of 32 slots (CRC-32) -> lane queue (slot mod N) with "
    "x-single-active-consumer: one consumer per lane at a time, across processes",
    "partitions": "only ordered groups have lanes (lanes option, or declare(partitions=N, "
    "ordered=True)), at most 32",
    "retry_backoff": "in the consumer: the message stays unacked, its key's lane waits",
    "ttl": "checked when the message reaches a consumer; expired -> <topic>.dlq (no broker "
    "TTL, which would drop it)",
    "delay": "send: a per-topic delay queue (x-message-ttl, rounded up to 2 significant "
    "digits) dead-letters into the topic; nack(delay): held by the consumer, then requeued",
    "dead_letter": "the SDK publishes to <topic>.dlq (confirmed), then acks",
}

RABBITMQ_CAPABILITIES = Capabilities(
    backend="rabbitmq",
    partitions=Support.EMULATED,
    delay=Support.EMULATED,
    max_message_size=16 * 1024 * 1024,
    notes=_NOTES,
)

CLASSIC_CAPABILITIES = RABBITMQ_CAPABILITIES.model_copy(
    update={
        "attempt_count": Support.EMULATED,
        "notes": {
            **_NOTES,
            "attempt_count": "classic queues only flag redeliveries: attempt is 1, or 2 for "
            "any redelivery",
            "persistent": "durable classic queues, delivery_mode=2",
        },
    }
)

_MAX_DELAY_S = 20 * 86400.0


class RabbitMQOptions(BaseModel):
    """Options of ``amqp://`` URLs; a typo is an error naming the option."""

    model_config = ConfigDict(extra="forbid")

    queue_type: Literal["quorum", "classic"] = "quorum"
    lanes: int = Field(default=4, ge=1, le=SLOTS)
    confirm_window: int = Field(default=1000, ge=1, le=1_000_000)
    confirm_timeout: float = Field(default=30.0, gt=0)
    mandatory: bool = True
    heartbeat: int = Field(default=30, ge=0, le=3600)
    reconnect_max_delay: float = Field(default=5.0, gt=0)
    ca_file: str | None = None


def _options(raw: dict[str, Any]) -> RabbitMQOptions:
    raw = dict(raw)
    raw.pop("adapter", None)
    try:
        return RabbitMQOptions.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(x) for x in err["loc"])
        raise ConfigError(
            f"{err['msg']} (amqp options: {', '.join(RabbitMQOptions.model_fields)})",
            field=f"options.{name}",
        ) from None


class RabbitMQAdapter(Adapter):
    """See the module docstring."""

    scheme = "amqp"
    capabilities = RABBITMQ_CAPABILITIES

    # -- connection ----------------------------------------------------------------------

    def open(self) -> None:
        try:
            import pika
        except ModuleNotFoundError as exc:
            raise MissingDriver("amqp", "pika", "rabbitmq") from exc
        self._opts = _options(self.settings.all_options())
        if self._opts.queue_type == "classic":
            # per-instance: mq.capabilities reads the adapter object
            object.__setattr__(self, "capabilities", CLASSIC_CAPABILITIES)
        parsed = self.settings.parsed()
        tls = parsed.scheme == "amqps"
        credentials = pika.PlainCredentials(parsed.username or "guest", parsed.password or "guest")
        timeout = self.settings.connect_timeout
        params: list[Any] = []
        for host, port in parsed.hosts or [("127.0.0.1", None)]:
            ssl_options = None
            if tls:
                context = ssl.create_default_context(cafile=self._opts.ca_file)
                ssl_options = pika.SSLOptions(context, server_hostname=host)
            params.append(
                pika.ConnectionParameters(
                    host=host,
                    port=port or (5671 if tls else 5672),
                    virtual_host=parsed.path or "/",
                    credentials=credentials,
                    heartbeat=self._opts.heartbeat,
                    connection_attempts=1,
                    socket_timeout=timeout,
                    stack_timeout=timeout,
                    ssl_options=ssl_options,
                    client_properties={"connection_name": self.settings.client_id},
                )
            )
        address = ",".join(f"{p.host}:{p.port}" for p in params) + f" vhost {parsed.path or '/'}"
        self._lock = threading.Lock()
        self._exchanges: set[str] = set()
        self._layouts: dict[tuple[str, str], tuple[bool, list[tuple[str, int | None]]]] = {}
        self._lanes_hint: dict[str, int] = {}
        self._delays: dict[str, tuple[str, float]] = {}  # name -> (topic, declared at)
        self._link = Link(
            params,
            address=address,
            window=self._opts.confirm_window,
            confirm_timeout=self._opts.confirm_timeout,
            connect_timeout=timeout,
            mandatory=self._opts.mandatory,
            reconnect_max_delay=self._opts.reconnect_max_delay,
        )
        self._link.start()

    def close(self) -> None:
        link = getattr(self, "_link", None)
        if link is not None:
            link.stop()

    # -- topology ------------------------------------------------------------------------

    def _queue_args(self, single_active: bool = False) -> dict[str, Any]:
        args: dict[str, Any] = {"x-queue-type": self._opts.queue_type}
        if single_active:
            args["x-single-active-consumer"] = True
        return args

    def _exists(self, kind: Literal["queue", "exchange"], name: str) -> Any:
        """The passive-declare reply, or None if there is no such queue / exchange."""
        call = (f"{kind}_declare", {kind: name, "passive": True})
        try:
            return self._link.admin([call])[0]
        except NotFound:
            return None

    def _count_lanes(self, topic: str, group: str) -> int:
        n = 0
        while n < SLOTS and self._exists("queue", lane_queue(topic, group, n)) is not None:
            n += 1
        return n

    def _ensure_exchange(self, topic: str) -> None:
        if topic in self._exchanges:
            return
        self._link.admin(
            [("exchange_declare", {"exchange": topic, "exchange_type": "fanout", "durable": True})]
        )
        with self._lock:
            self._exchanges.add(topic)

    def _ordered_layout(self, topic: str, group: str) -> list[tuple[str, int | None]]:
        """Create (or complete) the group's lanes, then move the group onto them."""
        gx = lanes_exchange(topic, group)
        n = self._count_lanes(topic, group) or self._lanes_hint.get(topic, self._opts.lanes)
        lanes = [lane_queue(topic, group, i) for i in range(n)]
        calls: list[tuple[str, dict[str, Any]]] = [
            ("exchange_declare", {"exchange": gx, "exchange_type": "direct", "durable": True})
        ]
        calls += [
            ("queue_declare", {"queue": q, "durable": True, "arguments": self._queue_args(True)})
            for q in lanes
        ]
        calls += [
            ("queue_bind", {"queue": lanes[s % n], "exchange": gx, "routing_key": str(s)})
            for s in range(SLOTS)
        ]
        # lanes first, old queue unbound second: a message in between reaches both
        # (a duplicate), never neither
        calls.append(("exchange_bind", {"destination": gx, "source": topic, "routing_key": ""}))
        self._link.admin(calls)
        queues: list[tuple[str, int | None]] = [(q, i) for i, q in enumerate(lanes)]
        plain = group_queue(topic, group)
        if self._exists("queue", plain) is not None:
            self._link.admin(
                [("queue_unbind", {"queue": plain, "exchange": topic, "routing_key": ""})]
            )
            queues.append((plain, None))  # drained by the ordered consumers
        return queues

    def _group_layout(
        self, topic: str, group: str, *, ordered: bool, fresh: bool
    ) -> list[tuple[str, int | None]]:
        """The queues a member of ``group`` consumes; creates the group if missing."""
        cached = self._layouts.get((topic, group))
        if cached is not None and not fresh and (cached[0] or not ordered):
            return cached[1]
        plain = group_queue(topic, group)
        if ordered:
            queues = self._ordered_layout(topic, group)
        elif self._exists("exchange", lanes_exchange(topic, group)) is not None and (
            n := self._count_lanes(topic, group)
        ):
            ordered = True  # the group was made ordered before: read its lanes
            queues = [(lane_queue(topic, group, i), i) for i in range(n)]
            if self._exists("queue", plain) is not None:
                queues.append((plain, None))
        else:
            self._link.admin(
                [
                    (
                        "queue_declare",
                        {"queue": plain, "durable": True, "arguments": self._queue_args()},
                    ),
                    ("queue_bind", {"queue": plain, "exchange": topic, "routing_key": ""}),
                ]
            )
            queues = [(plain, None)]
        with self._lock:
            self._layouts[(topic, group)] = (ordered, queues)
        return queues

    def declare(
        self, topic: str, *, partitions: int | None, groups: Sequence[str], ordered: bool
    ) -> None:
        if partitions is not None:
            with self._lock:
                self._lanes_hint[topic] = min(partitions, SLOTS)
        self._ensure_exchange(topic)
        for group in groups:
            self._group_layout(topic, group, ordered=ordered, fresh=False)

    def delete_topic(self, topic: str) -> None:
        """Delete the topic's exchange and every queue of it this client knows."""
        with self._lock:
            groups = [(k, v) for k, v in self._layouts.items() if k[0] == topic]
            delays = [name for name, (t, _) in self._delays.items() if t == topic]
            for k, _ in groups:
                del self._layouts[k]
            for name in delays:
                del self._delays[name]
            self._exchanges.discard(topic)
        calls: list[tuple[str, dict[str, Any]]] = []
        for (_, group), (_, queues) in groups:
            calls += [("queue_delete", {"queue": q}) for q, _ in queues]
            calls.append(("queue_delete", {"queue": group_queue(topic, group)}))
            calls.append(("exchange_delete", {"exchange": lanes_exchange(topic, group)}))
        for name in delays:
            calls += [("queue_delete", {"queue": name}), ("exchange_delete", {"exchange": name})]
        calls.append(("exchange_delete", {"exchange": topic}))
        self._link.admin(calls)

    def stats(self, topic: str, group: str) -> list[TopicStats]:
        out: list[TopicStats] = []
        if self._exists("exchange", lanes_exchange(topic, group)) is not None:
            for i in range(SLOTS):
                reply = self._exists("queue", lane_queue(topic, group, i))
                if reply is None:
                    break
                out.append(TopicStats(topic, group, i, reply.message_count, None))
        reply = self._exists("queue", group_queue(topic, group))
        if reply is not None:
            out.append(TopicStats(topic, group, None, reply.message_count, None))
        return out

    # -- publishing ----------------------------------------------------------------------

    def _delay_exchange(self, topic: str, delay: float) -> str:
        """Declare (again, before it could expire) the delay queue for ``delay`` seconds."""
        if delay > _MAX_DELAY_S:
            raise ConfigError(
                f"at most {_MAX_DELAY_S:.0f} s on RabbitMQ, got {delay!r}", field="delay"
            )
        ms = delay_bucket_ms(delay)
        name = delay_name(topic, ms)
        # An idle delay queue deletes itself after `expires`; it is declared again
        # (which resets that clock) well before a message in it could be lost.
        expires = min(2 * ms + 3_600_000, 2**32 - 1)
        last = self._delays.get(name)
        if last is not None and time.monotonic() - last[1] < expires / 4000:
            return name
        args: dict[str, Any] = {
            "x-queue-type": self._opts.queue_type,
            "x-message-ttl": ms,
            "x-expires": expires,
            "x-dead-letter-exchange": topic,
        }
        if self._opts.queue_type == "quorum":
            args["x-dead-letter-strategy"] = "at-least-once"
            args["x-overflow"] = "reject-publish"
        self._link.admin(
            [
                (
                    "exchange_declare",
                    {
                        "exchange": name,
                        "exchange_type": "fanout",
                        "durable": True,
                        "auto_delete": True,
                    },
                ),
                ("queue_declare", {"queue": name, "durable": True, "arguments": args}),
                ("queue_bind", {"queue": name, "exchange": name, "routing_key": ""}),
            ]
        )
        with self._lock:
            self._delays[name] = (topic, time.monotonic())
        return name

    def publish(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        confirm: bool,
        persistent: bool,
        delay: float | None = None,
    ) -> list[PublishOutcome]:
        from pika import BasicProperties

        if not records:
            return []
        exchange = topic
        if delay:
            try:
                exchange = self._delay_exchange(topic, delay)
            except ConfigError:
                raise
            except MQError as exc:
                return [exc] * len(records)
        mode = 2 if persistent else 1
        batch = Batch(len(records))
        items: list[Outgoing] = []
        moved = MOVED_TO_PROPERTIES
        for i, r in enumerate(records):
            headers: dict[str, Any] = {k: v for k, v in r.headers.items() if k not in moved}
            if r.key is not None:
                headers[KEY_HEADER] = r.key
            props = BasicProperties(
                headers=headers or None,
                delivery_mode=mode,
                message_id=r.id or None,
                content_type=amqp_content_type(r.headers.get(H_CONTENT_TYPE)),
            )
            items.append(
                Outgoing(
                    batch, i, topic, exchange, slot(r.key, r.id), r.value, props, r.id, confirm
                )
            )
        return self._link.publish(batch, items)

    # -- consuming -----------------------------------------------------------------------

    def subscribe(self, topic: str, group: str, *, prefetch: int, ordered: bool) -> Subscription:
        self._ensure_exchange(topic)
        queues = self._group_layout(topic, group, ordered=ordered, fresh=True)
        # basic.qos takes a 16-bit count: a larger prefetch is capped, not refused
        sub = RabbitSubscription(self._link, topic, queues, max(1, min(prefetch, 65535)))
        self._link.attach(sub)
        return sub
