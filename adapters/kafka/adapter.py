"""The Kafka adapter: admin (topics, group offsets), a shared producer, one subscription each.

kafka-python is imported inside methods only, so this module (and its
``capabilities``) imports without the driver.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from mqkit.adapter import Adapter, PublishOutcome, Subscription, TopicStats
from mqkit.capabilities import Capabilities, Support
from mqkit.errors import Closed, ConfigError, ConnectionLost, MissingDriver, MQError, PublishError
from mqkit.message import H_CONTENT_TYPE, H_DELIVER_AT, H_ID, H_TS, Receipt, Record
from mqkit.settings import Settings

from .options import KafkaOptions, load_options

if TYPE_CHECKING:
    from .subscription import KafkaSubscription

__all__ = ["KAFKA_CAPABILITIES", "KafkaAdapter"]

log = logging.getLogger("mqkit.adapters.kafka")
T = TypeVar("T")

MAX_MESSAGE_SIZE = 1_000_000
"""Value + key + headers; leaves room for Kafka's batch framing under the broker's
default ``max.message.bytes`` (1 MiB + 12).  Raise both together if you need more."""

KAFKA_CAPABILITIES = Capabilities(
    backend="kafka",
    manual_ack=Support.EMULATED,
    attempt_count=Support.EMULATED,
    delay=Support.EMULATED,
    max_message_size=MAX_MESSAGE_SIZE,
    notes={
        "confirm": "acks=all with the idempotent producer; settings that would turn "
        "idempotence off (acks=0/1, retries=0, >5 requests in flight) are refused",
        "persistent": "every record is in the log; acks=all waits for every in-sync replica "
        "and min_insync_replicas refuses writes with fewer in sync (replication_factor and "
        "min_insync_replicas on declare). A single node keeps one copy in its page cache: "
        "it survives kill -9 of the broker, not a power loss (flush_messages=1 fsyncs "
        "every message, slowly)",
        "manual_ack": "per-message acks tracked by mqkit; the group commits the lowest "
        "unacked offset, so an unacked message is never skipped; acks above it ride in the "
        "commit metadata and are not redelivered",
        "attempt_count": "counted by the consumer and stored in the commit metadata, so it "
        "survives rebalances and restarts; after a consumer crash, deliveries since its "
        "last commit are not counted",
        "per_key_ordering": "key -> partition (murmur2), one owner per partition; partitions "
        "move only after their deliveries are settled (rebalance_drain_ms)",
        "delay": "the record carries its due time; the consumer holds it (up to max_held "
        "records) and it holds its partition's commit point until acked; later records "
        "of the partition are delivered meanwhile (no head-of-line wait)",
        "ttl": "checked when the message reaches a consumer; expired -> <topic>.dlq",
        "retry_backoff": "in the consumer: the message stays unacked, its key's lane waits",
        "prefetch": "bounded by the consumer; the adapter buffers up to 2 x prefetch fetched "
        "records",
    },
)

_RETRY_FOR = 15.0  # seconds an admin call retries retriable errors (coordinator loading, ...)


class KafkaAdapter(Adapter):
    """``kafka://host:port[,host:port]?option=value``; see the package docstring."""

    scheme = "kafka"
    capabilities = KAFKA_CAPABILITIES

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._opts: KafkaOptions = load_options(settings)
        self._lock = threading.Lock()
        self._admin: Any = None
        self._producer: Any = None
        self._closed = False
        self._partitions: dict[str, int] = {}
        self._ensured: set[tuple[str, str]] = set()
        self._subs: weakref.WeakSet[KafkaSubscription] = weakref.WeakSet()

    @property
    def options(self) -> KafkaOptions:
        return self._opts

    # -- connection --------------------------------------------------------------------

    def open(self) -> None:
        try:
            from kafka import KafkaAdminClient
        except ModuleNotFoundError as exc:
            raise MissingDriver("kafka", "kafka-python", "kafka") from exc
        cfg = self._opts.common(self.settings)
        try:
            self._admin = KafkaAdminClient(**cfg)
        except Exception as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException) -> ConnectionLost:
        servers = ",".join(self._opts.common(self.settings)["bootstrap_servers"])
        return ConnectionLost(
            f"cannot reach Kafka at {servers} ({type(exc).__name__}: {exc}); is the broker "
            "running and the address right? (here: python docker/brokers up kafka)"
        )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            producer, self._producer = self._producer, None
            admin, self._admin = self._admin, None
        for sub in list(self._subs):
            sub.close()
        if producer is not None:
            try:
                producer.close(timeout=self._opts.delivery_timeout_ms / 1000)
            except Exception as exc:
                log.warning("closing the kafka producer: %r", exc)
        if admin is not None:
            try:
                admin.close()
            except Exception as exc:
                log.warning("closing the kafka admin client: %r", exc)

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("this kafka connection is closed; call mqkit.connect() again")

    def _admin_call(self, what: str, fn: Callable[[], T]) -> T:
        """Run an admin request; retry retriable errors for a while, then map to mqkit errors."""
        import kafka.errors as kerrors

        self._check_open()
        deadline = time.monotonic() + _RETRY_FOR
        delay = 0.05
        while True:
            try:
                return fn()
            except kerrors.KafkaError as exc:
                if getattr(exc, "retriable", False) and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                if isinstance(exc, kerrors.KafkaTimeoutError | kerrors.KafkaConnectionError):
                    raise self._unreachable(exc) from exc
                raise MQError(f"kafka {what} failed: {type(exc).__name__}: {exc}") from exc

    # -- topics and groups -------------------------------------------------------------

    def _describe(self, topic: str) -> int | None:
        """Partition count of ``topic``, or None when it does not exist."""
        result = self._admin_call("describe topic", lambda: self._admin.describe_topics([topic]))
        for t in result:
            if t.get("name") == topic and t.get("error_code") == 0:
                return len(t["partitions"])
        return None

    def declare(
        self, topic: str, *, partitions: int | None, groups: Sequence[str], ordered: bool
    ) -> None:
        import kafka.errors as kerrors

        if partitions is not None and partitions < 1:
            raise ConfigError("must be at least 1", field="partitions")
        count = self._describe(topic)
        if count is None:
            spec: dict[str, Any] = {
                "num_partitions": partitions or -1,
                "replication_factor": self._opts.replication_factor or -1,
                "configs": self._opts.topic_configs(),
            }
            try:
                self._admin_call(
                    "create topic",
                    lambda: self._admin.create_topics({topic: spec}, wait_for_metadata=True),
                )
            except MQError as exc:
                cause = exc.__cause__
                if isinstance(cause, kerrors.InvalidReplicationFactorError):
                    raise ConfigError(str(cause), field="options.replication_factor") from exc
                if isinstance(cause, kerrors.InvalidConfigurationError):
                    raise ConfigError(str(cause), field="options.min_insync_replicas") from exc
                if not isinstance(cause, kerrors.TopicAlreadyExistsError):
                    raise
            count = self._describe(topic)
            if count is None:
                raise MQError(f"kafka topic {topic!r} was created but is not visible yet; retry")
        if partitions is not None and partitions != count:
            raise ConfigError(
                f"topic {topic!r} already has {count} partitions, not {partitions}; changing "
                "it would move keys between partitions and break per-key order (use mqkit "
                "fanout to move a backlog to a wider topic)",
                field="partitions",
            )
        self._partitions[topic] = count
        for group in groups:
            self._ensure_group(topic, group, count)

    def _ensure_group(self, topic: str, group: str, count: int) -> None:
        """Give a new group committed offsets at the current ends: it sees what comes next.

        Partitions that already have a committed offset are left alone (declare is
        idempotent and must never move an existing group).
        """
        from kafka import TopicPartition
        from kafka.admin import OffsetSpec
        from kafka.structs import OffsetAndMetadata

        gid = self._opts.group_id(topic, group)
        if (topic, gid) in self._ensured:
            return
        tps = [TopicPartition(topic, p) for p in range(count)]
        committed = self._admin_call(
            "read group offsets", lambda: self._admin.list_group_offsets({gid: tps})
        ).get(gid, {})
        missing = [tp for tp in tps if tp not in committed or committed[tp].offset < 0]
        if missing:
            ends = self._admin_call(
                "read end offsets",
                lambda: self._admin.list_partition_offsets(
                    dict.fromkeys(missing, OffsetSpec.LATEST)
                ),
            )
            offsets = {tp: OffsetAndMetadata(ends[tp].offset, "", -1) for tp in missing}
            result = self._admin_call(
                "commit group offsets", lambda: self._admin.alter_group_offsets(gid, offsets)
            )
            failed = {tp: e for tp, e in result.items() if e.__name__ != "NoError"}
            # A group with live members refuses outside commits: it exists already.
            if failed and not all(
                e.__name__ in ("UnknownMemberIdError", "RebalanceInProgressError")
                for e in failed.values()
            ):
                raise MQError(f"kafka could not create group {gid!r}: {failed}")
        self._ensured.add((topic, gid))

    def delete_topic(self, topic: str) -> None:
        import kafka.errors as kerrors

        try:
            self._admin_call("delete topic", lambda: self._admin.delete_topics([topic]))
        except MQError as exc:
            if not isinstance(exc.__cause__, kerrors.UnknownTopicOrPartitionError):
                raise
        self._partitions.pop(topic, None)
        self._ensured = {k for k in self._ensured if k[0] != topic}
        prefix = self._opts.group_id(topic, "\0").split("\0")[0]
        if not prefix:
            return  # group ids do not name the topic: they may be shared, leave them
        groups = self._admin_call("list groups", self._admin.list_groups)
        gone = [
            g["group_id"]
            for g in groups
            if str(g.get("group_id", "")).startswith(prefix) and g.get("group_state") == "Empty"
        ]
        if gone:
            self._admin_call("delete groups", lambda: self._admin.delete_groups(gone))

    def stats(self, topic: str, group: str) -> list[TopicStats]:
        from kafka import TopicPartition
        from kafka.admin import OffsetSpec

        count = self._describe(topic)
        if count is None:
            raise ConfigError(f"kafka topic {topic!r} does not exist", field="topic")
        gid = self._opts.group_id(topic, group)
        tps = [TopicPartition(topic, p) for p in range(count)]
        ends = self._admin_call(
            "read end offsets",
            lambda: self._admin.list_partition_offsets(dict.fromkeys(tps, OffsetSpec.LATEST)),
        )
        committed = self._admin_call(
            "read group offsets", lambda: self._admin.list_group_offsets({gid: tps})
        ).get(gid, {})
        subs = [s for s in list(self._subs) if s.topic == topic and s.group_id == gid]
        out: list[TopicStats] = []
        for tp in tps:
            end = ends[tp].offset
            done = committed.get(tp)
            backlog = end - done.offset if done is not None and done.offset >= 0 else None
            in_flight = sum(s.in_flight(tp.partition) for s in subs) if subs else None
            out.append(TopicStats(topic, group, tp.partition, backlog, in_flight))
        return out

    # -- publish -----------------------------------------------------------------------

    def _get_producer(self) -> Any:
        with self._lock:
            self._check_open()
            if self._producer is None:
                from kafka import KafkaProducer

                size = self.settings.max_message_size or MAX_MESSAGE_SIZE
                try:
                    self._producer = KafkaProducer(**self._opts.producer(self.settings, size))
                except Exception as exc:
                    raise self._unreachable(exc) from exc
            return self._producer

    def _retire(self, producer: Any, cause: BaseException) -> None:
        """Replace a producer whose sends timed out; the next publish gets a fresh one.

        kafka-python 3.0.12's idempotent producer can stall for good after a
        batch expired while the broker was away (it waits for a new producer id
        that never comes).  Its unconfirmed records fail (the callers are told);
        a new producer starts with a new id.
        """
        with self._lock:
            if self._producer is not producer:
                return
            self._producer = None
        log.warning("kafka producer replaced after %r", cause)
        threading.Thread(
            target=_close_quietly, args=(producer,), name="mqkit-kafka-retire", daemon=True
        ).start()

    def publish(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        confirm: bool,
        persistent: bool,
        delay: float | None = None,
    ) -> list[PublishOutcome]:
        """Send every record (pipelined), then wait for the broker's acks (acks=all).

        ``persistent`` needs nothing per message: Kafka keeps every record in its log.
        """
        import kafka.errors as kerrors

        if delay:
            at = repr(time.time() + delay)
            records = [Record(r.key, r.value, {**r.headers, H_DELIVER_AT: at}) for r in records]
        try:
            producer = self._get_producer()
        except MQError as exc:
            return [exc] * len(records)
        pending: list[Any] = []
        now = time.time()
        send = producer.send
        # The SDK stamps a whole batch with one send time: parse that header once.
        stamps: dict[str, int | None] = {}
        for i, r in enumerate(records):
            headers, timestamp_ms = wire_headers(r.headers, now, stamps)
            key = r.key
            try:
                pending.append(
                    send(
                        topic,
                        value=r.value,
                        key=None if key is None else key.encode("utf-8", "surrogateescape"),
                        headers=headers,
                        timestamp_ms=timestamp_ms,
                    )
                )
            except kerrors.KafkaTimeoutError as exc:
                # No metadata within max_block_ms: the rest would wait as long and fail alike.
                err = _publish_error(topic, exc)
                pending.extend([err] * (len(records) - i))
                break
            except Exception as exc:
                pending.append(_publish_error(topic, exc))
        timeouts: list[BaseException] = [
            p.__cause__
            for p in pending
            if isinstance(p, BaseException) and isinstance(p.__cause__, kerrors.KafkaTimeoutError)
        ]
        if not confirm:
            if timeouts:
                self._retire(producer, timeouts[0])
            for p in pending:
                if not isinstance(p, BaseException):
                    p.add_errback(_log_unconfirmed, topic)
            return [
                p if isinstance(p, BaseException) else Receipt(r.id, topic, False)
                for r, p in zip(records, pending, strict=True)
            ]
        deadline = time.monotonic() + self._opts.delivery_timeout_ms / 1000 + 5.0
        outcomes: list[PublishOutcome] = []
        for r, p in zip(records, pending, strict=True):
            if isinstance(p, BaseException):
                outcomes.append(p)
                continue
            try:
                # Most futures of a batch are done once the first is: skip get()'s timer.
                md = (
                    p.value
                    if p.is_done and p.exception is None
                    else p.get(timeout=max(0.0, deadline - time.monotonic()))
                )
            except Exception as exc:
                outcomes.append(_publish_error(topic, exc))
                if isinstance(exc, kerrors.KafkaTimeoutError):
                    timeouts.append(exc)
                continue
            outcomes.append(
                Receipt(r.id, topic, True, md.partition, md.offset, md.timestamp / 1000.0)
            )
        if timeouts:
            self._retire(producer, timeouts[0])
        return outcomes

    # -- consume -----------------------------------------------------------------------

    def subscribe(self, topic: str, group: str, *, prefetch: int, ordered: bool) -> Subscription:
        from .subscription import KafkaSubscription

        self._check_open()
        count = self._partitions.get(topic) or self._describe(topic)
        if count is None:
            raise ConfigError(f"kafka topic {topic!r} does not exist; declare it", field="topic")
        self._ensure_group(topic, group, count)
        gid = self._opts.group_id(topic, group)
        try:
            sub = KafkaSubscription(
                topic=topic,
                group_id=gid,
                config=self._opts.consumer(self.settings, gid, prefetch),
                prefetch=prefetch,
                options=self._opts,
            )
        except MQError:
            raise
        except Exception as exc:
            raise self._unreachable(exc) from exc
        self._subs.add(sub)
        return sub


