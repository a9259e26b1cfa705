"""One member of a Kafka consumer group: a poller thread, a local queue, watermark commits.

Why a poller thread: kafka-python's ``KafkaConsumer`` is not thread-safe and
rebalances happen inside ``poll()``.  If the consumer's own thread polled, a
rebalance could start while that thread still holds unacked deliveries it can
no longer ack (it is blocked in ``poll``): every rebalance would redeliver them.
Here a private thread owns the ``KafkaConsumer``: it polls (which keeps the
membership alive however slow the handler is), buffers up to 2 x ``prefetch``
records (refilled in batches), and commits.  ``fetch``/``ack``/``nack`` only touch local state under
one lock, from the consumer's thread; ``close`` may come from any thread.

Rebalance (eager, the kafka-python default): before giving partitions up, the
revoke callback stops handing out records and waits (``rebalance_drain_ms``)
until the deliveries already handed out are settled, then commits the low
watermark with the metadata of :mod:`.tracking`.  Acks that arrive after a
partition was revoked are ignored: that message goes to the new owner
(at-least-once).  Nacked and delayed records wait in a local timer heap and
hold the partition's watermark until they are acked.

Every assignment starts reading at the committed watermark: the poller seeks
each newly assigned partition there before its next ``poll()``, and drops what
a ``poll()`` that overlapped the rebalance returned for it.  kafka-python 3
keeps the fetch position of a partition that is revoked and assigned to the
same member again (the Java client resets it); without the seek the records
that sat in the local queue at the revoke would be skipped, and the next
commit would move the group past them for good.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from typing import Any

import kafka.errors as kerrors
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from mqkit.adapter import Inbound, Subscription
from mqkit.errors import Closed, ConnectionLost, MQError
from mqkit.message import H_DELIVER_AT, H_TS, Record

from . import driver
from .options import KafkaOptions
from .tracking import Entry, PartitionState, Prior, decode_metadata

__all__ = ["KafkaSubscription", "to_record"]

log = logging.getLogger("mqkit.adapters.kafka")

POLL_MS = 200  # the poller's longest wait: bounds how long close() waits for it
FULL_WAIT_S = 0.1  # with the buffer full: wait for room, but poll (paused) this often
COMMIT_RETRY_S = 0.5  # after a failed commit
NUDGE_S = 1.0  # while not ready, ask for a rejoin this often (see driver.nudge_rejoin)
FATAL = (
    kerrors.KafkaConfigurationError,
    kerrors.IllegalStateError,
    kerrors.AuthorizationError,
    kerrors.SaslAuthenticationFailedError,
    kerrors.UnsupportedVersionError,
)


def to_record(
    key: bytes | None,
    value: bytes | None,
    headers: Any,
    timestamp_ms: int,
    stamps: dict[int, str] | None = None,
) -> Record:
    """A fetched Kafka record as the broker-neutral :class:`Record`.

    The send time travels as the Kafka timestamp (see ``adapter.wire_headers``):
    it becomes the ``x-mqkit-ts`` header again here; ``stamps`` caches that text
    per timestamp across one poll (a batch sent at once shares one).  A plain
    loop for the headers: a comprehension's extra frame costs more than one header.
    """
    h: dict[str, str] = {}
    if headers:
        for k, v in headers:
            h[k] = v.decode("utf-8", "surrogateescape") if v else ""
    if H_TS not in h and timestamp_ms is not None and timestamp_ms >= 0:
        if stamps is None:
            h[H_TS] = repr(timestamp_ms / 1000)
        else:
            text = stamps.get(timestamp_ms)
            if text is None:
                text = stamps[timestamp_ms] = repr(timestamp_ms / 1000)
            h[H_TS] = text
    return Record(
        None if key is None else bytes(key).decode("utf-8", "surrogateescape"),
        b"" if value is None else bytes(value),
        h,
    )


class _Listener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """Runs on kafka-python's IO thread; async so heartbeats go on while it waits."""

    def __init__(self, sub: KafkaSubscription) -> None:
        self._sub = sub

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._sub._on_revoked(revoked, lost=False)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._sub._on_assigned(assigned)

    async def on_partitions_lost(self, lost: Any) -> None:
        await self._sub._on_revoked(lost, lost=True)


