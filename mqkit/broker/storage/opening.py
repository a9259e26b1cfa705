"""Opening a partition directory: validate each segment, repair what is broken.

The last segment is scanned record by record (it may end in a torn write).
Older ones were synced when they were sealed, so they get cheap checks --
index well formed and spot-checked, the walk from its last entry ending
exactly at the file's end -- unless ``verify`` asks for a full scan; every
read checks CRCs anyway.  What was dropped or rebuilt goes to the report.

An all-zero tail is the space the active segment reserved ahead of its writes
(see ``segment``), left by a crash before the segment was sealed: it holds no
frame (a frame's length is never 0), so it is cut off without a report.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mqkit.broker.storage.frame import FrameError, check_frame
from mqkit.broker.storage.index import IndexBuilder, SparseIndex
from mqkit.broker.storage.recovery import ScanResult, resync, scan
from mqkit.broker.storage.report import RecoveryEntry, RecoveryReport, Severity
from mqkit.broker.storage.segment import Segment

__all__ = ["Opener", "apply_scan", "check_index", "zero_tail"]

SPOT_CHECKS = 5
ZERO_CHUNK = 2**20


class Opener:
    """Recovers one partition directory's segments at open (and truncates for repairs)."""

    def __init__(
        self,
        directory: Path,
        *,
        interval: int,
        durable: bool,
        report: RecoveryReport,
        new_segment: Callable[[int], Segment],
    ) -> None:
        self.directory = directory
        self.interval = interval
        self.durable = durable
        self.report = report
        self.new_segment = new_segment

    def open(self, verify: bool) -> list[Segment]:
        """The directory's segments, oldest first, validated and repaired (see the module doc)."""
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        for tmp in d.glob("*.tmp"):
            tmp.unlink()
        bases = sorted(int(p.stem) for p in d.glob("*.log") if p.stem.isdigit())
        for idx in d.glob("*.index"):
            if not idx.stem.isdigit() or int(idx.stem) not in bases:
                idx.unlink()
                self.note("info", "stale_index", idx, "index without a segment removed")
        segs: list[Segment] = []
        for i, base in enumerate(bases):
            seg = Segment(d, base, self.interval)
            seg.open()
            if i == len(bases) - 1:
                segs.extend(self._recover_active(seg))
            else:
                kept = self._recover_sealed(seg, bases[i + 1], verify)
                if kept:
                    segs.append(seg)
        if not segs:
            segs.append(self.new_segment(0))
        return segs

    def _recover_sealed(self, seg: Segment, next_base: int, verify: bool) -> bool:
        """Cheap checks unless ``verify``; a full scan when anything looks wrong.

        Returns False if nothing of the segment was left (it is then deleted).
        """
        assert seg.handle is not None
        fd = seg.handle.fd
        size = os.fstat(fd).st_size
        problem = None if verify else self._quick_check(seg, fd, size, next_base)
        if not verify and problem is None:
            seg.close_handle()  # reopened lazily by the first read
            return True
        res = scan(fd, size, seg.base, 0, IndexBuilder(self.interval))
        self._cut_reserve(fd, res, size)
        if res.bad is not None:
            self.drop_tail(seg, fd, res, size, last=next_base - 1, torn=False)
        apply_scan(seg, res)
        if seg.size == 0:
            seg.delete()
            self.note("info", "empty_segment", seg.log_path, "segment left empty; removed")
            return False
        assert seg.index is not None
        try:
            on_disk: bytes | None = seg.index_path.read_bytes()
        except FileNotFoundError:
            on_disk = None
        if on_disk != seg.index.to_bytes():
            seg.index.write(seg.index_path)
            if res.bad is None:
                why = problem or ("index file missing" if on_disk is None else "index was stale")
                self.note("info", "index_rebuilt", seg.index_path, why)
        seg.close_handle()
        return True

    def _quick_check(self, seg: Segment, fd: int, size: int, next_base: int) -> str | None:
        """Trust the index and the tail walk, or say why not; fills in the counters."""
        try:
            index = SparseIndex.load(seg.index_path)
        except FileNotFoundError:
            return "index file missing"
        except ValueError as e:
            return f"index file unreadable: {e}"
        problem = check_index(fd, index, seg.base, size)
        if problem is not None:
            return problem
        # walk from the last entry to the end applying the indexing rule: the walk
        # must end exactly at the file's end and add no entry the file lacks
        hit = index.lookup(next_base)
        start = hit or (seg.base, 0)
        builder = IndexBuilder(self.interval, since=self.interval if hit else 0)
        tail = scan(fd, size, start[0], start[1], builder)
        if tail.bad is not None or tail.next_offset > next_base:
            return "segment tail does not check out"
        if len(tail.index) != (1 if hit else 0):
            return "index is missing entries"
        seg.index, seg.size = index, size
        seg.next_offset, seg.max_ts = tail.next_offset, tail.max_ts
        return None

    def _recover_active(self, seg: Segment) -> list[Segment]:
        """Scan the last segment record by record; cut a torn or damaged tail."""
        assert seg.handle is not None
        fd = seg.handle.fd
        size = os.fstat(fd).st_size
        res = scan(fd, size, seg.base, 0, IndexBuilder(self.interval))
        self._cut_reserve(fd, res, size)
        resumed: tuple[int, int] | None = None
        if res.bad is not None:
            resumed = resync(fd, res.end, size, res.next_offset)
            last = resumed[1] if resumed else None
            torn = resumed is None and (res.bad.torn or torn_into_reserve(fd, res.end, size))
            self.drop_tail(seg, fd, res, size, last=last, torn=torn)
        apply_scan(seg, res)
        seg.allocated = seg.size
        try:
            on_disk = seg.index_path.read_bytes()
        except FileNotFoundError:
            on_disk = None
        assert seg.index is not None
        if on_disk != seg.index.to_bytes() and res.bad is None:
            why = "index file missing" if on_disk is None else "index did not match the segment"
            self.note("info", "index_rebuilt", seg.index_path, why)
        seg.open_index_for_append()
        if resumed is None:
            return [seg]
        # keep offsets moving forward past what was lost
        seg.seal(fsync=self.durable)
        seg.close_handle()
        out = [seg]
        if seg.size == 0:
            seg.delete()
            out = []
        return [*out, self.new_segment(resumed[1] + 1)]

    @staticmethod
    def _cut_reserve(fd: int, res: ScanResult, size: int) -> None:
        """If the scan stopped at an all-zero tail, cut it off: reserved space, not a loss."""
        if res.bad is None or not zero_tail(fd, res.end, size):
            return
        os.ftruncate(fd, res.end)
        res.bad = None

    def drop_tail(
        self, seg: Segment, fd: int, res: ScanResult, size: int, *, last: int | None, torn: bool
    ) -> None:
        """Truncate ``seg`` at the first bad frame and report what went.

        ``torn``: a write cut short by a crash, so never confirmed (warning);
        otherwise complete frames were damaged (error).
        """
        assert res.bad is not None
        if torn:
            severity: Severity = "warning"
            kind = "torn_tail"
            detail = f"at byte {res.end}: {res.bad.reason}; an unfinished write was cut off"
        else:
            severity, kind = "error", "corrupt_records"
            detail = (
                f"at byte {res.end}: {res.bad.reason}; complete records were damaged "
                "(disk damage?) and are not served"
            )
        self.note(
            severity,
            kind,
            seg.log_path,
            detail,
            first=res.next_offset,
            last=last,
            dropped=size - res.end,
        )
        os.ftruncate(fd, res.end)
        if self.durable:
            os.fsync(fd)

    def note(
        self,
        severity: Severity,
        kind: str,
        path: Path,
        detail: str,
        *,
        first: int | None = None,
        last: int | None = None,
        dropped: int = 0,
    ) -> None:
        self.report.add(RecoveryEntry(severity, kind, str(path), detail, first, last, dropped))


