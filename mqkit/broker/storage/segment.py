"""One segment: ``<base>.log`` (frames) and ``<base>.index`` (sparse index).

The segment's counters (``size``, ``next_offset``) are published only after
the bytes are written, in that order, so a lock-free reader that bounds
itself by ``size`` only ever sees whole frames.

The active segment's file is allocated ahead of the writes (``preallocate``
bytes at a time, zero-filled): an fsync then only flushes data into blocks the
file already owns, instead of also allocating them and growing the file in the
same journal commit -- on ext4 here ~110 us per fsync of one record instead of
~170-240 us.  Sealing cuts the reserve off again; after a crash, opening treats
an all-zero tail as that reserve (see ``opening``).  Reads verify every frame's
CRC and offset: a bad frame raises :class:`~.frame.FrameError` with its
position, and the log decides what to do (it never hands the record out).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from pathlib import Path

from mqkit.broker.storage.frame import (
    HEAD,
    HEAD_SIZE,
    MAX_LENGTH,
    MIN_LENGTH,
    FrameError,
    decode_record,
)
from mqkit.broker.storage.index import ENTRY, IndexBuilder, SparseIndex
from mqkit.broker.storage.sync import FileHandle
from mqkit.message import Record

__all__ = ["Segment", "SegmentReadError", "segment_name"]

MIN_CHUNK = 8 * 1024
MAX_CHUNK = 4 * 2**20


def segment_name(base: int) -> str:
    return f"{base:020d}"


class SegmentReadError(FrameError):
    """A bad frame met while reading, at ``position``."""

    def __init__(self, reason: str, position: int) -> None:
        super().__init__(reason)
        self.position = position
        self.segment: Segment | None = None  # set by the log


class Segment:
    """Files and counters of one segment; the log serialises writers."""

    def __init__(self, directory: Path, base: int, interval: int, preallocate: int = 0) -> None:
        self.base = base
        self.log_path = directory / f"{segment_name(base)}.log"
        self.index_path = directory / f"{segment_name(base)}.index"
        self.size = 0  # published: whole frames up to here
        self.allocated = 0  # bytes the file holds: frames, then reserved zeros
        self.preallocate = preallocate  # bytes reserved at a time (0: none)
        self.next_offset = base
        self.max_ts = 0
        self.index: SparseIndex | None = None
        self.builder = IndexBuilder(interval)
        self.handle: FileHandle | None = None
        self.index_fd: int | None = None
        self.deleted = False

    def __repr__(self) -> str:
        return f"Segment({self.log_path.name}, {self.base}..{self.next_offset}, {self.size}B)"

    # -- files ------------------------------------------------------------------

    def open(self, *, create: bool = False) -> FileHandle:
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        self.handle = FileHandle(os.open(self.log_path, flags, 0o644))
        return self.handle

    def open_index_for_append(self) -> None:
        """Write the in-memory entries to the file and keep it open for appends."""
        assert self.index is not None
        data = self.index.to_bytes()
        fd = os.open(self.index_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        if data:
            os.write(fd, data)
        self.index_fd = fd

    def seal(self, fsync: bool) -> None:
        """Stop appending: cut off the reserve, sync the segment (and index) if asked."""
        if self.handle is not None and self.allocated > self.size:
            os.ftruncate(self.handle.fd, self.size)
        self.allocated = self.size
        self.preallocate = 0
        if fsync and self.handle is not None:
            os.fsync(self.handle.fd)
        if self.index_fd is not None:
            if fsync:
                os.fsync(self.index_fd)
            os.close(self.index_fd)
            self.index_fd = None

    def close_handle(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def close(self) -> None:
        self.close_handle()
        if self.index_fd is not None:
            os.close(self.index_fd)
            self.index_fd = None

    def delete(self) -> None:
        """Unlink both files; open fds stay valid for readers that pinned them."""
        self.deleted = True
        self.close()
        for p in (self.log_path, self.index_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    # -- writing (under the log lock) --------------------------------------------

    def write(self, data: bytes, entries: list[tuple[int, int]], next_offset: int, ts: int) -> None:
        """Append whole frames, then publish them; on failure the file is cut back."""
        assert self.handle is not None
        fd = self.handle.fd
        pos = self.size
        end = pos + len(data)
        if end > self.allocated and self.preallocate:
            self._reserve(fd, end)
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.pwrite(fd, view[done:], pos + done)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, pos)
            self.allocated = pos
            raise
        self.allocated = max(self.allocated, end)
        if entries:
            assert self.index is not None
            if self.index_fd is not None:  # the file is rebuilt at open if this is lost
                blob = b"".join(ENTRY.pack(o, p) for o, p in entries)
                os.pwrite(self.index_fd, blob, len(self.index) * ENTRY.size)
            for o, p in entries:
                self.index.add(o, p)
        self.size = pos + len(data)  # publish: size first, then the offset
        self.max_ts = max(self.max_ts, ts)
        self.next_offset = next_offset

    def _reserve(self, fd: int, end: int) -> None:
        """Allocate the file up to ``end`` and ``preallocate`` bytes past what it had."""
        want = max(end, self.allocated + self.preallocate)
        try:
            os.posix_fallocate(fd, self.allocated, want - self.allocated)
        except OSError:
            # The filesystem cannot (or the disk is full, which the write itself will
            # report): append without a reserve from now on.
            self.preallocate = 0
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.allocated)  # whatever part of it was allocated
            return
        self.allocated = want

    # -- reading (lock-free) ------------------------------------------------------

    def start_position(self, offset: int) -> tuple[int, int]:
        """(offset, position) of an indexed frame at or before ``offset``."""
        index = self.index
        hit = index.lookup(offset) if index is not None else None
        return hit if hit is not None else (self.base, 0)

    def read(
        self,
        fd: int,
        offset: int,
        out: list[tuple[int, Record]],
        *,
        start: tuple[int, int],
        limit: int,
        max_count: int,
    ) -> tuple[int, int]:
        """Append records from ``offset`` on to ``out``; returns the next (offset, position).

        ``start`` is the (offset, position) of a frame at or before ``offset``;
        ``limit`` the published size, so only whole frames are read.
        """
        expect, pos = start
        want = len(out) + max_count
        # one pread for the whole request where possible: the records wanted at the
        # segment's average frame size, plus the index gap before the first one
        count = self.next_offset - self.base
        average = self.size // count if count > 0 else 1024
        chunk = min(MAX_CHUNK, max(MIN_CHUNK, max_count * average + self.builder.interval))
        unpack = HEAD.unpack_from
        crc32 = zlib.crc32
        while pos < limit and len(out) < want:
            buf = os.pread(fd, min(chunk, limit - pos), pos)
            if not buf:
                raise SegmentReadError("file shorter than its published size", pos)
            view = memoryview(buf)
            n = len(buf)
            p = 0
            while p + HEAD_SIZE <= n and len(out) < want:
                length, crc, off, _ts = unpack(buf, p)
                if length < MIN_LENGTH or length > MAX_LENGTH:
                    raise SegmentReadError(f"impossible frame length {length}", pos + p)
                end = p + 4 + length
                if end > n:
                    if pos + p + 4 + length > limit:
                        raise SegmentReadError("frame runs past the segment end", pos + p)
                    break
                if off != expect:
                    raise SegmentReadError(f"found offset {off} where {expect} belongs", pos + p)
                if off >= offset:
                    if crc32(view[p + 8 : end]) != crc:
                        raise SegmentReadError("CRC mismatch", pos + p)
                    try:
                        out.append((off, decode_record(buf, p + HEAD_SIZE, end)))
                    except (ValueError, struct.error) as e:  # CRC-valid yet malformed
                        raise SegmentReadError(f"undecodable record: {e}", pos + p) from e
                expect += 1
                p = end
            if p == 0:
                if n < HEAD_SIZE:
                    raise SegmentReadError("partial frame header at the segment end", pos)
                # one frame larger than the chunk: read all of it next time
                chunk = max(chunk, 4 + HEAD.unpack_from(buf, 0)[0])
            pos += p
        return expect, pos
