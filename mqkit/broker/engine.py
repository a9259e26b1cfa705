"""Queue semantics on top of partition logs: the heart of memory:// and native://.

A topic is N append-only partition logs.  A keyed record goes to the partition
of its key's hash; the keyless records of one publish call all go to one
partition, the next call's to the next (one append and one fsync per call).
A consumer group keeps, per partition,
a read cursor, a committed low-watermark, the acked offsets above it, the
deliveries in flight (with the member holding each) and the offsets waiting to
be delivered again.  Members lease what they fetch: a member that closes, or
is not heard from for ``session_timeout``, loses its leases and the messages go
back to the group with their attempt count kept.

Ordered members (per-key ordering) own whole partitions, assigned round-robin
and rebalanced when members come and go; a partition moves to its new owner
only once nothing of it is in flight with another member, so a key's messages
are never handled by two members at once.  Unordered members compete for
every partition's messages.

One lock guards all group state; log appends run outside it so concurrent
producers share the log's group commit.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mqkit.broker.body import EncodedRecords
from mqkit.broker.log import GroupSnapshot, LogFactory, NullStateStore, PartitionLog, StateStore
from mqkit.errors import Closed, ConfigError
from mqkit.message import Record

__all__ = ["MAX_PARTITIONS", "Delivered", "Engine", "PartitionStats"]

MAX_PARTITIONS = 4096  # every partition is a log opened up front: keep declare bounded


@dataclass(slots=True)
class Delivered:
    topic: str
    partition: int
    offset: int
    record: Record
    attempt: int


@dataclass(slots=True)
class PartitionStats:
    partition: int
    backlog: int
    in_flight: int
    oldest_timestamp: float | None


@dataclass
class _Part:
    """A group's state for one partition."""

    cursor: int
    committed: int
    acked: set[int] = field(default_factory=set)
    in_flight: dict[int, str] = field(default_factory=dict)  # offset -> member id
    attempts: dict[int, int] = field(default_factory=dict)  # offset -> deliveries so far
    redeliver: list[tuple[float, int]] = field(default_factory=list)  # heap (not_before, offset)
    delayed: list[tuple[float, int]] = field(default_factory=list)  # heap (deliver_at, offset)
    owner: str | None = None  # ordered groups: the member owning this partition

    def settle(self, offset: int) -> None:
        self.in_flight.pop(offset, None)
        self.attempts.pop(offset, None)
        if offset < self.committed:
            return
        self.acked.add(offset)
        while self.committed in self.acked:
            self.acked.discard(self.committed)
            self.committed += 1

    def is_done(self, offset: int) -> bool:
        return offset < self.committed or offset in self.acked


@dataclass
class _Member:
    id: str
    topic: str
    group: str
    ordered: bool
    prefetch: int
    last_seen: float
    in_flight: int = 0
    next_part: int = 0


@dataclass
class _Group:
    name: str
    parts: list[_Part]
    members: dict[str, _Member] = field(default_factory=dict)


@dataclass
class _Topic:
    name: str
    logs: list[PartitionLog]
    groups: dict[str, _Group] = field(default_factory=dict)
    rr: itertools.count[int] = field(default_factory=itertools.count)