def wire_headers(
    headers: dict[str, str], now: float, stamps: dict[str, int | None] | None = None
) -> tuple[list[tuple[str, bytes]], int | None]:
    """Kafka headers for a record, and its Kafka timestamp.

    Two of mqkit's reserved headers map onto what Kafka has anyway, which makes
    small records markedly cheaper: the send time becomes the record timestamp
    (ms), and the default content type ``bytes`` is left out.  A timestamp far
    from now (a replayed dead letter) stays a header: brokers may refuse old
    record timestamps (``message.timestamp.before.max.ms``).  :func:`.to_record`
    puts the timestamp header back.  ``stamps`` caches the parsed send times
    (header text -> ms, None: keep the header) across the records of one batch.
    """
    if stamps is not None and len(headers) == 3 and headers.get(H_CONTENT_TYPE) == "bytes":
        # What the SDK sends unless told otherwise: id, send time, default content
        # type.  Answered without the general loop (this runs once per record).
        mid = headers.get(H_ID)
        ts = headers.get(H_TS)
        if mid is not None and ts is not None:
            ms = stamps.get(ts, -1)
            if ms == -1:
                ms = stamps[ts] = _stamp_ms(ts, now)
            if ms is not None:
                return [(H_ID, mid.encode("utf-8", "surrogateescape"))], ms
    timestamp_ms: int | None = None
    out: list[tuple[str, bytes]] = []
    for k, v in headers.items():
        if k == H_TS:
            if stamps is not None and v in stamps:
                ms = stamps[v]
            else:
                ms = _stamp_ms(v, now)
                if stamps is not None:
                    stamps[v] = ms
            if ms is not None:
                timestamp_ms = ms
                continue
        elif k == H_CONTENT_TYPE and v == "bytes":
            continue
        out.append((k, v.encode("utf-8", "surrogateescape")))
    return out, timestamp_ms


def _stamp_ms(text: str, now: float) -> int | None:
    """The send time ``text`` as a Kafka timestamp (ms), or None when it must stay a header."""
    try:
        ts = float(text)
    except ValueError:
        return None
    return round(ts * 1000) if abs(ts - now) < 60.0 else None


def _publish_error(topic: str, exc: BaseException) -> PublishError:
    err = PublishError(
        f"kafka did not confirm the message to {topic!r}: {type(exc).__name__}: {exc}"
    )
    err.__cause__ = exc
    return err


def _close_quietly(producer: Any) -> None:
    try:
        producer.close(timeout=0)
    except Exception as exc:
        log.debug("closing a retired kafka producer: %r", exc)


def _log_unconfirmed(topic: str, exc: BaseException) -> None:
    log.error("unconfirmed send to %r failed (confirm=False): %r", topic, exc)
