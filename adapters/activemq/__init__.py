"""ActiveMQ Classic 5.x over STOMP 1.2 (stomp.py): ``stomp://user:pass@host:61613``.

Features
    Topics and groups: a topic is an ActiveMQ *virtual topic*
    (``VirtualTopic.<topic>``); group G reads the queue
    ``Consumer.G.VirtualTopic.<topic>``, which the broker fills with a copy of
    every message sent to the topic once the queue exists.  ``declare(groups=)``
    creates the group queues (SUBSCRIBE with prefetch 0, then UNSUBSCRIBE), so
    a group keeps exactly the messages published after it was declared (or
    after its first consumer joined); the members of a group compete.

    Persistent: ``persistent:true`` on every SEND (ActiveMQ's STOMP default
    is non-persistent).  Confirm: KahaDB syncs its journal for a SEND only
    when the client waits for the answer -- a ``receipt`` header makes the
    broker wait (``enableJournalDiskSyncs && isResponseRequired``) -- and for
    every COMMIT; a SEND without a receipt is stored unsynced, and an ERROR
    about it names no receipt.  So:

    - one record (``send``, dead letters, and every record of a ``delay``
      batch, see below): one SEND with a receipt, answered after the sync;
      an ERROR frame naming the receipt, no receipt within
      ``confirm_timeout`` or a lost connection fail it.
    - a batch (``send_many``, ``confirm_mode=transaction``, the default):
      chunks of up to ``confirm_window`` records, each one STOMP transaction
      (BEGIN, the SENDs, COMMIT with a receipt; at most two chunks in
      flight), so one sync per chunk.  A chunk is all or nothing and fails
      alone: a SEND the broker refuses marks its transaction rollback-only
      and the COMMIT's ERROR names the receipt; a lost connection drops the
      uncommitted transaction; an ERROR naming no receipt (ActiveMQ's STOMP
      layer refused a malformed SEND before the transaction saw it -- the
      COMMIT then succeeds without it) fails every chunk of that connection
      not yet confirmed (in doubt: the others of such a chunk are stored; a
      retry with the same ids is deduplicated by ``dedupe``).
    - ``confirm_mode=receipt``: a receipt on every SEND of a batch, up to
      ``confirm_window`` outstanding, written in bursts; a per-record
      outcome, but one sync per record (window 100 is ~1.4x window 1, the
      transactions ~7x: docs/bench/activemq.md).
    - not used: N-1 SENDs without a receipt and one with (one sync would
      cover them all, journal writes being ordered): a SEND the broker
      refuses would be answered by an ERROR naming no message while the last
      receipt still arrives -- a lost message reported confirmed.
    - ``delay`` batches use receipts: in a transaction ActiveMQ schedules a
      delayed message only after the COMMIT (an after-commit hook), so a
      scheduling failure would not fail the COMMIT.

    Kill -9 (C3): a confirmed record is in the journal before its receipt
    (or its COMMIT's) is written -- the broker answers a receipt-bearing
    SEND only after every virtual-topic copy is stored -- and the journal is
    replayed on restart.  Not always in full: with KahaDB's ack compaction
    (on by default) a restarted broker may append to a compaction copy that
    the next replay skips, so what it confirms before its first index
    checkpoint (up to 5 s) is lost if it is killed again.  The broker
    configuration mqkit ships turns ack compaction off
    (docker/activemq/activemq.xml says why); use the same setting on a
    broker whose confirmed messages must survive repeated kills.
    Separately, transaction mode used to lose a refused record silently: a
    SEND refused by ActiveMQ's STOMP layer gets an ERROR naming no receipt,
    and the COMMIT succeeds without it (hence the guarded COMMITs above).

    Consuming: ``client-individual`` acks with ``activemq.prefetchSize`` = the
    consumer's prefetch; ACK frames are written in batches (every prefetch/4
    acks, at most 32, after 50 ms, and before the consumer waits idle or
    closes).  ``nack`` is held by the consumer until due, then ONE transaction
    sends a copy (attempt + 1) to the group's queue and acks the original;
    ``close`` gives every unacked delivery back in queue order.  No STOMP NACK
    is ever sent (in ActiveMQ 5 it is a poison ack), so nothing lands in
    ActiveMQ's own DLQ: dead letters are the SDK's ``<topic>.dlq``.

    ``ordering="per_key"``: keyed messages carry ``JMSXGroupID`` = key
    (message groups), so one consumer of a group owns a key at a time.
    Delays: ``AMQ_SCHEDULED_DELAY`` (``schedulerSupport="true"`` on the broker).

    Connections: heart-beats both ways; a lost connection is re-established
    with backoff, consumers subscribe again (ActiveMQ has given back what they
    had not acked).  One connection for publishing and declaring, shared by
    every thread of the client (stomp.py writes under a lock; receipts are
    matched on its receiver thread), and one per consumer.
Connection string
    ``stomp://[user:password@]host:61613``, ``stomp+ssl://`` for TLS (default
    port 61612), several hosts as ``host1:61613,host2:61613`` (tried in turn),
    options as query parameters, e.g. ``?confirm_window=256&heartbeat=5``.
Options
    ``virtual_topic_prefix`` (``VirtualTopic.``) and ``consumer_prefix``
    (``Consumer.``): the broker's virtual-topic naming.  ``confirm_mode``:
    ``transaction`` (default) or ``receipt``, how a batch is confirmed (see
    Confirm above); ``confirm_window`` (1000): records per transaction, or
    receipts outstanding; ``confirm_timeout`` (30 s) before an unanswered
    SEND or COMMIT fails.  ``heartbeat`` (10 s, 0 = off);
    ``reconnect_max_delay`` (5 s); ``reconnect_timeout`` (60 s) a consumer keeps
    reconnecting before ``fetch`` raises ConnectionLost; ``vhost`` (the CONNECT
    ``host`` header); ``ca_file``, ``cert_file``, ``key_file``, ``verify``
    (true) for TLS.  A send waits up to the ``connect_timeout`` setting for a
    lost connection.
Limits
    ``attempt`` is emulated: STOMP shows ActiveMQ's ``redelivered`` flag, not
    its counter, so attempt = 1 + copies re-sent for nacks + 1 if flagged
    redelivered; several broker redeliveries in a row (consumers closed or
    killed before acking) count as one, and a message that a closed consumer
    had only prefetched counts as redelivered.  A nacked message's copy goes
    to the back of the queue (after later messages of its key); retries in
    ``Consumer.run`` never nack, so per-key order holds through them.  A nack
    is re-sent on the consumer's next ``fetch``/``heartbeat`` (``run`` and
    ``iter`` call them all the time).  STOMP ACKs have no receipt, and
    ``ack()`` returns before its batch is written (at most 50 ms later): a
    consumer that dies in between, or loses its connection first, gets those
    messages again (logged; use ``dedupe``).  TTL is checked by the SDK when a
    message is consumed (expired -> ``<topic>.dlq``, reason ``expired``); no
    broker ``expires`` is set, since ActiveMQ would move it to its own DLQ.  A
    message sent to a topic with no group yet is kept by no one: declare the
    groups first (``mq.declare`` always creates ``<topic>.dlq``'s group).  More
    than 1024 keys in flight need the hash-bucket message-group map
    (docker/activemq/activemq.xml sets it).  ``stats`` is unsupported (STOMP
    has no queue-depth query; the statistics plugin's map replies need XStream
    in the broker: use JMX or the web console), and so is ``delete_topic``
    (STOMP cannot delete destinations).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mqkit.adapter import Adapter, PublishOutcome, Subscription, TopicStats
from mqkit.capabilities import Capabilities, Support
from mqkit.errors import (
    ConfigError,
    ConnectionLost,
    MissingDriver,
    MQError,
    PublishError,
    Unsupported,
)
from mqkit.message import Receipt, Record

from ._frames import Names, encode_headers
from ._link import Link, LinkConfig
from ._subscription import ActiveMQSubscription
from ._wire import frame, write

__all__ = ["ACTIVEMQ_CAPABILITIES", "ActiveMQAdapter", "ActiveMQOptions"]

ACTIVEMQ_CAPABILITIES = Capabilities(
    backend="activemq",
    attempt_count=Support.EMULATED,
    partitions=Support.EMULATED,
    max_message_size=4 * 1024 * 1024,
    notes={
        "confirm": "send(): a receipt per SEND; send_many(): one STOMP transaction per "
        "confirm_window records, confirmed by its COMMIT's receipt (all or nothing), or a "
        "receipt per SEND with confirm_mode=receipt",
        "persistent": "persistent:true; the receipt (of the SEND, or of a batch's COMMIT) follows "
        "the KahaDB journal sync; set enableAckCompaction=false on the kahaDB element (as "
        "docker/activemq/activemq.xml does): with KahaDB's default, a broker killed twice in "
        "a row can lose what it confirmed in the seconds after the first restart",
        "manual_ack": "client-individual ACK; unacked deliveries go back when the consumer's "
        "connection closes",
        "attempt_count": "1 + copies re-sent for nacks + 1 if ActiveMQ flags the delivery "
        "redelivered (STOMP shows the flag, not the counter)",
        "per_key_ordering": "message groups: JMSXGroupID = key, one consumer owns a key",
        "partitions": "no partitions: one queue per group; message groups spread keys over "
        "the group's consumers (partitions= is accepted and has no effect)",
        "groups": "virtual topics: one queue Consumer.<group>.VirtualTopic.<topic> per group",
        "retry_backoff": "in the consumer: the message stays unacked, its key's lane waits",
        "dead_letter": "the SDK publishes to <topic>.dlq (confirmed), then acks; no STOMP "
        "NACK, so nothing lands in ActiveMQ's own DLQ",
        "ttl": "checked when consumed; expired -> <topic>.dlq (no broker expiry, which would "
        "move it to ActiveMQ's DLQ)",
        "delay": "AMQ_SCHEDULED_DELAY (schedulerSupport); nack(delay): held by the consumer",
        "prefetch": "activemq.prefetchSize",
    },
)

_PENDING: Any = object()
_UNSENT: Any = object()
_BURST = 1000  # frames per write
_Send = tuple[dict[str, str], bytes]  # the headers and body of one SEND


class ActiveMQOptions(BaseModel):
    """Options of ``stomp://`` URLs; a typo is an error naming the option."""

    model_config = ConfigDict(extra="forbid")

    virtual_topic_prefix: str = Field(default="VirtualTopic.", min_length=1)
    consumer_prefix: str = Field(default="Consumer.", min_length=1)
    confirm_window: int = Field(default=1000, ge=1, le=100_000)
    confirm_timeout: float = Field(default=30.0, gt=0)
    confirm_mode: Literal["transaction", "receipt"] = "transaction"
    heartbeat: float = Field(default=10.0, ge=0, le=3600)
    reconnect_max_delay: float = Field(default=5.0, gt=0)
    reconnect_timeout: float = Field(default=60.0, gt=0)
    vhost: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True


