"""RocketMQAdapter: see the package docstring (adapters/rocketmq/__init__.py)."""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from mqkit.adapter import Adapter, PublishOutcome, Subscription, TopicStats
from mqkit.capabilities import Capabilities, Support
from mqkit.errors import ConfigError, ConnectionLost, MissingDriver, MQError, Unsupported
from mqkit.message import Receipt, Record

from .admin import AdminError, RemotingAdmin
from .codec import message_group, to_message
from .names import group_id, rocket_name
from .options import DEFAULT_NAMESRV_PORT, DEFAULT_PORT, RocketMQOptions, load_options
from .sender import Item, OrderedSender, SendResult

__all__ = ["ROCKETMQ_CAPABILITIES", "RocketMQAdapter"]

log = logging.getLogger("mqkit.adapters.rocketmq")

# apache.rocketmq.v2.MessageType
NORMAL, FIFO, DELAY = 1, 2, 3
MAX_BODY = 4 * 1024 * 1024  # the proxy's and broker's default maxMessageSize

ROCKETMQ_CAPABILITIES = Capabilities(
    backend="rocketmq",
    dead_letter=Support.EMULATED,
    max_message_size=MAX_BODY - 32 * 1024,
    notes={
        "confirm": "send returns after the proxy's SendReceipt (a batch is pipelined across "
        "keys, one at a time within a key)",
        "persistent": "the broker's flushDiskType: SYNC_FLUSH (docker/rocketmq/broker.conf) "
        "writes to disk before the receipt; RocketMQ's default ASYNC_FLUSH does not",
        "manual_ack": "SimpleConsumer receive + ack; leases (invisible duration) renewed "
        "while held; unacked messages come back when the lease ends",
        "attempt_count": "the broker's delivery_attempt",
        "dead_letter": "<topic>.dlq by the consumer; RocketMQ's own %DLQ%<group> only after "
        "max_redeliveries broker redeliveries (crash loops)",
        "per_key_ordering": "key -> FIFO message group on a MIXED/FIFO topic, the group "
        "consumes orderly",
        "partitions": "queues of the topic",
        "delay": "delivery_timestamp in whole seconds, rounded up (MIXED/DELAY topics)",
        "ttl": "checked when the message reaches a consumer; expired -> <topic>.dlq",
    },
)


def _driver() -> Any:
    try:
        import rocketmq
    except ModuleNotFoundError as exc:
        raise MissingDriver("rocketmq", "rocketmq-python-client", "rocketmq") from exc
    if not hasattr(rocketmq, "SimpleConsumer"):
        # The old ctypes client (rocketmq-client-python) also installs a top-level
        # 'rocketmq' module; it speaks the remoting protocol and is not supported.
        raise MissingDriver("rocketmq", "rocketmq-python-client", "rocketmq") from ImportError(
            f"the installed 'rocketmq' module ({getattr(rocketmq, '__file__', '?')}) is not "
            "rocketmq-python-client 5.x; uninstall rocketmq-client-python first"
        )
    return rocketmq