def apply_scan(seg: Segment, res: ScanResult) -> None:
    """Take a scan's view of the segment (after any truncation)."""
    seg.size = res.end
    seg.next_offset = res.next_offset
    seg.max_ts = res.max_ts
    seg.index = res.index
    if res.builder is not None:
        seg.builder = res.builder


def zero_tail(fd: int, start: int, size: int) -> bool:
    """Whether every byte of the file from ``start`` to ``size`` is zero."""
    pos = start
    while pos < size:
        buf = os.pread(fd, min(ZERO_CHUNK, size - pos), pos)
        if not buf:
            return True  # shorter than it said: nothing more to look at
        if buf.count(0) != len(buf):
            return False
        pos += len(buf)
    return True


def torn_into_reserve(fd: int, start: int, size: int) -> bool:
    """A bad last frame with only zeros after it: a write cut short inside the reserve.

    (Without a reserve, a torn write ends the file early instead.)
    """
    head = os.pread(fd, 4, start)
    if len(head) < 4:
        return True
    end = start + 4 + int.from_bytes(head, "big")
    return end >= size or zero_tail(fd, end, size)


def check_index(fd: int, index: SparseIndex, base: int, size: int) -> str | None:
    """Why the index cannot be trusted, or None: ordered, in range, spot-checked."""
    if not index.well_formed(base, size):
        return "index entries out of order or out of range"
    n = len(index)
    picks = sorted({(n - 1) * k // (SPOT_CHECKS - 1) for k in range(SPOT_CHECKS)}) if n else []
    for k in picks:
        off, pos = index.offsets[k], index.positions[k]
        head = os.pread(fd, 4, pos)
        if len(head) < 4:
            return f"index entry {k} points past the end"
        length = int.from_bytes(head, "big")
        data = os.pread(fd, min(4 + length, size - pos), pos)
        try:
            info = check_frame(data, 0, len(data))
        except FrameError as e:
            return f"index entry {k} points at a bad frame ({e.reason})"
        if info.offset != off:
            return f"index entry {k} says offset {off}, the frame holds {info.offset}"
    return None
