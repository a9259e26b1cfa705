"""A partition stored as segment files: :class:`FileLog` implements ``PartitionLog``.

Writers encode before taking the log lock and write under it, one ``pwrite``
per batch; durable appends then wait for group commit outside it.  Readers
take no log lock: they snapshot the segment list, pin the segment's fd, and
stop at the segment's *published* size, so they see whole frames only.  Offsets
are dense and only ever move forward: after damage the log skips the lost
offsets rather than give them to new records a consumer group may already
have passed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from mqkit.broker.body import EncodedRecords, encode_body
from mqkit.broker.log import PREALLOCATE_BYTES
from mqkit.broker.storage.frame import FrameError, seal
from mqkit.broker.storage.index import IndexBuilder, SparseIndex
from mqkit.broker.storage.opening import Opener, apply_scan
from mqkit.broker.storage.recovery import scan
from mqkit.broker.storage.report import RecoveryReport
from mqkit.broker.storage.segment import Segment, SegmentReadError
from mqkit.broker.storage.sync import (
    FileHandle,
    FsyncPolicy,
    GroupCommit,
    IntervalFlusher,
    fsync_dir,
)
from mqkit.errors import Closed, MQError
from mqkit.message import Record

__all__ = ["FileLog", "StorageCorruptionError"]

MAX_OPEN_SEALED = 16  # fds kept open for reading old segments
MAX_CURSORS = 256


class StorageCorruptionError(MQError):
    """A read kept meeting damaged frames even after repair."""


class FileLog:
    """One partition directory of segment files; see the module docstring.

    Durability (``fsync``): ``"always"`` -- a durable append returns once an
    fsync covered it (group commit: one fsync for every appender waiting);
    ``"interval"`` -- appends return once written, a background thread fsyncs
    every ``fsync_interval`` seconds; ``"never"`` -- the OS decides.  Appends
    with ``durable=False`` never wait for an fsync.  Every policy survives a
    process crash (the bytes are in the page cache); only "always" survives
    power loss for what it confirmed.  Sealed segments are fsynced when rolled
    (unless "never"), so only the last segment can have a torn tail.
    """

    def __init__(
        self,
        directory: Path,
        *,
        fsync: FsyncPolicy = "always",
        fsync_interval: float = 0.05,
        segment_bytes: int = 64 * 2**20,
        retention_bytes: int | None = None,
        retention_seconds: float | None = None,
        index_interval: int = 4096,
        preallocate_bytes: int = PREALLOCATE_BYTES,
        verify: bool = False,
        report: RecoveryReport | None = None,
        flusher: IntervalFlusher | None = None,
    ) -> None:
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be always, interval or never, not {fsync!r}")
        self.directory = Path(directory)
        self.report = report if report is not None else RecoveryReport()
        self._policy: FsyncPolicy = fsync
        self._segment_bytes = segment_bytes
        self._retention_bytes = retention_bytes
        self._retention_seconds = retention_seconds
        self._interval = index_interval
        # The active segment's reserve (see segment); no more than a segment holds.
        self._preallocate = max(0, min(preallocate_bytes, segment_bytes))
        self._lock = threading.Lock()  # writers, roll, retention, repair
        self._fd_lock = threading.Lock()  # opening/closing read fds of sealed segments
        self._cursor_lock = threading.Lock()
        # (segments, their base offsets): one attribute, so a lock-free reader
        # always gets a matching pair
        self._view: tuple[tuple[Segment, ...], tuple[int, ...]] = ((), ())
        self._open_sealed: OrderedDict[int, Segment] = OrderedDict()
        self._cursors: dict[int, tuple[Segment, int]] = {}
        self._next_offset = 0
        self._written = 0  # bytes appended since open: the group commit's clock
        self._closed = False
        self._commit = GroupCommit(self._capture)
        self._opener = Opener(
            self.directory,
            interval=index_interval,
            durable=fsync != "never",
            report=self.report,
            new_segment=self._new_segment,
        )
        segs = self._opener.open(verify)
        segs[-1].preallocate = self._preallocate
        self._set_segments(tuple(segs))
        self._next_offset = segs[-1].next_offset
        self._own_flusher: IntervalFlusher | None = None
        self._flusher = flusher
        if fsync == "interval":
            if flusher is None:
                self._own_flusher = self._flusher = IntervalFlusher(fsync_interval)
            assert self._flusher is not None
            self._flusher.register(self)
        self.enforce_retention()

    def __repr__(self) -> str:
        return f"FileLog({str(self.directory)!r}, {self.start_offset()}..{self._next_offset})"

    # -- PartitionLog ---------------------------------------------------------------

    def append(self, records: Sequence[Record], *, durable: bool) -> int:
        ts = int(time.time() * 1000)
        # The costly part, before the lock (a checked PUBLISH brings its bodies encoded).
        if isinstance(records, EncodedRecords):
            bodies = records.bodies
        else:
            bodies = [encode_body(r) for r in records]
        with self._lock:
            self._check_open()
            first = self._next_offset
            if not bodies:
                return first
            rolled = self._append_locked(bodies, ts)
            seq = self._written
        if rolled:
            self.enforce_retention()
        if durable and self._policy == "always":
            self._commit.wait(seq)
        return first

    def read(self, offset: int, max_count: int) -> list[tuple[int, Record]]:
        out: list[tuple[int, Record]] = []
        if max_count <= 0:
            return out
        for _ in range(4):
            self._check_open()
            try:
                self._read_into(offset, max_count, out)
                return out
            except SegmentReadError as e:
                if e.segment is not None:
                    self._repair(e.segment, e)
                offset = out[-1][0] + 1 if out else offset
        raise StorageCorruptionError(
            f"{self.directory}: reads at offset {offset} keep failing after repair; "
            "the disk is probably failing"
        )

    def start_offset(self) -> int:
        return self._view[1][0]

    def end_offset(self) -> int:
        return self._next_offset

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Sync (unless fsync="never") and close; idempotent."""
        self._shutdown(sync=self._policy != "never")

    def abandon(self) -> None:
        """Drop the log as a crash would: close fds, fsync nothing (tests, fault drills)."""
        self._shutdown(sync=False)

    def _shutdown(self, *, sync: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if sync:
                    self._segments[-1].seal(fsync=True)
                    self._commit.advance(self._written)
            finally:
                with self._fd_lock:
                    for seg in self._segments:
                        seg.close()
                    self._open_sealed.clear()
        if self._flusher is not None:
            self._flusher.unregister(self)
        if self._own_flusher is not None:
            self._own_flusher.close()

    # -- durability -----------------------------------------------------------------

    def sync(self) -> None:
        """fsync everything appended so far (any policy)."""
        self._commit.wait(self._written)

    def settle(self) -> None:
        """fsync what was appended so far if the policy is "always" (a durable append's wait)."""
        if self._policy == "always" and not self._closed:  # close() syncs
            self._commit.wait(self._written)

    def sync_if_dirty(self) -> None:
        if self._commit.synced < self._written and not self._closed:
            with contextlib.suppress(Closed):  # closing meanwhile: close() syncs
                self._commit.wait(self._written)

    @property
    def fsyncs(self) -> int:
        """fsyncs done by group commit (not counting segment rolls)."""
        return self._commit.fsyncs

    def _capture(self) -> tuple[int, FileHandle | None]:
        with self._lock:
            handle = self._segments[-1].handle
            if handle is None or handle.closed:
                # close() synced and advanced the commit; anything later was never confirmed
                raise Closed(f"{self.directory}: the log closed before the append was synced")
            return self._written, handle

    # -- writing ----------------------------------------------------------------------

    def _append_locked(self, bodies: list[bytes], ts: int) -> bool:
        """Frame and write the batch, one pwrite per segment touched; True if it rolled."""
        seg = self._segments[-1]
        offset = self._next_offset
        pos = seg.size
        since = seg.builder.since
        parts: list[bytes] = []
        entries: list[tuple[int, int]] = []
        rolled = False
        try:
            for body in bodies:
                frame = seal(offset, ts, body)
                if pos > 0 and pos + len(frame) > self._segment_bytes:
                    if parts:
                        self._write(seg, parts, entries, offset, ts)
                        parts, entries = [], []
                        since = seg.builder.since
                    seg = self._roll(offset)
                    pos = since = 0
                    rolled = True
                if seg.builder.observe(offset, pos, len(frame)):
                    entries.append((offset, pos))
                parts.append(frame)
                pos += len(frame)
                offset += 1
            self._write(seg, parts, entries, offset, ts)
        except BaseException:
            seg.builder.since = since  # the failed part was cut off again
            raise
        return rolled

    def _write(
        self, seg: Segment, parts: list[bytes], entries: list[tuple[int, int]], nxt: int, ts: int
    ) -> None:
        data = b"".join(parts)
        seg.write(data, entries, nxt, ts)
        self._written += len(data)
        self._next_offset = nxt

    def _roll(self, base: int) -> Segment:
        """Seal the active segment (synced, so group commit may count it) and start another."""
        old = self._segments[-1]
        durable = self._policy != "never"
        old.seal(fsync=durable)
        if durable:
            self._commit.advance(self._written)
        seg = self._new_segment(base)
        self._set_segments((*self._segments, seg))
        return seg

    def _new_segment(self, base: int) -> Segment:
        seg = Segment(self.directory, base, self._interval, self._preallocate)
        seg.open(create=True)
        seg.index = SparseIndex()
        seg.open_index_for_append()
        if self._policy != "never":
            fsync_dir(self.directory)
        return seg

    @property
    def _segments(self) -> tuple[Segment, ...]:
        return self._view[0]

    def _set_segments(self, segs: tuple[Segment, ...]) -> None:
        self._view = (segs, tuple(s.base for s in segs))

    # -- retention --------------------------------------------------------------------

    def enforce_retention(self, now: float | None = None) -> int:
        """Delete whole oldest segments (never the active one); returns how many."""
        if self._retention_bytes is None and self._retention_seconds is None:
            return 0
        now_ms = (time.time() if now is None else now) * 1000
        with self._lock:
            if self._closed:
                return 0
            segs = list(self._segments)
            total = sum(s.size for s in segs)
            dropped: list[Segment] = []
            while len(segs) > 1:
                oldest = segs[0]
                too_big = self._retention_bytes is not None and total > self._retention_bytes
                too_old = (
                    self._retention_seconds is not None
                    and oldest.max_ts < now_ms - self._retention_seconds * 1000
                )
                if not (too_big or too_old):
                    break
                dropped.append(segs.pop(0))
                total -= oldest.size
            if dropped:
                self._set_segments(tuple(segs))
                for seg in dropped:
                    self._delete(seg)
        return len(dropped)

    def _delete(self, seg: Segment) -> None:
        with self._fd_lock:
            self._open_sealed.pop(seg.base, None)
            seg.delete()
        self._forget_cursors()

    # -- reading ----------------------------------------------------------------------

    def _read_into(self, offset: int, want: int, out: list[tuple[int, Record]]) -> None:
        segs, bases = self._view
        offset = max(offset, bases[0])
        i = max(0, bisect_right(bases, offset) - 1)
        while len(out) < want and i < len(segs):
            seg = segs[i]
            limit = seg.size
            if offset >= seg.next_offset:
                i += 1
                if i < len(segs):
                    offset = max(offset, segs[i].base)  # skip a gap left by damage
                continue
            pinned = self._pin(seg)
            if pinned is None:  # removed by retention meanwhile
                i += 1
                continue
            handle, fd = pinned
            try:
                start = self._cursor(seg, offset) or seg.start_position(offset)
                nxt, pos = seg.read(
                    fd, offset, out, start=start, limit=limit, max_count=want - len(out)
                )
            except SegmentReadError as e:
                e.segment = seg
                raise
            finally:
                handle.unpin()
            if nxt > offset:
                self._remember(seg, nxt, pos)
            if pos < limit or seg is segs[-1]:
                return  # got enough, or reached what is written
            offset = nxt

    def _pin(self, seg: Segment) -> tuple[FileHandle, int] | None:
        with self._fd_lock:
            if seg.deleted:
                return None
            handle = seg.handle
            fd = handle.pin() if handle is not None else None
            if handle is None or fd is None:
                if self._closed:
                    raise Closed(f"{self.directory}: the log is closed")
                handle = seg.open()
                fd = handle.pin()
                assert fd is not None
            if seg is not self._segments[-1]:
                self._open_sealed[seg.base] = seg
                self._open_sealed.move_to_end(seg.base)
                while len(self._open_sealed) > MAX_OPEN_SEALED:
                    _, old = self._open_sealed.popitem(last=False)
                    old.close_handle()
            return handle, fd

    def _cursor(self, seg: Segment, offset: int) -> tuple[int, int] | None:
        hit = self._cursors.get(offset)
        if hit is not None and hit[0] is seg:
            return offset, hit[1]
        return None

    def _remember(self, seg: Segment, offset: int, pos: int) -> None:
        with self._cursor_lock:
            if len(self._cursors) >= MAX_CURSORS:
                self._cursors.clear()
            self._cursors[offset] = (seg, pos)

    def _forget_cursors(self) -> None:
        with self._cursor_lock:
            self._cursors.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"{self.directory}: the log is closed")

    # -- repair ----------------------------------------------------------------------

    def _repair(self, seg: Segment, err: FrameError) -> None:
        """A read met a bad frame: rescan the segment and cut it there (or fix the index)."""
        with self._lock:
            if seg.deleted or seg not in self._segments or self._closed:
                return
            active = seg is self._segments[-1]
            pinned = self._pin(seg)
            if pinned is None:
                return
            handle, fd = pinned
            try:
                size = seg.size
                res = scan(fd, size, seg.base, 0, IndexBuilder(self._interval))
                if res.bad is None:
                    apply_scan(seg, res)
                    self._rewrite_index(seg, active)
                    self._opener.note(
                        "info", "index_rebuilt", seg.index_path, f"read failed: {err}"
                    )
                    return
                i = self._segments.index(seg)
                last = self._next_offset - 1 if active else self._segments[i + 1].base - 1
                self._opener.drop_tail(seg, fd, res, size, last=last, torn=False)
                apply_scan(seg, res)
                self._rewrite_index(seg, active)
                if active:
                    self._roll(self._next_offset)
                if seg.size == 0:
                    self._set_segments(tuple(s for s in self._segments if s is not seg))
                    self._delete(seg)
            finally:
                handle.unpin()
            self._forget_cursors()

    def _rewrite_index(self, seg: Segment, active: bool) -> None:
        assert seg.index is not None
        if active:
            if seg.index_fd is not None:
                os.close(seg.index_fd)
            seg.open_index_for_append()
        else:
            seg.index.write(seg.index_path)
