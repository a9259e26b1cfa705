"""The state a :class:`~.state.FileStateStore` keeps in memory, and its snapshot form.

Per (topic, group) and partition: a committed low-watermark (every offset
below it is acked), the acked offsets above it, and attempt counts of the
offsets delivered but not acked.  Acks fold into the watermark as soon as
they are contiguous, so memory stays proportional to what is in flight.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mqkit.broker.log import GroupSnapshot
from mqkit.broker.storage.journal import Ack, Deliver, Entry, GroupCreated, TopicCreated

__all__ = ["GroupState", "StateModel"]

SNAPSHOT_VERSION = 1


@dataclass
class GroupState:
    gid: int
    topic: str
    name: str
    start_offsets: list[int]
    committed: dict[int, int] = field(default_factory=dict)
    acked: dict[int, set[int]] = field(default_factory=dict)
    attempts: dict[int, dict[int, int]] = field(default_factory=dict)

    def watermark(self, p: int) -> int:
        c = self.committed.get(p)
        if c is None:
            c = self.start_offsets[p] if p < len(self.start_offsets) else 0
        return c

    def ack(self, p: int, offset: int) -> None:
        c = self.watermark(p)
        tries = self.attempts.get(p)
        if tries is not None:
            tries.pop(offset, None)
        if offset < c:
            return
        done = self.acked.setdefault(p, set())
        done.add(offset)
        while c in done:
            done.discard(c)
            c += 1
        self.committed[p] = c

    def deliver(self, p: int, offset: int, attempt: int) -> None:
        if offset < self.watermark(p) or offset in self.acked.get(p, ()):
            return
        tries = self.attempts.setdefault(p, {})
        if attempt > tries.get(offset, 0):
            tries[offset] = attempt

    def raise_floor(self, p: int, floor: int) -> None:
        """Offsets below ``floor`` are gone from the log (retention): nothing to remember."""
        if floor <= self.watermark(p):
            return
        done = self.acked.get(p, set())
        c = floor
        while c in done:
            c += 1
        self.acked[p] = {o for o in done if o > c}
        self.attempts[p] = {o: n for o, n in self.attempts.get(p, {}).items() if o >= c}
        self.committed[p] = c

    def snapshot(self) -> GroupSnapshot:
        parts = range(max(len(self.start_offsets), *(k + 1 for k in self.committed), 0))
        return GroupSnapshot(
            start_offsets=list(self.start_offsets),
            committed={p: self.watermark(p) for p in parts},
            acked={p: set(s) for p, s in self.acked.items() if s},
            attempts={p: dict(a) for p, a in self.attempts.items() if a},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "gid": self.gid,
            "topic": self.topic,
            "group": self.name,
            "start": self.start_offsets,
            "committed": [[p, c] for p, c in self.committed.items()],
            "acked": [[p, sorted(s)] for p, s in self.acked.items() if s],
            "attempts": [[p, sorted(a.items())] for p, a in self.attempts.items() if a],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GroupState:
        return cls(
            gid=int(d["gid"]),
            topic=str(d["topic"]),
            name=str(d["group"]),
            start_offsets=[int(x) for x in d["start"]],
            committed={int(p): int(c) for p, c in d["committed"]},
            acked={int(p): {int(o) for o in s} for p, s in d["acked"]},
            attempts={int(p): {int(o): int(n) for o, n in a} for p, a in d["attempts"]},
        )


class StateModel:
    """Topics and groups; applies journal entries; (de)serialises snapshots."""

    def __init__(self) -> None:
        self.topics: dict[str, int] = {}
        self.groups: dict[tuple[str, str], GroupState] = {}
        self.by_gid: dict[int, GroupState] = {}
        self.next_gid = 1

    def apply(self, entry: Entry) -> None:
        if isinstance(entry, (Ack, Deliver)) and entry.gid >= self.next_gid:
            self.next_gid = entry.gid + 1  # a group lost with a damaged snapshot: never reuse
        if isinstance(entry, Ack):
            g = self.by_gid.get(entry.gid)
            if g is not None:
                g.ack(entry.partition, entry.offset)
        elif isinstance(entry, Deliver):
            g = self.by_gid.get(entry.gid)
            if g is not None:
                g.deliver(entry.partition, entry.offset, entry.attempt)
        elif isinstance(entry, TopicCreated):
            self.topics[entry.topic] = entry.partitions
        elif isinstance(entry, GroupCreated):
            self.add_group(GroupState(entry.gid, entry.topic, entry.group, entry.start_offsets))
        else:
            self.drop_topic(entry.topic)

    def add_group(self, g: GroupState) -> None:
        self.groups[(g.topic, g.name)] = g
        self.by_gid[g.gid] = g
        self.next_gid = max(self.next_gid, g.gid + 1)

    def drop_topic(self, topic: str) -> None:
        self.topics.pop(topic, None)
        for key in [k for k in self.groups if k[0] == topic]:
            g = self.groups.pop(key)
            self.by_gid.pop(g.gid, None)

    def to_snapshot(self, journal: int) -> bytes:
        doc = {
            "version": SNAPSHOT_VERSION,
            "journal": journal,
            "next_gid": self.next_gid,
            "topics": self.topics,
            "groups": [g.to_json() for g in self.groups.values()],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_snapshot(cls, data: bytes) -> tuple[StateModel, int]:
        """The model and the journal generation the snapshot continues with."""
        doc = json.loads(data)
        if doc.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown snapshot version {doc.get('version')!r}")
        m = cls()
        m.topics = {str(k): int(v) for k, v in doc["topics"].items()}
        for g in doc["groups"]:
            m.add_group(GroupState.from_json(g))
        m.next_gid = max(m.next_gid, int(doc["next_gid"]))
        return m, int(doc["journal"])