class Engine:
    """Topics, partitions and consumer groups over :class:`PartitionLog` objects."""

    def __init__(
        self,
        log_factory: LogFactory,
        state: StateStore | None = None,
        *,
        session_timeout: float = 30.0,
    ) -> None:
        self._log_factory = log_factory
        self._state: StateStore = state or NullStateStore()
        self._session_timeout = session_timeout
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._topics: dict[str, _Topic] = {}
        self._members: dict[str, _Member] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._restore()

    # -- setup -------------------------------------------------------------------

    def _restore(self) -> None:
        topics, groups = self._state.load()
        for name, partitions in topics.items():
            self._topics[name] = _Topic(
                name, [self._log_factory(name, p) for p in range(partitions)]
            )
        for (tname, gname), snap in groups.items():
            topic = self._topics.get(tname)
            if topic is not None:
                topic.groups[gname] = self._group_from_snapshot(gname, topic, snap)

    @staticmethod
    def _group_from_snapshot(name: str, topic: _Topic, snap: GroupSnapshot) -> _Group:
        parts: list[_Part] = []
        for p, log in enumerate(topic.logs):
            start = snap.start_offsets[p] if p < len(snap.start_offsets) else 0
            committed = max(snap.committed.get(p, start), log.start_offset())
            part = _Part(cursor=committed, committed=committed)
            part.acked = {o for o in snap.acked.get(p, set()) if o >= committed}
            part.attempts = dict(snap.attempts.get(p, {}))
            while part.committed in part.acked:
                part.acked.discard(part.committed)
                part.committed += 1
            part.cursor = part.committed
            parts.append(part)
        return _Group(name, parts)

    def declare(
        self, topic: str, *, partitions: int | None = None, groups: Sequence[str] = ()
    ) -> None:
        """Create the topic (``partitions`` or 1) and groups if missing; idempotent.

        An existing topic keeps its partition count: changing it would move
        keys between partitions and break per-key order, so a different
        explicit count is an error rather than a silent no-op.
        """
        if partitions is not None and not 1 <= partitions <= MAX_PARTITIONS:
            raise ConfigError(f"must be between 1 and {MAX_PARTITIONS}", field="partitions")
        with self._lock:
            self._check_open()
            t = self._topics.get(topic)
            if t is None:
                n = partitions or 1
                t = _Topic(topic, [self._log_factory(topic, p) for p in range(n)])
                self._topics[topic] = t
                self._state.topic_created(topic, n)
            elif partitions is not None and partitions != len(t.logs):
                raise ConfigError(
                    f"topic {topic!r} already has {len(t.logs)} partitions, not {partitions}; "
                    "use mqkit fanout to move a backlog to a wider topic",
                    field="partitions",
                )
            for g in groups:
                self._group(t, g)

    def delete_topic(self, topic: str) -> None:
        with self._lock:
            t = self._topics.pop(topic, None)
            if t is None:
                return
            for m in [m for m in self._members.values() if m.topic == topic]:
                self._members.pop(m.id, None)
            for log in t.logs:
                log.close()
            self._state.topic_deleted(topic)
            self._cond.notify_all()

    def topics(self) -> dict[str, int]:
        with self._lock:
            return {name: len(t.logs) for name, t in self._topics.items()}

    def _topic(self, topic: str) -> _Topic:
        t = self._topics.get(topic)
        if t is None:
            raise ConfigError(f"topic {topic!r} does not exist; declare it first", field="topic")
        return t

    def _group(self, t: _Topic, name: str) -> _Group:
        g = t.groups.get(name)
        if g is None:
            starts = [log.end_offset() for log in t.logs]
            g = _Group(name, [_Part(cursor=s, committed=s) for s in starts])
            t.groups[name] = g
            self._state.group_created(t.name, name, starts)
            self._state.flush()
        return g

    # -- producing ---------------------------------------------------------------

    def publish(
        self, topic: str, records: Sequence[Record], *, durable: bool
    ) -> list[tuple[int, int]]:
        """Append records; returns (partition, offset) for each, in order."""
        with self._lock:
            self._check_open()
            t = self._topic(topic)
        n = len(t.logs)
        by_part: dict[int, list[int]] = {}
        # Keyless records of one call share a partition, the next call takes the next
        # one (Kafka's sticky partitioner): one append and one fsync per call instead of
        # one per partition, and the load still spreads over the partitions.
        sticky = next(t.rr) % n if n > 1 else 0
        encoded = records if isinstance(records, EncodedRecords) else None
        if encoded is not None:  # checked bodies: the key's bytes are at hand
            for i, kb in enumerate(encoded.keys):
                p = sticky if n == 1 or kb is None else zlib.crc32(kb) % n
                by_part.setdefault(p, []).append(i)
        else:
            for i, r in enumerate(records):
                p = sticky if n == 1 or r.key is None else zlib.crc32(r.key.encode()) % n
                by_part.setdefault(p, []).append(i)
        out: list[tuple[int, int]] = [(0, 0)] * len(records)
        for p, idxs in by_part.items():
            if len(by_part) == 1:
                part: Sequence[Record] = records
            elif encoded is not None:
                part = encoded.take(idxs)
            else:
                part = [records[i] for i in idxs]
            first = t.logs[p].append(part, durable=durable)
            for j, i in enumerate(idxs):
                out[i] = (p, first + j)
        with self._cond:
            self._cond.notify_all()
        return out

    def logs_of(self, placed: Iterable[tuple[str, int]]) -> list[PartitionLog]:
        """The logs of (topic, partition) pairs still present (for :meth:`PartitionLog.settle`)."""
        with self._lock:
            out: list[PartitionLog] = []
            for topic, p in placed:
                t = self._topics.get(topic)
                if t is not None and p < len(t.logs):
                    out.append(t.logs[p])
            return out

    # -- consuming ---------------------------------------------------------------

    def join(self, topic: str, group: str, *, ordered: bool, prefetch: int) -> str:
        with self._lock:
            self._check_open()
            t = self._topic(topic)
            self._group(t, group)
            mid = f"m{next(self._ids)}"
            self._members[mid] = _Member(mid, topic, group, ordered, prefetch, time.monotonic())
            t.groups[group].members[mid] = self._members[mid]
            self._rebalance(t.groups[group])
            self._cond.notify_all()
            return mid

    def leave(self, member_id: str) -> None:
        with self._lock:
            m = self._members.pop(member_id, None)
            if m is None:
                return
            t = self._topics.get(m.topic)
            if t is None:
                return
            g = t.groups[m.group]
            g.members.pop(member_id, None)
            self._release(g, member_id)
            self._rebalance(g)
            self._state.flush()
            self._cond.notify_all()

    def heartbeat(self, member_id: str) -> None:
        with self._lock:
            m = self._members.get(member_id)
            if m is None:
                raise Closed(f"consumer {member_id} was evicted from its group; create a new one")
            m.last_seen = time.monotonic()

    @staticmethod
    def _release(g: _Group, member_id: str) -> None:
        now = time.monotonic()
        for part in g.parts:
            for off, holder in list(part.in_flight.items()):
                if holder == member_id:
                    del part.in_flight[off]
                    heapq.heappush(part.redeliver, (now, off))
            if part.owner == member_id:
                part.owner = None

    @staticmethod
    def _rebalance(g: _Group) -> None:
        ordered = sorted((m for m in g.members.values() if m.ordered), key=lambda m: int(m.id[1:]))
        for i, part in enumerate(g.parts):
            part.owner = ordered[i % len(ordered)].id if ordered else None

    def _expire_sessions(self) -> None:
        deadline = time.monotonic() - self._session_timeout
        for m in [m for m in self._members.values() if m.last_seen < deadline]:
            self._members.pop(m.id, None)
            t = self._topics.get(m.topic)
            if t is not None:
                g = t.groups[m.group]
                g.members.pop(m.id, None)
                self._release(g, m.id)
                self._rebalance(g)

    def fetch(self, member_id: str, max_count: int, timeout: float) -> list[Delivered]:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while True:
                self._check_open()
                self._expire_sessions()
                m = self._members.get(member_id)
                if m is None:
                    raise Closed(f"consumer {member_id} is not a group member (closed or evicted)")
                m.last_seen = time.monotonic()
                t = self._topics.get(m.topic)
                if t is None:
                    raise Closed(f"topic {m.topic!r} was deleted")
                room = min(max_count, m.prefetch - m.in_flight)
                wake_at = deadline
                if room > 0:
                    out, next_due = self._collect(t, t.groups[m.group], m, room)
                    if out:
                        for d in out:
                            self._state.delivered(
                                m.topic, m.group, d.partition, d.offset, d.attempt
                            )
                        return out
                    if next_due is not None:
                        wake_at = min(wake_at, next_due)
                now = time.monotonic()
                if now >= deadline:
                    return []
                self._cond.wait(max(0.001, min(wake_at - now, self._session_timeout / 3)))

    def _collect(
        self, t: _Topic, g: _Group, m: _Member, room: int
    ) -> tuple[list[Delivered], float | None]:
        out: list[Delivered] = []
        next_due: float | None = None
        now = time.monotonic()
        wall = time.time()
        n = len(g.parts)
        start = m.next_part
        m.next_part = (m.next_part + 1) % n
        for k in range(n):
            if room <= 0:
                break
            p = (start + k) % n
            part = g.parts[p]
            if m.ordered:
                if part.owner != m.id:
                    continue
                if any(holder != m.id for holder in part.in_flight.values()):
                    continue  # the previous owner still holds some: wait for it
            log = t.logs[p]
            # 1. redeliveries that are due (lowest offset first when ordered)
            while part.redeliver and room > 0:
                if m.ordered:
                    due_at, off = min(part.redeliver, key=lambda e: e[1])
                    if due_at > now:
                        next_due = _earliest(next_due, due_at)
                        break  # an ordered partition waits for its oldest redelivery
                    part.redeliver.remove((due_at, off))
                    heapq.heapify(part.redeliver)
                else:
                    due_at, off = part.redeliver[0]
                    if due_at > now:
                        next_due = _earliest(next_due, due_at)
                        break
                    heapq.heappop(part.redeliver)
                if part.is_done(off) or off in part.in_flight or off < log.start_offset():
                    continue
                got = log.read(off, 1)
                if not got or got[0][0] != off:
                    continue
                out.append(self._hand_out(t.name, p, part, m, off, got[0][1]))
                room -= 1
            if m.ordered and part.redeliver and room > 0:
                continue  # keep order: nothing newer while an older one waits
            # 2. delayed first deliveries that are due
            while part.delayed and room > 0:
                due_wall, off = part.delayed[0]
                if due_wall > wall:
                    next_due = _earliest(next_due, now + (due_wall - wall))
                    break
                heapq.heappop(part.delayed)
                if part.is_done(off) or off in part.in_flight:
                    continue
                got = log.read(off, 1)
                if got and got[0][0] == off:
                    out.append(self._hand_out(t.name, p, part, m, off, got[0][1]))
                    room -= 1
            # 3. new records from the cursor
            if room > 0:
                part.cursor = max(part.cursor, log.start_offset())
                end = log.end_offset()
                while room > 0 and part.cursor < end:
                    batch = log.read(part.cursor, min(room, 512))
                    if not batch:
                        break
                    for off, rec in batch:
                        part.cursor = off + 1
                        if part.is_done(off) or off in part.in_flight:
                            continue
                        at = rec.deliver_at
                        if at is not None and at > wall:
                            heapq.heappush(part.delayed, (at, off))
                            next_due = _earliest(next_due, now + (at - wall))
                            continue
                        out.append(self._hand_out(t.name, p, part, m, off, rec))
                        room -= 1
                        if room <= 0:
                            break
        return out, next_due

    @staticmethod
    def _hand_out(topic: str, p: int, part: _Part, m: _Member, off: int, rec: Record) -> Delivered:
        attempt = part.attempts.get(off, 0) + 1
        part.attempts[off] = attempt
        part.in_flight[off] = m.id
        m.in_flight += 1
        return Delivered(topic, p, off, rec, attempt)

    def _held(self, member_id: str, partition: int) -> tuple[_Member | None, _Part]:
        m = self._members.get(member_id)
        if m is None:
            raise Closed(f"consumer {member_id} is not a group member (closed or evicted)")
        t = self._topic(m.topic)
        g = t.groups[m.group]
        if not 0 <= partition < len(g.parts):
            raise ConfigError(f"no partition {partition} in {m.topic!r}", field="partition")
        return m, g.parts[partition]

    def ack(self, member_id: str, partition: int, offset: int) -> None:
        with self._cond:
            m, part = self._held(member_id, partition)
            assert m is not None
            holder = part.in_flight.get(offset)
            if part.is_done(offset):
                return
            if offset not in part.attempts:
                # Never handed out (or already settled): acking it would make the group
                # skip a message nobody handled.
                raise ConfigError(
                    f"offset {offset} of partition {partition} was not delivered to this "
                    "group; ack only what fetch returned",
                    field="offset",
                )
            if holder is not None:
                owner = self._members.get(holder)
                if owner is not None:
                    owner.in_flight -= 1
            part.settle(offset)
            self._state.acked(m.topic, m.group, partition, offset)
            self._cond.notify_all()

    def nack(self, member_id: str, partition: int, offset: int, *, delay: float = 0.0) -> None:
        with self._cond:
            m, part = self._held(member_id, partition)
            assert m is not None
            if part.in_flight.get(offset) != member_id:
                return  # no longer ours (lease lost): the group already has it back
            del part.in_flight[offset]
            m.in_flight -= 1
            heapq.heappush(part.redeliver, (time.monotonic() + max(0.0, delay), offset))
            self._cond.notify_all()

    def flush(self) -> None:
        with self._lock:
            self._state.flush()

    # -- observing ---------------------------------------------------------------

    def stats(self, topic: str, group: str) -> list[PartitionStats]:
        with self._lock:
            t = self._topic(topic)
            g = t.groups.get(group)
            if g is None:
                raise ConfigError(f"group {group!r} does not exist on {topic!r}", field="group")
            out = []
            for p, part in enumerate(g.parts):
                log = t.logs[p]
                end = log.end_offset()
                first = max(part.committed, log.start_offset())
                backlog = end - first - len([o for o in part.acked if o >= first])
                oldest: float | None = None
                pending = [o for o in range(first, min(end, first + 64)) if not part.is_done(o)]
                if pending:
                    got = log.read(pending[0], 1)
                    if got:
                        ts = got[0][1].headers.get("x-mqkit-ts")
                        oldest = float(ts) if ts else None
                out.append(PartitionStats(p, max(0, backlog), len(part.in_flight), oldest))
            return out

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            for t in self._topics.values():
                for log in t.logs:
                    log.close()
            self._state.flush()
            self._state.close()

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("the broker engine is closed")


def _earliest(a: float | None, b: float) -> float:
    return b if a is None or b < a else a
