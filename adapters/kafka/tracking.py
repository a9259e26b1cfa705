"""Per-partition bookkeeping of a Kafka subscription, and the commit-metadata codec.

Kafka keeps ONE committed offset per (group, partition), while mqkit acks single
messages.  So mqkit commits the low watermark: the lowest offset fetched but not
acked yet (or, with everything acked, the next offset to fetch).  A later ack
never moves the commit past an unacked message, so nothing unacked is skipped.

What an offset cannot say rides along in the commit's metadata string: the acks
above the watermark, and how many times each unacked message was handed out.
The next owner of the partition (after a rebalance, a close, or a crash after
the last commit) reads it back, skips what was acked and keeps counting attempts.
Dropping that metadata (a foreign tool, or the size cap below) is always safe:
it only causes redeliveries, never a loss.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mqkit.message import Record

__all__ = [
    "EMPTY_PRIOR",
    "MAX_METADATA",
    "Entry",
    "PartitionState",
    "Prior",
    "decode_metadata",
    "encode_metadata",
]

META_TAG = "mqkit1"
MAX_METADATA = 3000
"""Characters of metadata per partition; the broker default offset.metadata.max.bytes is 4096."""


@dataclass(frozen=True)
class Prior:
    """What the previous owner of a partition recorded with its last commit."""

    attempts: Mapping[int, int] = field(default_factory=dict)
    acked: tuple[tuple[int, int], ...] = ()  # sorted, inclusive (first, last) offset ranges

    def was_acked(self, offset: int) -> bool:
        if not self.acked:
            return False
        i = bisect.bisect_right(self.acked, offset, key=lambda r: r[0]) - 1
        return i >= 0 and self.acked[i][0] <= offset <= self.acked[i][1]


EMPTY_PRIOR = Prior()


def _ranges(offsets: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for o in sorted(set(offsets)):
        if out and o == out[-1][1] + 1:
            out[-1] = (out[-1][0], o)
        else:
            out.append((o, o))
    return out


def encode_metadata(base: int, attempts: Mapping[int, int], acked: Iterable[int]) -> str:
    """``mqkit1 a=<delta>:<n>,... k=<delta>-<delta>,...`` with offsets relative to ``base``.

    Capped at :data:`MAX_METADATA` characters: the highest acked ranges go first,
    then the highest attempt counts (both only cost redeliveries or an attempt
    count that restarts lower).
    """
    att = [f"{o - base}:{n}" for o, n in sorted(attempts.items()) if n > 0 and o >= base]
    ack = [
        f"{a - base}" if a == b else f"{a - base}-{b - base}"
        for a, b in _ranges(o for o in acked if o >= base)
    ]
    while True:
        parts = [META_TAG]
        if att:
            parts.append("a=" + ",".join(att))
        if ack:
            parts.append("k=" + ",".join(ack))
        text = " ".join(parts)
        if len(text) <= MAX_METADATA:
            return text if len(parts) > 1 else ""
        if ack:
            ack.pop()
        else:
            att.pop()


def decode_metadata(base: int, text: str | None) -> Prior:
    """Parse what :func:`encode_metadata` wrote; anything else (other tools) means nothing."""
    if not text or not text.startswith(META_TAG + " "):
        return EMPTY_PRIOR
    attempts: dict[int, int] = {}
    acked: list[tuple[int, int]] = []
    try:
        for part in text.split(" ")[1:]:
            kind, _, body = part.partition("=")
            for item in filter(None, body.split(",")):
                if kind == "a":
                    d, _, n = item.partition(":")
                    attempts[base + int(d)] = int(n)
                elif kind == "k":
                    a, _, b = item.partition("-")
                    acked.append((base + int(a), base + int(b or a)))
    except ValueError:
        return EMPTY_PRIOR
    return Prior(attempts, tuple(sorted(acked)))


class Entry:
    """One fetched record of a partition until it is acked (or the partition revoked)."""

    __slots__ = ("attempt", "offset", "out", "part", "record")

    def __init__(self, part: PartitionState, offset: int, record: Record, attempt: int) -> None:
        self.part = part
        self.offset = offset
        self.record = record
        self.attempt = attempt  # times handed out so far (also by previous owners)
        self.out = False  # handed out and not settled yet

    def live(self) -> bool:
        """Still owned and unacked: may be handed out (again)."""
        return not self.part.revoked and self.part.pending.get(self.offset) is self


class PartitionState:
    """One assigned partition, for one assignment (``epoch``); dropped on revoke."""

    def __init__(self, tp: Any, epoch: int, prior: Prior = EMPTY_PRIOR) -> None:
        self.tp = tp
        self.epoch = epoch
        self.prior = prior
        self.pending: dict[int, Entry] = {}  # fetched, not acked: queued, out, or held
        self.acked_above: list[int] = []  # acked offsets not yet below the watermark
        self.hi: int | None = None  # the offset after the last one fetched
        self.out = 0  # entries handed out and not settled
        self.dirty = False  # the commit point moved since the last commit was sent
        self.revoked = False

    def receive(self, offset: int, record: Record) -> Entry | None:
        """Track a fetched record; None when a previous owner already acked it."""
        entry = self.prepare(offset, record)
        if entry is None:
            self.admit({}, [offset], offset + 1)
        else:
            self.admit({offset: entry}, [], offset + 1)
        return entry

    def prepare(self, offset: int, record: Record) -> Entry | None:
        """The Entry of a fetched record, not tracked yet; None when a previous owner acked it.

        Touches nothing shared (``prior`` never changes): the poller builds a
        whole poll's entries outside the subscription's lock, then :meth:`admit`s them.
        """
        prior = self.prior
        if prior.acked and prior.was_acked(offset):
            return None
        return Entry(self, offset, record, prior.attempts.get(offset, 0) if prior.attempts else 0)

    def admit(self, fresh: dict[int, Entry], skipped: list[int], hi: int) -> None:
        """Track prepared entries (offset -> Entry) and the offsets a previous owner acked."""
        self.hi = hi
        if fresh:
            self.pending.update(fresh)
        if skipped:
            self.acked_above.extend(skipped)
            self.dirty = True

    def hand_out(self, entry: Entry) -> int:
        entry.out = True
        entry.attempt += 1
        self.out += 1
        self.dirty = True  # the attempt count is part of the commit metadata
        return entry.attempt

    def give_back(self, entry: Entry) -> bool:
        """A nack: the entry stays pending (it holds the watermark) and may go out again."""
        if not entry.out or not entry.live():
            return False
        entry.out = False
        self.out -= 1
        return True

    def ack(self, entry: Entry) -> bool:
        """Settle ``entry``: O(1); the watermark moves when the commit point is computed."""
        offset = entry.offset
        pending = self.pending
        if self.revoked or pending.get(offset) is not entry:
            return False
        del pending[offset]
        if entry.out:
            entry.out = False
            self.out -= 1
        self.acked_above.append(offset)
        self.dirty = True
        return True

    def watermark(self) -> int | None:
        if self.pending:
            return min(self.pending)
        return self.hi

    def commit_point(self) -> tuple[int, str] | None:
        """(offset, metadata) to commit now, or None when nothing was fetched yet."""
        wm = self.watermark()
        if wm is None:
            return None
        self.acked_above = [o for o in self.acked_above if o > wm]
        attempts = {o: e.attempt for o, e in self.pending.items() if e.attempt}
        return wm, encode_metadata(wm, attempts, self.acked_above)