class RocketMQAdapter(Adapter):
    scheme = "rocketmq"
    capabilities = ROCKETMQ_CAPABILITIES

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._producer: Any = None
        self._types: dict[str, frozenset[int]] = {}
        self._groups_done: set[tuple[str, str, bool]] = set()
        self._declare_lock = threading.Lock()
        self._subs: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._closed = False
        self._warned_mixed = False

    # -- connection --------------------------------------------------------------------

    def open(self) -> None:
        self._rmq = _driver()
        self.options: RocketMQOptions = load_options(self.settings)
        parsed = self.settings.parsed()
        hosts = parsed.hosts or [("127.0.0.1", DEFAULT_PORT)]
        self.endpoints = ";".join(f"{h}:{p or DEFAULT_PORT}" for h, p in hosts)
        first = hosts[0]
        self._check_reachable(first[0], first[1] or DEFAULT_PORT)
        o = self.options
        self._config = self._rmq.ClientConfiguration(
            self.endpoints,
            self._rmq.Credentials(o.access_key, o.secret_key),
            request_timeout=o.request_timeout,
        )
        self.admin = RemotingAdmin(
            o.namesrv or f"{first[0]}:{DEFAULT_NAMESRV_PORT}",
            brokers=o.broker_list(),
            access_key=o.access_key,
            secret_key=o.secret_key,
            timeout=max(float(o.request_timeout), 3.0),
            cluster=o.cluster,
        )
        producer = self._rmq.Producer(self._config, tls_enable=o.tls)
        producer.startup()
        self._producer = producer
        # the longest wait for one outcome: 3 tries of request_timeout, the SDK's backoff
        self._sender = OrderedSender(producer, guard=o.request_timeout * 4 + 10)

    def _check_reachable(self, host: str, port: int) -> None:
        try:
            with socket.create_connection((host, port), timeout=self.settings.connect_timeout):
                pass
        except OSError as exc:
            raise ConnectionLost(
                f"cannot reach the RocketMQ proxy at {host}:{port} ({exc}); is it running? "
                "(docker/brokers up rocketmq starts one; the URL names the proxy's gRPC port, "
                "8081 by default)"
            ) from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subs):
            sub.close()
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.shutdown()
            except Exception as exc:
                log.warning("shutting down the RocketMQ producer failed: %r", exc)

    def start_consumer(self, gid: str, rocket_topic: str) -> Any:
        """A started SimpleConsumer of ``gid`` on ``rocket_topic``, with its settings synced."""
        o = self.options
        consumer = self._rmq.SimpleConsumer(
            self._config,
            gid,
            {rocket_topic: self._rmq.FilterExpression()},
            await_duration=o.long_polling,
            tls_enable=o.tls,
        )
        consumer.startup()
        # The proxy refuses receives until the client's settings arrived on the telemetry
        # stream; the SDK does not wait for them for simple consumers.
        event = getattr(consumer, "_init_settings_event", None)
        if event is not None and not event.wait(self.settings.connect_timeout):
            try:
                consumer.shutdown()
            finally:
                raise ConnectionLost(
                    f"the RocketMQ proxy at {self.endpoints} did not accept consumer group "
                    f"{gid} on {rocket_topic} within {self.settings.connect_timeout}s"
                )
        return consumer

    def forget(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    # -- admin ---------------------------------------------------------------------------

    def _admin_error(self, exc: AdminError, what: str) -> MQError:
        if exc.code is None:
            return ConnectionLost(
                f"{what}: {exc}. mqkit creates RocketMQ topics and groups through the "
                f"namesrv ({self.admin.namesrv}) and brokers' remoting ports; set the options "
                "namesrv=/brokers= if they are elsewhere, or admin=false and create them "
                "with mqadmin"
            )
        return MQError(f"{what}: {exc}")

    def declare(
        self, topic: str, *, partitions: int | None, groups: Sequence[str], ordered: bool
    ) -> None:
        rtopic = rocket_name(topic)
        if not self.options.admin:
            self._accepts(rtopic)  # the topic must exist (route) -- raises ConfigError
            return
        with self._declare_lock:
            try:
                queues = self._ensure_topic(rtopic, partitions, ordered)
                for g in groups:
                    self._ensure_group(topic, rtopic, g, ordered, queues)
            except AdminError as exc:
                raise self._admin_error(exc, f"declaring {topic!r}") from exc

    def _ensure_topic(self, rtopic: str, partitions: int | None, ordered: bool) -> dict[str, int]:
        queues = self.admin.queue_counts(rtopic)
        if queues:
            return queues
        kind = self.options.topic_type
        count = partitions or self.options.queues
        if kind == "auto":
            try:
                self.admin.create_topic(rtopic, "MIXED", count)
            except AdminError as exc:
                if exc.code is None or "MIXED" not in str(exc):
                    raise
                kind = "FIFO" if ordered else "NORMAL"
                if not self._warned_mixed:
                    self._warned_mixed = True
                    log.warning(
                        "the RocketMQ broker refuses MIXED topics (enableMixedMessageType=false): "
                        "creating %s topics instead; on a NORMAL topic per-key order and delay "
                        "are unsupported, on a FIFO topic delay is",
                        kind,
                    )
                self.admin.create_topic(rtopic, kind, count)
        else:
            self.admin.create_topic(rtopic, kind, count)
        self._types.pop(rtopic, None)
        deadline = time.monotonic() + max(5.0, self.settings.connect_timeout)
        while True:  # the broker registers the new topic with namesrv: wait for its route
            queues = self.admin.queue_counts(rtopic)
            if queues:
                return queues
            if time.monotonic() > deadline:
                raise AdminError(f"topic {rtopic} was created but namesrv has no route for it")
            time.sleep(0.05)

    def _ensure_group(
        self, topic: str, rtopic: str, group: str, ordered: bool, queues: dict[str, int]
    ) -> str:
        """Create the group if missing (orderly if asked; never turned back), pin new ones."""
        gid = group_id(topic, group, self.options.group_id_format)
        done = (rtopic, gid, ordered)
        if done in self._groups_done:
            return gid
        o = self.options
        cfg = self.admin.group_config(gid)
        # A group mqkit created has consumeBroadcastEnable=false; the broker's default
        # config (what it returns -- and auto-creates -- for an unknown group) has true.
        fresh = cfg is None or bool(cfg.get("consumeBroadcastEnable", True))
        orderly = ordered or bool(cfg and not fresh and cfg.get("consumeMessageOrderly"))
        if (
            fresh
            or bool(cfg and cfg.get("consumeMessageOrderly")) != orderly
            or (cfg and cfg.get("retryMaxTimes")) != o.max_redeliveries
        ):
            self.admin.create_group(gid, orderly=orderly, retries=o.max_redeliveries)
        if fresh:
            # Pin the new group at the end of every queue it has no offset in: it receives
            # what is published from now on (RocketMQ would start a new group at the
            # queue's first message, or at its last one).  Only when the group is new:
            # the broker writes offsets to disk every 5 s, and after a crash a known group
            # without offsets must replay (RocketMQ's default), not skip to the end.
            self.admin.pin_new_group(rtopic, gid, queues)
        self._groups_done.add(done)
        if not ordered:
            self._groups_done.add((rtopic, gid, False))
        return gid

    # -- producing -----------------------------------------------------------------------

    def _accepts(self, rtopic: str) -> frozenset[int]:
        """Message types the topic accepts, from its gRPC route (cached)."""
        cached = self._types.get(rtopic)
        if cached is not None:
            return cached
        try:
            route = self._producer._retrieve_topic_route_data(rtopic)
        except Exception as exc:
            raise ConfigError(
                f"RocketMQ has no route for topic {rtopic!r} ({exc}); declare it first "
                "(or, with admin=false, create it with mqadmin)",
                field="topic",
            ) from exc
        types: set[int] = set()
        for queue in route.message_queues:
            types.update(int(t) for t in queue.accept_message_types)
        result = frozenset(types)
        self._types[rtopic] = result
        return result

    def publish(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        confirm: bool,
        persistent: bool,
        delay: float | None = None,
    ) -> list[PublishOutcome]:
        if self._producer is None:
            err = ConnectionLost("the RocketMQ client is closed")
            return [err for _ in records]
        rtopic = rocket_name(topic)
        try:
            types = self._accepts(rtopic)
        except ConfigError as exc:
            return [exc for _ in records]
        deliver_at: int | None = None
        if delay:
            if DELAY not in types:
                raise Unsupported(
                    "rocketmq",
                    f"delayed delivery on topic {topic!r}",
                    "it does not accept DELAY messages (its type is FIFO or NORMAL); "
                    "declare topics as MIXED (the default) or DELAY",
                )
            deliver_at = math.ceil(time.time() + delay)
        fifo_only = FIFO in types and NORMAL not in types
        items: list[Item] = []
        for r in records:
            group: str | None = None
            at = deliver_at
            if at is None:
                if FIFO in types and (r.key is not None or fifo_only):
                    group = message_group(r.key if r.key is not None else r.id)
                elif NORMAL not in types and DELAY in types:
                    at = math.ceil(time.time())  # a DELAY-only topic: due now
            msg: Any
            try:
                msg = to_message(self._rmq.Message, rtopic, r, group=group, deliver_at=at)
            except Exception as exc:
                msg = exc
            items.append(Item(None if group is None else (rtopic, group), msg))
        # Pipelined across message groups, one at a time within each (sender.py).
        results = self._sender.send(items, confirm=confirm)
        if not confirm:
            return [self._unconfirmed(topic, r, f) for r, f in zip(records, results, strict=True)]
        outcomes: list[PublishOutcome] = []
        for r, f in zip(records, results, strict=True):
            if isinstance(f, BaseException):
                outcomes.append(f)
                continue
            error = f.exception()  # done: the sender waited for every receipt
            outcomes.append(error if error is not None else self._receipt(topic, r, f.result()))
        return outcomes

    @staticmethod
    def _receipt(topic: str, r: Record, receipt: Any) -> Receipt:
        return Receipt(
            id=r.id, topic=topic, confirmed=True, offset=receipt.offset, timestamp=time.time()
        )

    def _unconfirmed(self, topic: str, r: Record, f: SendResult) -> PublishOutcome:
        if isinstance(f, BaseException):
            return f
        if f.done():  # known already (an earlier record of its group was waited for)
            exc = f.exception()
            return exc if exc is not None else self._receipt(topic, r, f.result())

        def report(done: Future[Any]) -> None:
            exc = done.exception()
            if exc is not None:
                log.warning("unconfirmed send of %s to %s failed: %r", r.id, topic, exc)

        f.add_done_callback(report)
        return Receipt(id=r.id, topic=topic, confirmed=False, timestamp=time.time())

    # -- consuming -----------------------------------------------------------------------

    def subscribe(self, topic: str, group: str, *, prefetch: int, ordered: bool) -> Subscription:
        from .subscription import RocketMQSubscription

        rtopic = rocket_name(topic)
        if ordered and FIFO not in self._accepts(rtopic):
            raise Unsupported(
                "rocketmq",
                f"ordering='per_key' on topic {topic!r}",
                "its type accepts no FIFO messages; declare it MIXED (the default) or FIFO",
            )
        gid = group_id(topic, group, self.options.group_id_format)
        if self.options.admin:
            with self._declare_lock:
                try:
                    queues = self.admin.queue_counts(rtopic) or {}
                    self._ensure_group(topic, rtopic, group, ordered, queues)
                except AdminError as exc:
                    raise self._admin_error(exc, f"creating group {group!r} on {topic!r}") from exc
        sub = RocketMQSubscription(self, topic, rtopic, gid)
        self._subs.add(sub)
        return sub

    # -- operations ----------------------------------------------------------------------

    def stats(self, topic: str, group: str) -> list[TopicStats]:
        rtopic = rocket_name(topic)
        gid = group_id(topic, group, self.options.group_id_format)
        try:
            rows = self.admin.backlog(rtopic, gid)
        except AdminError as exc:
            raise self._admin_error(exc, f"backlog of {topic!r}") from exc
        return [TopicStats(topic, group, qid, lag, None) for qid, lag in rows]

    def delete_topic(self, topic: str) -> None:
        rtopic = rocket_name(topic)
        try:
            self.admin.delete_topic(rtopic)
        except AdminError as exc:
            raise self._admin_error(exc, f"deleting {topic!r}") from exc
        self._types.pop(rtopic, None)
        self._groups_done = {d for d in self._groups_done if d[0] != rtopic}