def _options(raw: dict[str, Any]) -> ActiveMQOptions:
    raw = dict(raw)
    raw.pop("adapter", None)
    try:
        return ActiveMQOptions.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(x) for x in err["loc"])
        raise ConfigError(
            f"{err['msg']} (stomp options: {', '.join(ActiveMQOptions.model_fields)})",
            field=f"options.{name}",
        ) from None


class _Batch:
    """Outcomes of one publish call; receipts arrive on stomp.py's receiver thread.

    A record is unsent, then pending (its receipt is awaited: counted in
    ``outstanding``), then settled: None (confirmed) or the error.
    """

    def __init__(self, n: int) -> None:
        self.cond = threading.Condition()
        self.errors: list[Any] = [_UNSENT] * n
        self.outstanding = 0
        self.limit = -1  # what the waiting publisher waits for: wake it only then

    def track(self, indexes: range) -> None:
        with self.cond:
            for i in indexes:
                if self.errors[i] is _UNSENT:
                    self.errors[i] = _PENDING
                    self.outstanding += 1

    def settle(self, indexes: range, error: BaseException | None) -> None:
        with self.cond:
            for i in indexes:
                state = self.errors[i]
                if state is _PENDING:
                    self.outstanding -= 1
                if state is _PENDING or state is _UNSENT:
                    self.errors[i] = error
            if self.outstanding <= self.limit:
                self.cond.notify_all()

    def settle_one(self, index: int, error: BaseException | None) -> None:
        self.settle(range(index, index + 1), _unconfirmed(error))

    def settle_many(self, indexes: range, error: BaseException | None) -> None:
        self.settle(indexes, _unconfirmed(error))

    def fail_pending(self, error: BaseException) -> None:
        with self.cond:
            for i, e in enumerate(self.errors):
                if e is _PENDING:
                    self.errors[i] = error
            self.outstanding = 0
            self.cond.notify_all()

    def wait(self, limit: int, timeout: float) -> bool:
        """Until at most ``limit`` receipts are outstanding; False on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            self.limit = limit
            try:
                while self.outstanding > limit:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self.cond.wait(remaining)
            finally:
                self.limit = -1
        return True

    def results(self) -> list[BaseException | None]:
        """Every record's outcome; one never settled is reported as not confirmed."""
        with self.cond:
            return [
                PublishError("not confirmed: never sent or answered")
                if e is _PENDING or e is _UNSENT
                else e
                for e in self.errors
            ]


