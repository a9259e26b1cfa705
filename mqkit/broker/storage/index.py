"""The sparse offset index of one segment.

``<base>.index`` holds 16-byte entries ``(u64 offset, u64 position)``, one for
the first record that starts at least ``interval`` bytes after the previous
entry's record (the segment's first record needs none: a lookup below the
first entry starts at position 0).  The rule depends only on the record sizes,
so a rebuild from the segment reproduces the file byte for byte, and a lookup
never scans more than ``interval`` bytes plus one record.

In memory the entries are two ``array('q')`` (8 bytes each, no per-entry
objects): a 64 MiB segment at 4 KiB intervals costs ~256 KiB.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from bisect import bisect_right
from pathlib import Path

__all__ = ["ENTRY", "IndexBuilder", "SparseIndex"]

ENTRY = struct.Struct(">QQ")


class SparseIndex:
    """Entries in memory; appended by the single writer, read lock-free."""

    __slots__ = ("offsets", "positions")

    def __init__(self, offsets: array[int] | None = None, positions: array[int] | None = None):
        self.offsets: array[int] = offsets if offsets is not None else array("q")
        self.positions: array[int] = positions if positions is not None else array("q")

    def __len__(self) -> int:
        return len(self.offsets)

    def add(self, offset: int, position: int) -> None:
        # positions first: a lock-free reader bisects ``offsets`` and must find its position
        self.positions.append(position)
        self.offsets.append(offset)

    def lookup(self, offset: int) -> tuple[int, int] | None:
        """The last entry at or before ``offset``, or None (start of the segment)."""
        i = bisect_right(self.offsets, offset)
        if i == 0:
            return None
        return self.offsets[i - 1], self.positions[i - 1]

    def to_bytes(self) -> bytes:
        return b"".join(
            ENTRY.pack(o, p) for o, p in zip(self.offsets, self.positions, strict=False)
        )

    def well_formed(self, base: int, size: int) -> bool:
        """Strictly increasing, within the segment."""
        prev_o, prev_p = base - 1, -1
        for o, p in zip(self.offsets, self.positions, strict=False):
            if o <= prev_o or p <= prev_p or p >= size:
                return False
            prev_o, prev_p = o, p
        return True

    @classmethod
    def from_bytes(cls, data: bytes) -> SparseIndex:
        """Parse an index file; raises ValueError if its size is not whole entries."""
        if len(data) % ENTRY.size:
            raise ValueError(f"{len(data)} bytes is not a whole number of entries")
        both = array("q")
        both.frombytes(data)
        if sys.byteorder == "little":
            both.byteswap()
        return cls(both[0::2], both[1::2])

    @classmethod
    def load(cls, path: Path) -> SparseIndex:
        return cls.from_bytes(path.read_bytes())

    def write(self, path: Path) -> None:
        """Replace the file (not fsynced: it can always be rebuilt)."""
        tmp = path.with_suffix(".index.tmp")
        tmp.write_bytes(self.to_bytes())
        os.replace(tmp, path)


class IndexBuilder:
    """Applies the indexing rule to a sequence of frames."""

    __slots__ = ("interval", "since")

    def __init__(self, interval: int, since: int = 0) -> None:
        self.interval = interval
        self.since = since

    def observe(self, offset: int, position: int, size: int) -> bool:
        """Account one frame; True if it gets an index entry."""
        hit = self.since >= self.interval
        if hit:
            self.since = 0
        self.since += size
        return hit
