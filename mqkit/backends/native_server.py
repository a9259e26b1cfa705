"""The native broker over the network: ``mqkit://host:port`` (``mqkits://`` for TLS).

Features
    The same queue semantics as ``native://`` -- the server hosts the same
    engine -- shared by many processes: partitions, groups, redelivery with
    attempt counts, per-key ordering, delay.  Confirmed persistent sends
    return after the broker's fsync (group commit).  Many threads share one
    connection; a lost connection is re-opened with backoff, and a consumer
    rejoins its group on the new one (what it held was redelivered).
Connection string
    ``mqkit://127.0.0.1:7600?token=SECRET``;
    ``mqkits://broker.example:7600?cafile=/etc/mqkit/ca.pem`` (``?verify=false``
    skips certificate checks: test setups only).
Options
    ``token``; ``cafile``, ``verify``, ``server_hostname`` (TLS);
    ``reconnect_timeout`` seconds spent re-connecting before a request fails
    (default: the ``connect_timeout`` setting); ``request_timeout`` seconds to
    wait for a reply (default 60).
Limits
    One broker machine (no replication).  A broker started with ``--memory``
    keeps nothing across restarts: ``persistent=True`` is then warned about and
    not honoured (capability ``persistent: unsupported``), as with memory://.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
import warnings
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mqkit.adapter import Adapter, Inbound, PublishOutcome, Subscription, TopicStats
from mqkit.broker import protocol as wire
from mqkit.broker.body import EncodedRecords, encode_body
from mqkit.broker.client import BrokerClient, Pending
from mqkit.capabilities import Capabilities, Support
from mqkit.errors import Closed, ConfigError, ConnectionLost, MessageTooLarge, MQError
from mqkit.message import H_DELIVER_AT, Receipt, Record

__all__ = ["NativeServerAdapter", "ServerOptions", "ServerSubscription"]

log = logging.getLogger("mqkit.backends.native_server")

DEFAULT_PORT = 7600
_OPTIONS = (
    "token",
    "cafile",
    "verify",
    "server_hostname",
    "reconnect_timeout",
    "request_timeout",
    "adapter",
)
_NOTES = {
    "retry_backoff": "in the consumer: the message stays leased, its key's lane waits",
    "ttl": "checked when the message reaches a consumer; expired -> <topic>.dlq",
}
CAPABILITIES = Capabilities(backend="mqkit", max_message_size=wire.MAX_MESSAGE, notes={**_NOTES})
MEMORY_CAPABILITIES = Capabilities(
    backend="mqkit",
    persistent=Support.UNSUPPORTED,
    max_message_size=wire.MAX_MESSAGE,
    notes={
        **_NOTES,
        "persistent": "this broker runs with --memory: persistent=True is accepted and "
        "warned about, not honoured",
    },
)


_Ack = tuple[int, int, int]  # (connection generation, partition, offset): an Inbound's handle


class ServerSubscription(Subscription):
    """A group member on the server; mirrors the in-process EngineSubscription.

    Its membership belongs to one connection.  After a reconnect (a new
    ``generation``) it joins again; deliveries fetched before are then back
    with the group, so their nack is moot and their ack is sent through the
    new membership (the work was done: settle it rather than redo it).

    Acks do not wait for a round trip each: an ack is written at once when no
    ack request is in flight, else it joins the next one, sent when that reply
    is in (or before the next fetch, nack, heartbeat or close).  So acks reach
    the broker as soon as one round trip allows, in batches under load.  Acks
    caught by a lost connection are sent again after the reconnect, like any
    ack of an earlier generation; any other failed ack request raises from the
    next call of this subscription (the broker keeps those messages unacked:
    they are redelivered, never lost).
    """

    def __init__(
        self,
        client: BrokerClient,
        topic: str,
        group: str,
        *,
        prefetch: int,
        ordered: bool,
    ) -> None:
        self._client = client
        self._topic = topic
        self._group = group
        self._prefetch = prefetch
        self._ordered = ordered
        self._closed = False
        self._member = ""
        self._generation = -1
        self._acks: list[_Ack] = []  # not yet sent
        self._acking: list[tuple[Pending, tuple[_Ack, ...], bool]] = []  # in flight
        self._join()

    def _join(self) -> str:
        req = wire.Join(self._topic, self._group, self._ordered, self._prefetch)
        reply = self._client.call(req)
        self._member, self._generation = wire.decode_member(reply.payload), reply.generation
        return self._member

    def _current(self) -> str:
        """This member's id on the live connection, joining again after a reconnect."""
        if self._generation != self._client.generation:
            return self._join()
        return self._member

    def fetch(self, max_count: int, timeout: float) -> list[Inbound]:
        if self._closed:
            raise Closed("this subscription is closed")
        self._reap_acks(block=False)
        self._send_acks()  # before the fetch: the broker frees those prefetch slots first
        member = self._current()
        req = wire.Fetch(member, max_count, timeout)
        try:
            reply = self._client.call(req, timeout=timeout + self._client.request_timeout)
        except ConnectionLost:
            # Whatever this fetch got is back with the group; rejoin (or fail for good).
            self._join()
            return []
        gen = self._generation
        out: list[Inbound] = []
        for part in reply.parts:
            for d in wire.decode_deliveries(part):
                out.append(
                    Inbound(
                        self._topic,
                        d.record,
                        d.attempt,
                        d.partition,
                        d.offset,
                        (gen, d.partition, d.offset),
                    )
                )
        return out

    def ack(self, inbound: Inbound) -> None:
        self._acks.append(inbound.handle)
        self._pump_acks()

    def ack_many(self, inbounds: Sequence[Inbound]) -> None:
        self._acks.extend(i.handle for i in inbounds)
        self._pump_acks()

    def _pump_acks(self) -> None:
        self._reap_acks(block=False)
        if not self._acking:
            try:
                self._send_acks()
            except ConnectionLost as exc:
                # Kept, not dropped: the next fetch reconnects (or fails run() with
                # this error) and sends them through the new membership.
                log.debug("acks of %s/%s wait for the reconnect: %s", self._topic, self._group, exc)

    def flush_acks(self) -> None:
        """Send every pending ack and wait for the broker to have applied them."""
        for _ in range(2):  # a second round for acks caught by a lost connection
            self._send_acks()
            self._reap_acks(block=True)
            if not self._acks:
                return

    def _send_acks(self) -> None:
        if not self._acks:
            return
        items, self._acks = tuple(self._acks), []
        try:
            member = self._current()
            gen = self._generation
            fresh = tuple(a for a in items if a[0] == gen)
            if fresh:
                req = wire.Ack(member, tuple((p, o) for _, p, o in fresh))
                self._acking.append((self._client.submit(req), fresh, False))
            # Acks from before a reconnect go one per request, and a refusal is fine:
            # after a broker restart it may not know the delivery any more (it then
            # redelivers the message), and one refused item must not stop the others.
            for a in items:
                if a[0] != gen:
                    req = wire.Ack(member, ((a[1], a[2]),))
                    self._acking.append((self._client.submit(req), (a,), True))
        except BaseException:
            sent = {a for _, batch, _ in self._acking for a in batch}
            self._acks[:0] = [a for a in items if a not in sent]  # not sent: still pending
            raise

    def _reap_acks(self, *, block: bool) -> None:
        """Collect finished ack requests; the first failure is raised (after reaping all)."""
        error: BaseException | None = None
        while self._acking:
            (conn, rid, call), items, stale = self._acking[0]
            if not block and not call.event.is_set():
                break
            self._acking.pop(0)
            try:
                self._client.wait(conn, rid, call)
            except ConnectionLost:
                # The work was done: ack it again through the next membership.
                self._acks.extend(items)
            except ConfigError as exc:
                if not stale:
                    error = error or exc
                else:
                    log.info("ack of %s after a reconnect refused (redelivered): %s", items, exc)
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error

    def nack(self, inbound: Inbound, *, delay: float = 0.0) -> None:
        self.flush_acks()
        gen, p, o = inbound.handle
        if gen != self._client.generation:
            return  # that connection's leases were released: it is redelivered already
        self._client.call(wire.Nack(self._member, ((p, o),), float(delay)))

    def heartbeat(self) -> None:
        self.flush_acks()
        self._client.call(wire.Heartbeat(self._current()))

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush_acks()
        except (ConnectionLost, Closed) as exc:
            # The broker released this member's leases with the connection: those
            # messages are redelivered (handled twice unless dedupe is on), not lost.
            log.warning("acks of %s/%s not applied, redelivered: %s", self._topic, self._group, exc)
        self._closed = True
        if self._generation != self._client.generation:
            return  # the broker dropped this membership with the old connection
        # On a lost connection the broker releases the members itself.
        with contextlib.suppress(ConnectionLost, Closed):
            self._client.call(wire.Leave(self._member))


