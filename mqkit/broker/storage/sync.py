"""fsync plumbing shared by partition logs and the state journal.

* :class:`FileHandle` -- an fd that is closed only when nobody uses it any
  more.  fd numbers are reused at once by the kernel, so closing an fd that a
  reader or the fsync leader still holds could make them read or sync some
  *other* file.
* :class:`GroupCommit` -- one fsync confirms every write that waited on it.
* :class:`IntervalFlusher` -- one background thread for ``fsync="interval"``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

__all__ = [
    "FileHandle",
    "FsyncPolicy",
    "GroupCommit",
    "IntervalFlusher",
    "Syncable",
    "fsync_dir",
]

FsyncPolicy = Literal["always", "interval", "never"]
_log = logging.getLogger("mqkit.broker.storage")


def fsync_dir(path: Path) -> None:
    """Make a file creation, rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileHandle:
    """An fd shared by writers, readers and the syncer; closed once unpinned."""

    __slots__ = ("_closing", "_lock", "_pins", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pins = 0
        self._closing = False
        self._lock = threading.Lock()

    def pin(self) -> int | None:
        """The fd, guaranteed open until :meth:`unpin`; None once closing."""
        with self._lock:
            if self._closing:
                return None
            self._pins += 1
            return self.fd

    def unpin(self) -> None:
        with self._lock:
            self._pins -= 1
            last = self._closing and self._pins == 0
        if last:
            os.close(self.fd)

    def close(self) -> None:
        """Close now, or when the last pin goes."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            now = self._pins == 0
        if now:
            os.close(self.fd)

    @property
    def closed(self) -> bool:
        return self._closing


class _Waiter:
    """One appender parked until an fsync covers its bytes, or it is asked to lead."""

    __slots__ = ("error", "lead", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.lead = False
        self.error: BaseException | None = None


class GroupCommit:
    """Group commit over a monotonically growing count of bytes written.

    Writers note the count after their write and call :meth:`wait`.  With no
    fsync running, the caller leads: ``capture`` tells it how far the writes
    go and which handle to sync; it fsyncs outside every writer lock (writes
    go on meanwhile).  Everyone arriving during that fsync parks on a lock of
    its own; when the fsync returns, the leader releases exactly the waiters
    it covered and hands the lead to the oldest waiter left, whose fsync then
    covers all the rest written so far.  (A shared condition would wake every
    waiter at every fsync just to send most back to sleep.)

    An fsync failure is sticky: after one, Linux may report later fsyncs as
    fine although the pages were lost, so nothing is ever confirmed again.
    """

    def __init__(self, capture: Callable[[], tuple[int, FileHandle | None]]) -> None:
        self._capture = capture
        self._lock = threading.Lock()
        self._synced = 0
        self._leading = False
        self._waiters: list[tuple[int, int, _Waiter]] = []  # heap by byte count
        self._tie = itertools.count()
        self._error: OSError | None = None
        self.fsyncs = 0

    @property
    def synced(self) -> int:
        return self._synced

    def advance(self, seq: int) -> None:
        """Everything up to ``seq`` was made durable some other way (segment roll)."""
        with self._lock:
            self._synced = max(self._synced, seq)
            self._release_covered()

    def wait(self, seq: int) -> None:
        """Return once a completed fsync covers byte count ``seq``."""
        with self._lock:
            self._check_error()
            if self._synced >= seq:
                return
            waiter: _Waiter | None = None
            if self._leading:
                waiter = _Waiter()
                heapq.heappush(self._waiters, (seq, next(self._tie), waiter))
            else:
                self._leading = True
        if waiter is not None:
            waiter.lock.acquire()
            if waiter.error is not None:
                raise waiter.error
            if not waiter.lead:
                return
        self._lead()

    def _lead(self) -> None:
        try:
            target, handle = self._capture()
            if handle is not None:
                fd = handle.pin()
                if fd is not None:
                    try:
                        os.fsync(fd)
                    finally:
                        handle.unpin()
                    self.fsyncs += 1
        except BaseException as e:
            with self._lock:
                if isinstance(e, OSError):
                    self._error = e
                self._leading = False
                for _, _, w in self._waiters:
                    w.error = self._error_for(e)
                    w.lock.release()
                self._waiters.clear()
            raise
        with self._lock:
            self._synced = max(self._synced, target)
            self._release_covered()
            if self._waiters:
                _, _, nxt = heapq.heappop(self._waiters)
                nxt.lead = True
                nxt.lock.release()
            else:
                self._leading = False

    def _release_covered(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._synced:
            _, _, w = heapq.heappop(self._waiters)
            w.lock.release()

    def _check_error(self) -> None:
        if self._error is not None:
            raise self._error_for(self._error)

    @staticmethod
    def _error_for(e: BaseException) -> BaseException:
        if isinstance(e, OSError):
            return OSError(
                f"fsync failed ({e}); durability can no longer be confirmed: restart the broker"
            )
        return e


class Syncable(Protocol):
    def sync_if_dirty(self) -> None: ...


class IntervalFlusher:
    """One daemon thread calling ``sync_if_dirty`` on registered objects every period.

    Also serves as the housekeeping tick (retention) through ``tasks``.
    """

    def __init__(self, period: float, name: str = "mqkit-storage-flusher") -> None:
        self._period = max(0.001, period)
        self._items: weakref.WeakSet[Syncable] = weakref.WeakSet()
        self._tasks: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def register(self, item: Syncable) -> None:
        with self._lock:
            self._items.add(item)

    def unregister(self, item: Syncable) -> None:
        with self._lock:
            self._items.discard(item)

    def add_task(self, task: Callable[[], None]) -> None:
        with self._lock:
            self._tasks.append(task)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            with self._lock:
                items = list(self._items)
                tasks = list(self._tasks)
            for item in items:
                try:
                    item.sync_if_dirty()
                except Exception:  # keep the thread alive; the writer sees sticky errors
                    _log.exception("background fsync failed")
            for task in tasks:
                try:
                    task()
                except Exception:
                    _log.exception("storage housekeeping failed")

    def close(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            with contextlib.suppress(RuntimeError):
                self._thread.join(timeout=5)
