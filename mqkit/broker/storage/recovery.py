"""Scanning a segment frame by frame, and finding where valid frames resume.

:func:`scan` validates frames (length sane, CRC, offsets contiguous) and
rebuilds the sparse index on the way; it stops at the first bad frame and
says why.  :func:`resync` looks past damage for the next run of valid frames,
so a report can say which offsets were lost and the log can keep its offsets
moving forward instead of handing a lost offset to a new record.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field

from mqkit.broker.storage.frame import (
    HEAD,
    HEAD_SIZE,
    MAX_LENGTH,
    MIN_LENGTH,
    FrameError,
    check_frame,
)
from mqkit.broker.storage.index import IndexBuilder, SparseIndex

__all__ = ["ScanResult", "resync", "scan"]

SCAN_CHUNK = 1 << 20
RESYNC_TRIES = 8  # next offsets to look for after damage
RESYNC_HITS = 32  # candidate positions per offset


@dataclass
class ScanResult:
    end: int  # position after the last good frame
    next_offset: int
    max_ts: int
    bad: FrameError | None = None  # why the scan stopped before ``size``
    index: SparseIndex = field(default_factory=SparseIndex)
    builder: IndexBuilder | None = None


def scan(
    fd: int,
    size: int,
    offset: int,
    pos: int = 0,
    builder: IndexBuilder | None = None,
) -> ScanResult:
    """Validate frames from ``pos`` (holding ``offset``) to ``size``.

    With ``builder`` (whose state matches ``pos``), index entries are rebuilt.
    """
    res = ScanResult(end=pos, next_offset=offset, max_ts=0, builder=builder)
    chunk = SCAN_CHUNK
    crc32 = zlib.crc32
    unpack = HEAD.unpack_from
    while pos < size:
        buf = os.pread(fd, min(chunk, size - pos), pos)
        n = len(buf)
        if n == 0:
            res.bad = FrameError("file shorter than its size", torn=True)
            break
        view = memoryview(buf)
        p = 0
        at_eof = pos + n >= size
        while True:
            if n - p < HEAD_SIZE:
                if at_eof and p < n:
                    res.bad = FrameError(f"{n - p} trailing bytes, less than a frame", torn=True)
                break
            length, crc, off, ts = unpack(buf, p)
            if length < MIN_LENGTH or length > MAX_LENGTH:
                res.bad = FrameError(f"impossible frame length {length}")
                break
            end = p + 4 + length
            if end > n:
                if pos + end > size:
                    res.bad = FrameError(
                        f"frame of {length + 4} bytes runs past the end", torn=True
                    )
                break
            if crc32(view[p + 8 : end]) != crc:
                res.bad = FrameError("CRC mismatch")
                break
            if off != offset:
                res.bad = FrameError(f"found offset {off} where {offset} belongs")
                break
            if builder is not None and builder.observe(off, pos + p, end - p):
                res.index.add(off, pos + p)
            res.max_ts = max(res.max_ts, ts)
            offset += 1
            p = end
        pos += p
        res.end = pos
        res.next_offset = offset
        if res.bad is not None:
            break
        if p == 0:  # a frame larger than the chunk
            chunk = max(chunk, 4 + unpack(buf, 0)[0])
    if res.bad is not None and not res.bad.torn and _all_zero(fd, res.end, size):
        # a file extended by the filesystem but never written (power loss): a torn tail
        res.bad = FrameError(f"{size - res.end} zero bytes where frames belong", torn=True)
    return res


def _all_zero(fd: int, pos: int, size: int) -> bool:
    while pos < size:
        buf = os.pread(fd, min(SCAN_CHUNK, size - pos), pos)
        if not buf or buf.count(0) != len(buf):
            return False
        pos += len(buf)
    return True


def resync(fd: int, pos: int, size: int, expected: int) -> tuple[int, int] | None:
    """After damage at ``pos`` (where ``expected`` belonged): the valid run after it.

    Returns (first, last) offsets of the contiguous valid frames found past the
    damage, or None if nothing valid follows (a torn tail, or too damaged).
    """
    data = os.pread(fd, size - pos, pos)
    for k in range(expected + 1, expected + 1 + RESYNC_TRIES):
        pattern = k.to_bytes(8, "big")
        i = data.find(pattern, 9)
        hits = 0
        while i != -1 and hits < RESYNC_HITS:
            hits += 1
            start = i - 8  # the offset field sits 8 bytes into a frame
            last = _valid_run(data, start, k)
            if last is not None:
                return k, last
            i = data.find(pattern, i + 1)
    return None


def _valid_run(data: bytes, start: int, offset: int) -> int | None:
    last: int | None = None
    p = start
    while p < len(data):
        try:
            info = check_frame(data, p, len(data))
        except FrameError:
            break
        if info.offset != offset:
            break
        last = offset
        offset += 1
        p += info.size
    return last