class ServerOptions(BaseModel):
    """URL query parameters / ``options`` of ``mqkit://``; a typo is an error."""

    model_config = ConfigDict(extra="forbid")

    token: str = ""
    cafile: str | None = None
    verify: bool = True
    server_hostname: str | None = None
    reconnect_timeout: float | None = Field(default=None, ge=0)
    request_timeout: float = Field(default=60.0, gt=0)


class NativeServerAdapter(Adapter):
    scheme = "mqkit"
    capabilities = CAPABILITIES

    def open(self) -> None:
        parsed = self.settings.parsed()
        opts = self.settings.all_options()
        opts.pop("adapter", None)
        try:
            o = ServerOptions.model_validate(opts)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(
                f"{err['msg']} ({parsed.scheme} options: {', '.join(ServerOptions.model_fields)})",
                field="options." + ".".join(str(x) for x in err["loc"]),
            ) from None
        if len(parsed.hosts) > 1:
            raise ConfigError(
                "the native broker is a single server: give one host:port", field="url"
            )
        ctx: ssl.SSLContext | None = None
        if parsed.scheme == "mqkits":
            ctx = self._tls(o)
        elif o.cafile or not o.verify or o.server_hostname:
            raise ConfigError("TLS options need an mqkits:// URL", field="url")
        self._client = BrokerClient(
            parsed.host,
            parsed.port(DEFAULT_PORT),
            token=o.token or parsed.password or "",
            ssl_context=ctx,
            server_hostname=o.server_hostname,
            connect_timeout=self.settings.connect_timeout,
            reconnect_timeout=o.reconnect_timeout,
            request_timeout=o.request_timeout,
            client_name=self.settings.client_id,
        )
        self._client.connect()
        self._warned = False
        if not self._client.persistent:
            vars(self)["capabilities"] = MEMORY_CAPABILITIES  # what this broker can promise

    @staticmethod
    def _tls(o: ServerOptions) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=o.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load {o.cafile!r}: {exc}", field="options.cafile") from exc
        if not o.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()

    def declare(
        self, topic: str, *, partitions: int | None, groups: Sequence[str], ordered: bool
    ) -> None:
        self._client.call(wire.Declare(topic, partitions, tuple(groups), ordered))

    def publish(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        confirm: bool,
        persistent: bool,
        delay: float | None = None,
    ) -> list[PublishOutcome]:
        if persistent and not self._client.persistent and not self._warned:
            self._warned = True
            warnings.warn(
                "this mqkit broker runs with --memory: persistent=True is not honoured "
                "(start it with --data-dir where it matters)",
                stacklevel=4,
            )
        if delay:
            at = repr(time.time() + delay)
            records = [Record(r.key, r.value, {**r.headers, H_DELIVER_AT: at}) for r in records]
        outcomes: list[PublishOutcome] = []
        failure: BaseException | None = None
        for batch in self._batches(records):
            if isinstance(batch, BaseException):
                outcomes.append(batch)
                continue
            sent, encoded = batch
            if failure is not None:
                outcomes += [failure] * len(sent)
                continue
            try:
                req = wire.Publish(topic, encoded, durable=confirm and persistent)
                placed = wire.decode_placed(self._client.call(req).payload)
                if len(placed) != len(sent):
                    raise wire.ProtocolError(
                        f"the broker placed {len(placed)} of {len(sent)} messages"
                    )
            except MQError as exc:
                failure = exc  # later batches are not sent: they would overtake this one
                outcomes += [exc] * len(sent)
                continue
            now = time.time()
            outcomes += [
                Receipt(r.id, topic, True, p, o, now)
                for r, (p, o) in zip(sent, placed, strict=True)
            ]
        return outcomes

    def _batches(
        self, records: Sequence[Record]
    ) -> list[tuple[list[Record], EncodedRecords] | BaseException]:
        """Encode once and split into frames that fit the broker's limit, in order."""
        budget = self._client.max_frame - 64 * 1024
        out: list[tuple[list[Record], EncodedRecords] | BaseException] = []
        batch: list[Record] = []
        keys: list[bytes | None] = []
        bodies: list[bytes] = []
        size = 0
        for r in records:
            body = encode_body(r)
            n = 4 + len(body)  # its length prefix in a PUBLISH
            if n > budget:
                if batch:
                    out.append((batch, EncodedRecords(keys, bodies)))
                    batch, keys, bodies, size = [], [], [], 0
                out.append(
                    MessageTooLarge(
                        f"message {r.id} encodes to {n} bytes; the broker accepts at most {budget}",
                        field="value",
                    )
                )
                continue
            if batch and size + n > budget:
                out.append((batch, EncodedRecords(keys, bodies)))
                batch, keys, bodies, size = [], [], [], 0
            batch.append(r)
            keys.append(None if r.key is None else r.key.encode())
            bodies.append(body)
            size += n
        if batch:
            out.append((batch, EncodedRecords(keys, bodies)))
        return out

    def subscribe(self, topic: str, group: str, *, prefetch: int, ordered: bool) -> Subscription:
        return ServerSubscription(self._client, topic, group, prefetch=prefetch, ordered=ordered)

    def stats(self, topic: str, group: str) -> list[TopicStats]:
        rows = wire.decode_stats(self._client.call(wire.Stats(topic, group)).payload)
        now = time.time()
        return [
            TopicStats(
                topic,
                group,
                s.partition,
                s.backlog,
                s.in_flight,
                None if s.oldest_timestamp is None else max(0.0, now - s.oldest_timestamp),
            )
            for s in rows
        ]

    def delete_topic(self, topic: str) -> None:
        self._client.call(wire.DeleteTopic(topic))