class KafkaSubscription(Subscription):
    """See the module docstring."""

    def __init__(
        self,
        *,
        topic: str,
        group_id: str,
        config: dict[str, Any],
        prefetch: int,
        options: KafkaOptions,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self._opts = options
        # Fetched records wait here until the consumer takes them: up to 2 x prefetch,
        # refilled in batches when at most prefetch are left (one poll() costs as much
        # as many records, and the refill overlaps with the consumer's work).
        self._capacity = 2 * max(1, prefetch)
        self._refill_at = max(1, prefetch)
        # Hot paths take the lock directly (``with self._lock``: no Python-level
        # Condition.__enter__); waits and notifications go through the Condition on it.
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._poller_waits = False  # the poller sleeps on _cv until fetch() makes room
        self._parts: dict[int, PartitionState] = {}
        self._queue: deque[Entry] = deque()
        self._timers: list[tuple[float, int, Entry]] = []
        self._seq = itertools.count()
        self._epochs = itertools.count(1)
        # Where the poller must seek a new assignment before polling (see module docstring);
        # written by the rebalance callbacks, applied by the poller thread only.
        self._seeks: dict[int, tuple[Any, int]] = {}
        self._given_up: dict[int, int] = {}  # watermark at the last revoke, per partition
        self._joined = False
        self._revoking = False
        self._unready_since = time.monotonic()
        self._last_nudge = 0.0
        self._closing = threading.Event()
        self._closed = False
        self._fatal: BaseException | None = None
        self._commit_inflight_since: float | None = None
        self._last_commit = 0.0
        self._last_commit_warning = -1e9
        self._consumer: Any = KafkaConsumer(**config)
        try:
            self._consumer.subscribe([topic], listener=_Listener(self))
            # Before the first join: a leader without the topic's metadata would
            # rebalance the group again as soon as it arrives (see driver).
            driver.refresh_metadata(self._consumer, options.request_timeout_ms)
        except BaseException:
            self._consumer.close(autocommit=False)
            raise
        self._thread = threading.Thread(
            target=self._poll_loop, name=f"mqkit-kafka[{group_id}]", daemon=True
        )
        self._thread.start()
        self._wait_joined()

    def _wait_joined(self) -> None:
        """Return once the member has its first assignment (bounded).

        So a consumer that exists is in its group: work published next is shared
        with it rather than drained by the members that were there first.  Other
        members take up to a heartbeat interval (plus their drain) to rejoin.
        """
        limit = (self._opts.session_timeout_ms + self._opts.rebalance_drain_ms) / 1000 + 5.0
        end = time.monotonic() + limit
        with self._lock:
            while not self._joined and self._fatal is None and not self._closing.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    log.warning("%s has not joined its group after %.0fs", self.group_id, limit)
                    return
                self._cv.wait(left)
        if self._fatal is not None:
            error = self._fatal_error()
            self.close()
            raise error

    # -- the Subscription interface (consumer thread) ----------------------------------

    @property
    def ready(self) -> bool:
        """Joined with an assignment (possibly empty) and not in a rebalance."""
        return self._joined and not self._revoking and not self._closed

    def fetch(self, max_count: int, timeout: float) -> list[Inbound]:
        if self._closed:
            raise Closed("this subscription is closed")
        end = time.monotonic() + max(0.0, timeout)
        with self._lock:
            while True:
                if self._fatal is not None:
                    raise self._fatal_error()
                if self._closing.is_set():
                    return []
                got = [] if self._revoking else self._take(max_count)
                if got:
                    return got
                now = time.monotonic()
                left = end - now
                if left <= 0:
                    return []
                if self._timers and not self._revoking:
                    left = min(left, max(self._timers[0][0] - now, 0.001))
                self._cv.wait(left)

    def ack(self, inbound: Inbound) -> None:
        entry: Entry = inbound.handle
        with self._lock:
            done = entry.part.ack(entry)
        if not done:
            log.debug(
                "ack of %s[%s]@%s ignored: partition revoked or already settled",
                self.topic,
                inbound.partition,
                inbound.offset,
            )

    def nack(self, inbound: Inbound, *, delay: float = 0.0) -> None:
        entry: Entry = inbound.handle
        with self._lock:
            if not entry.part.give_back(entry):
                return
            due = time.monotonic() + max(0.0, delay)
            heapq.heappush(self._timers, (due, next(self._seq), entry))
            self._cv.notify_all()

    def close(self) -> None:
        """Stop the poller; it commits the watermark and leaves the group (LeaveGroup)."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        with self._lock:
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=self._opts.request_timeout_ms / 1000 + 10)
            if self._thread.is_alive():
                log.warning("kafka consumer of %s did not stop in time", self.group_id)

    def in_flight(self, partition: int | None = None) -> int:
        """Deliveries handed out and not settled (of one partition, or all)."""
        with self._lock:
            return sum(p.out for n, p in self._parts.items() if partition is None or n == partition)

    # -- local queue -------------------------------------------------------------------

    def _take(self, max_count: int) -> list[Inbound]:
        out: list[Inbound] = []
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now and len(out) < max_count:
            entry = heapq.heappop(timers)[2]
            if entry.live() and not entry.out:
                out.append(self._hand_out(entry))
        queue = self._queue
        if not queue or len(out) >= max_count:
            return out
        # The common case inline (this runs once per message): a queued entry that is
        # still live goes out; see PartitionState.hand_out for the bookkeeping.
        topic = self.topic
        append = out.append
        popleft = queue.popleft
        while queue and len(out) < max_count:
            entry = popleft()
            part = entry.part
            if entry.out or part.revoked or part.pending.get(entry.offset) is not entry:
                continue
            entry.out = True
            entry.attempt += 1
            part.out += 1
            part.dirty = True  # the attempt count is part of the commit metadata
            append(
                Inbound(topic, entry.record, entry.attempt, part.tp.partition, entry.offset, entry)
            )
        if self._poller_waits and len(queue) <= self._refill_at:
            self._cv.notify_all()
        return out

    def _hand_out(self, entry: Entry) -> Inbound:
        part = entry.part
        attempt = part.hand_out(entry)
        return Inbound(self.topic, entry.record, attempt, part.tp.partition, entry.offset, entry)

    def _fatal_error(self) -> MQError:
        exc = self._fatal
        if isinstance(exc, MQError):
            return exc
        return ConnectionLost(
            f"the kafka consumer of group {self.group_id!r} on {self.topic!r} stopped: "
            f"{type(exc).__name__}: {exc}; check credentials/ACLs/settings and create a new "
            "consumer"
        )

    # -- the poller thread -------------------------------------------------------------

    def _poll_loop(self) -> None:
        backoff = 0.1
        last_poll = 0.0
        try:
            while not self._closing.is_set():
                self._maybe_commit()
                self._maybe_nudge()
                with self._lock:
                    room = self._capacity - len(self._queue)
                    # Refill in batches (one poll() costs as much as many records).
                    full = (
                        len(self._queue) > self._refill_at
                        or len(self._timers) >= self._opts.max_held
                    )
                    if full and time.monotonic() - last_poll < FULL_WAIT_S:
                        self._poller_waits = True
                        self._cv.wait(FULL_WAIT_S)  # fetch() notifies when it makes room
                        self._poller_waits = False
                        continue
                    # A seek requested after this point is still pending when this
                    # poll returns: _receive drops that partition's records.
                    seeks = list(self._seeks.values())
                    self._seeks.clear()
                try:
                    self._seek(seeks)
                    self._set_paused(full)
                    # Paused, poll returns nothing but keeps the membership and rebalances.
                    last_poll = time.monotonic()
                    batches = self._consumer.poll(
                        timeout_ms=0 if full else POLL_MS, max_records=max(room, 1)
                    )
                except Exception as exc:
                    if isinstance(exc, FATAL) or not isinstance(exc, kerrors.KafkaError):
                        log.error("kafka consumer of %s failed: %r", self.group_id, exc)
                        with self._lock:
                            self._fatal = exc
                            self._cv.notify_all()
                        return
                    log.warning(
                        "kafka poll for %s failed (%r); retrying in %.1fs",
                        self.group_id,
                        exc,
                        backoff,
                    )
                    self._closing.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.1
                if batches:
                    self._receive(batches)
        finally:
            self._shutdown()

    def _seek(self, seeks: list[tuple[Any, int]]) -> None:
        """Start new assignments at their committed watermark (poller thread only)."""
        for tp, offset in seeks:
            try:
                self._consumer.seek(tp, offset)
            except (ValueError, KeyError):
                # Revoked again meanwhile (the IO thread moves the assignment): not ours.
                log.debug("no seek of %s: no longer assigned", tp)

    def _set_paused(self, pause: bool) -> None:
        paused = self._consumer.paused()
        if pause:
            todo = set(self._consumer.assignment()) - set(paused)
            if todo:
                self._consumer.pause(*todo)
        elif paused:
            self._consumer.resume(*paused)

    def _receive(self, batches: dict[Any, list[Any]]) -> None:
        """Queue a poll's records.

        Everything per record (conversion, the Entry, the deliver-at check) happens
        before taking the lock: the consumer's thread fetches and acks meanwhile, and
        under the lock there are only a few dict/deque operations per partition.
        """
        wall = time.time()
        stamps: dict[int, str] = {}
        prepared: list[
            tuple[
                Any,
                PartitionState,
                dict[int, Entry],
                list[Entry],
                list[tuple[float, Entry]],
                list[int],
            ]
        ] = []
        for tp, rs in batches.items():
            # Read without the lock (a dict lookup); checked again under it below.
            part = self._parts.get(tp.partition)
            if part is None or part.revoked or not rs:
                log.debug("dropped %d records of unowned %s", len(rs), tp)
                continue
            fresh: dict[int, Entry] = {}
            queued: list[Entry] = []
            delayed: list[tuple[float, Entry]] = []
            skipped: list[int] = []
            # Nothing recorded by a previous owner (the usual case): every record is
            # a first delivery, no per-record look-up in the prior metadata.
            plain = not part.prior.acked and not part.prior.attempts
            for r in rs:
                offset = r.offset
                record = to_record(r.key, r.value, r.headers, r.timestamp, stamps)
                if plain:
                    entry: Entry | None = Entry(part, offset, record, 0)
                else:
                    entry = part.prepare(offset, record)
                if entry is None:
                    skipped.append(offset)  # a previous owner acked it
                    continue
                fresh[offset] = entry
                raw = record.headers.get(H_DELIVER_AT)
                due = _deliver_at(raw) if raw else None
                if due is not None and due > wall:
                    delayed.append((due, entry))
                else:
                    queued.append(entry)
            prepared.append((tp, part, fresh, queued, delayed, skipped))
        if not prepared:
            return
        mono = time.monotonic()
        with self._lock:
            for tp, part, fresh, queued, delayed, skipped in prepared:
                n = tp.partition
                if self._parts.get(n) is not part or part.revoked:
                    # Not (or no longer) ours: the owner reads them from the committed offset.
                    log.debug("dropped %d records of unowned %s", len(fresh), tp)
                    continue
                if n in self._seeks:
                    # Assigned during this poll, read from the previous assignment's
                    # position: the pending seek reads them again from the watermark.
                    log.debug("dropped %d records of %s fetched before its seek", len(fresh), tp)
                    continue
                part.admit(fresh, skipped, batches[tp][-1].offset + 1)
                self._queue.extend(queued)
                for due, entry in delayed:
                    heapq.heappush(self._timers, (mono + due - wall, next(self._seq), entry))
            self._cv.notify_all()

    def _maybe_nudge(self) -> None:
        """Finish a join the driver may have dropped (see driver.nudge_rejoin)."""
        if self.ready:
            return
        now = time.monotonic()
        if now - self._unready_since >= NUDGE_S and now - self._last_nudge >= NUDGE_S:
            self._last_nudge = now
            driver.nudge_rejoin(self._consumer)

    def _maybe_commit(self) -> None:
        """Send the moved watermarks (async); one commit in flight at a time."""
        now = time.monotonic()
        if self._commit_inflight_since is not None:
            if now - self._commit_inflight_since < 30.0:
                return
            self._commit_inflight_since = None  # a lost callback must not stop commits
        if now - self._last_commit < self._opts.commit_interval_ms / 1000:
            return
        offsets: dict[Any, Any] = {}
        epochs: dict[int, int] = {}
        with self._lock:
            for part in self._parts.values():
                if part.dirty and not part.revoked:
                    part.dirty = False
                    point = part.commit_point()
                    if point is not None:
                        offsets[part.tp] = OffsetAndMetadata(point[0], point[1], -1)
                        epochs[part.tp.partition] = part.epoch
        if not offsets:
            return
        self._commit_inflight_since = now
        self._last_commit = now
        try:
            done = functools.partial(self._committed, epochs)
            self._consumer.commit_async(offsets, callback=done)
        except Exception as exc:
            self._committed(epochs, offsets, exc)

    def _committed(self, epochs: dict[int, int], offsets: Any, result: Any) -> None:
        self._commit_inflight_since = None
        if not isinstance(result, BaseException):
            return
        now = time.monotonic()
        self._last_commit = now + COMMIT_RETRY_S  # back off before the next attempt
        quiet = now - self._last_commit_warning < 10.0
        if not quiet:
            self._last_commit_warning = now
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "offset commit for %s failed (%r); retrying",
            self.group_id,
            result,
        )
        with self._lock:
            for partition, epoch in epochs.items():
                part = self._parts.get(partition)
                if part is not None and part.epoch == epoch and not part.revoked:
                    part.dirty = True

    def _shutdown(self) -> None:
        try:
            # Revokes (the listener commits the watermarks) and sends LeaveGroup.
            self._consumer.close(autocommit=False, timeout_ms=self._opts.request_timeout_ms)
        except Exception as exc:
            log.warning("closing the kafka consumer of %s: %r", self.group_id, exc)
        finally:
            with self._lock:
                self._joined = False
                for part in self._parts.values():
                    part.revoked = True
                self._cv.notify_all()

    # -- rebalance callbacks (kafka-python's IO thread) --------------------------------

    async def _on_revoked(self, revoked: Any, *, lost: bool) -> None:
        numbers = {tp.partition for tp in revoked}
        log.debug("%s: revoking %s (lost=%s)", self.group_id, sorted(numbers), lost)
        with self._lock:
            if not self._revoking:
                self._unready_since = time.monotonic()
            self._revoking = True
        if not lost:
            deadline = time.monotonic() + self._opts.rebalance_drain_ms / 1000
            while time.monotonic() < deadline and not self._closing.is_set():
                with self._lock:
                    busy = sum(p.out for n, p in self._parts.items() if n in numbers)
                if not busy:
                    break
                await driver.sleep(self._consumer, 0.02)
        offsets: dict[Any, Any] = {}
        with self._lock:
            for n in numbers:
                self._seeks.pop(n, None)
                part = self._parts.pop(n, None)
                if part is None:
                    continue
                if not lost:
                    point = part.commit_point()
                    if point is not None:
                        offsets[part.tp] = OffsetAndMetadata(point[0], point[1], -1)
                        self._given_up[n] = point[0]
                if part.out:
                    log.log(
                        logging.DEBUG if self._closing.is_set() else logging.WARNING,
                        "%d deliveries of %s[%d] unsettled when the partition was given up: "
                        "their acks are ignored, the next owner gets them again",
                        part.out,
                        self.topic,
                        n,
                    )
                part.revoked = True
            self._queue = deque(e for e in self._queue if not e.part.revoked)
            self._timers = [t for t in self._timers if not t[2].part.revoked]
            heapq.heapify(self._timers)
            self._cv.notify_all()
        if offsets:
            try:
                await driver.commit_now(self._consumer, offsets, self._opts.request_timeout_ms)
            except Exception as exc:
                log.warning(
                    "could not commit %s before giving partitions up (%r): messages since "
                    "the last commit will be delivered again",
                    self.group_id,
                    exc,
                )

    async def _on_assigned(self, assigned: Any) -> None:
        log.debug("%s: assigned %s", self.group_id, sorted(tp.partition for tp in assigned))
        prior: dict[int, Prior] = {}
        start: dict[int, int] = {}
        if assigned:
            try:
                committed = await driver.read_committed(
                    self._consumer, set(assigned), self._opts.request_timeout_ms
                )
                for tp, om in committed.items():
                    if om is not None and om.offset is not None and om.offset >= 0:
                        prior[tp.partition] = decode_metadata(om.offset, om.metadata)
                        start[tp.partition] = om.offset
            except Exception as exc:
                log.warning(
                    "could not read the commit metadata of %s (%r): attempt counts restart "
                    "and acked messages above the watermark may come again",
                    self.group_id,
                    exc,
                )
        with self._lock:
            for tp in assigned:
                n = tp.partition
                current = self._parts.get(n)
                if current is None or current.revoked:
                    part = PartitionState(
                        TopicPartition(tp.topic, n), next(self._epochs), prior.get(n, Prior())
                    )
                    self._parts[n] = part
                    # The committed offset; if it could not be read, our own watermark
                    # from the revoke (the commit of it may have failed: redeliveries).
                    offset = start.get(n, self._given_up.get(n))
                    if offset is not None:
                        self._seeks[n] = (part.tp, offset)
            self._given_up.clear()
            self._joined = True
            self._revoking = False
            self._cv.notify_all()


def _deliver_at(raw: str) -> float | None:
    try:
        return float(raw)
    except ValueError:
        return None