class ActiveMQAdapter(Adapter):
    """See the module docstring."""

    scheme = "stomp"
    capabilities = ACTIVEMQ_CAPABILITIES

    # -- connection ----------------------------------------------------------------------

    def open(self) -> None:
        try:
            import stomp  # noqa: F401
        except ModuleNotFoundError as exc:
            raise MissingDriver("stomp", "stomp-py", "activemq") from exc
        self._opts = _options(self.settings.all_options())
        parsed = self.settings.parsed()
        tls = parsed.scheme == "stomp+ssl"
        default_port = 61612 if tls else 61613
        endpoints = tuple(
            (host, port or default_port) for host, port in (parsed.hosts or [("127.0.0.1", None)])
        )
        tls_args: dict[str, Any] | None = None
        if tls:
            tls_args = {
                "ca_certs": self._opts.ca_file,
                "cert_file": self._opts.cert_file,
                "key_file": self._opts.key_file,
                "verify": self._opts.verify,
            }
        self._config = LinkConfig(
            endpoints=endpoints,
            login=parsed.username,
            passcode=parsed.password,
            vhost=self._opts.vhost,
            heartbeat_ms=round(self._opts.heartbeat * 1000),
            connect_timeout=self.settings.connect_timeout,
            reconnect_max_delay=self._opts.reconnect_max_delay,
            client_id=self.settings.client_id,
            tls=tls_args,
        )
        self._names = Names(self._opts.virtual_topic_prefix, self._opts.consumer_prefix)
        self._lock = threading.Lock()
        self._groups: set[tuple[str, str]] = set()
        self._subs: list[ActiveMQSubscription] = []
        self._out = Link(self._config, name="producer")
        self._out.ensure(time.monotonic() + self.settings.connect_timeout)

    def close(self) -> None:
        out = getattr(self, "_out", None)
        if out is None:
            return
        with self._lock:
            subs = list(self._subs)
            self._subs.clear()
        for sub in subs:
            sub.close()
        out.close()

    def _live(self) -> int:
        """The publishing connection, reconnected (up to connect_timeout) if it was lost."""
        return self._out.ensure(time.monotonic() + self.settings.connect_timeout)

    # -- topology ------------------------------------------------------------------------

    def declare(
        self, topic: str, *, partitions: int | None, groups: Sequence[str], ordered: bool
    ) -> None:
        """Create the group queues: a SUBSCRIBE with prefetch 0 (nothing is dispatched)."""
        missing = [g for g in groups if (topic, g) not in self._groups]
        if not missing:
            return
        timeout = self._opts.confirm_timeout
        try:
            gen = self._live()
            for group in missing:
                dest = self._names.group_queue(topic, group)
                sub_id = self._out.next_id("declare")

                def subscribe(
                    conn: Any, receipt: str, dest: str = dest, sub_id: str = sub_id
                ) -> None:
                    conn.subscribe(
                        dest,
                        id=sub_id,
                        ack="client-individual",
                        headers={"activemq.prefetchSize": "0", "receipt": receipt},
                    )

                def unsubscribe(conn: Any, receipt: str, sub_id: str = sub_id) -> None:
                    conn.unsubscribe(id=sub_id, headers={"receipt": receipt})

                self._out.request(gen, subscribe, timeout)
                self._out.request(gen, unsubscribe, timeout)
                with self._lock:
                    self._groups.add((topic, group))
        except ConnectionLost:
            raise
        except MQError as exc:
            raise MQError(f"could not create the groups of {topic!r} on ActiveMQ: {exc}") from exc

    # -- publishing ----------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        confirm: bool,
        persistent: bool,
        delay: float | None = None,
    ) -> list[PublishOutcome]:
        if not records:
            return []
        dest = self._names.topic(topic)

        def sends(i: int) -> _Send:
            # built when its burst is written: overlaps the broker's work on the last one
            r = records[i]
            headers = encode_headers(r, persistent=persistent, delay=delay)
            return {"destination": dest, **headers}, r.value

        n = len(records)
        if not confirm:
            errors = self._send_unconfirmed(n, sends)
        elif self._opts.confirm_mode == "transaction" and n > 1 and not delay:
            errors = self._send_transactions(n, sends)
        else:
            errors = self._send_with_receipts(n, sends)
        now = time.time()
        return [
            err if err is not None else Receipt(r.id, topic, confirm, None, None, now)
            for r, err in zip(records, errors, strict=True)
        ]

    def _send_unconfirmed(
        self, n: int, sends: Callable[[int], _Send]
    ) -> list[BaseException | None]:
        """Written in bursts; a failed write fails its burst (those may or may not be sent)."""
        errors: list[BaseException | None] = [None] * n
        for start in range(0, n, _BURST):
            burst = range(start, min(start + _BURST, n))
            try:
                gen = self._live()
                out = [frame("SEND", *sends(i)) for i in burst]
                self._out.call(gen, partial(write, frames=out))
            except MQError as exc:
                for i in burst:
                    errors[i] = exc
        return errors

    def _send_with_receipts(
        self, n: int, sends: Callable[[int], _Send]
    ) -> list[BaseException | None]:
        """A receipt per SEND, at most confirm_window outstanding, written in bursts."""
        link = self._out
        batch = _Batch(n)
        window = self._opts.confirm_window
        timeout = self._opts.confirm_timeout
        receipts: list[str] = []
        i = 0
        while i < n:
            # refill when a quarter of the window is free: fewer wake-ups, bigger writes
            want = min(n - i, max(1, window // 4))
            if not batch.wait(window - want, timeout):
                self._timed_out(batch, receipts, timeout)
            burst = range(i, min(n, i + window - batch.outstanding, i + _BURST))
            i = burst.stop
            try:
                gen = self._live()
            except MQError as exc:
                batch.settle(range(burst.start, n), _unconfirmed(exc))
                break
            out: list[bytes] = []
            for j in burst:
                headers, body = sends(j)
                receipt = link.next_id()
                receipts.append(receipt)
                headers["receipt"] = receipt
                batch.track(range(j, j + 1))
                link.expect(receipt, gen, partial(batch.settle_one, j))
                out.append(frame("SEND", headers, body))
            try:
                link.call(gen, partial(write, frames=out))
            except MQError as exc:  # the lost connection has failed their receipts
                batch.settle(burst, _unconfirmed(exc))
        if not batch.wait(0, timeout):
            self._timed_out(batch, receipts, timeout)
        return batch.results()

    def _send_transactions(
        self, n: int, sends: Callable[[int], _Send]
    ) -> list[BaseException | None]:
        """Chunks of confirm_window records, each one transaction confirmed by its COMMIT."""
        link = self._out
        batch = _Batch(n)
        size = self._opts.confirm_window
        timeout = self._opts.confirm_timeout
        receipts: list[str] = []
        for start in range(0, n, size):
            chunk = range(start, min(start + size, n))
            # encode this chunk while the broker works on the previous one
            tx = link.next_id("tx")
            receipt = link.next_id()
            receipts.append(receipt)
            out = [frame("BEGIN", {"transaction": tx})]
            for i in chunk:
                headers, body = sends(i)
                headers["transaction"] = tx
                out.append(frame("SEND", headers, body))
            out.append(frame("COMMIT", {"transaction": tx, "receipt": receipt}))
            if not batch.wait(size, timeout):  # at most two chunks in flight
                self._timed_out(batch, receipts, timeout)
            try:
                gen = self._live()
            except MQError as exc:
                batch.settle(range(start, n), _unconfirmed(exc))
                break
            batch.track(chunk)
            link.expect(receipt, gen, partial(batch.settle_many, chunk), guard=True)
            try:
                link.call(gen, partial(write, frames=out))
            except MQError as exc:  # never committed: the broker drops the transaction
                batch.settle(chunk, _unconfirmed(exc))
        if not batch.wait(0, timeout):
            self._timed_out(batch, receipts, timeout)
        return batch.results()

    def _timed_out(self, batch: _Batch, receipts: list[str], timeout: float) -> None:
        """Receipts that never came: fail those records, drop the (suspect) connection."""
        for r in receipts:
            self._out.forget(r)
        batch.fail_pending(
            PublishError(f"ActiveMQ sent no receipt within {timeout:g} s (confirm_timeout)")
        )
        self._out.reset(self._out.gen, "receipts stopped arriving")

    # -- consuming -----------------------------------------------------------------------

    def subscribe(self, topic: str, group: str, *, prefetch: int, ordered: bool) -> Subscription:
        sub = ActiveMQSubscription(
            self._config,
            topic=topic,
            group=group,
            destination=self._names.group_queue(topic, group),
            prefetch=prefetch,
            request_timeout=self._opts.confirm_timeout,
            reconnect_timeout=self._opts.reconnect_timeout,
        )
        sub.start(self.settings.connect_timeout)
        with self._lock:
            self._groups.add((topic, group))
            self._subs = [s for s in self._subs if not s._closed]
            self._subs.append(sub)
        return sub

    def stats(self, topic: str, group: str) -> list[TopicStats]:
        raise Unsupported(
            "stomp",
            "lag statistics",
            "ActiveMQ reports queue sizes through JMX or its web console; its statistics "
            "plugin answers with a map message that this broker's STOMP connector cannot "
            "convert without XStream (not in Debian's package)",
        )


def _unconfirmed(error: BaseException | None) -> BaseException | None:
    if error is None or isinstance(error, PublishError):
        return error
    return PublishError(f"not confirmed: {error}")
