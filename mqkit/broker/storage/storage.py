"""The native broker's data directory: :class:`Storage` is what the adapter opens.

Layout::

    <data>/LOCK                          flock'd while a process uses the directory
    <data>/state/                        FileStateStore (snapshot + journal)
    <data>/topics/<topic>/<partition>/   FileLog segments

One process at a time: two processes appending to the same segment files
would interleave frames, so a second opener gets a ConfigError pointing at
the server mode, which is how processes share a broker.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType

from mqkit.broker.log import PREALLOCATE_BYTES
from mqkit.broker.storage.filelog import FileLog
from mqkit.broker.storage.report import RecoveryReport
from mqkit.broker.storage.state import FileStateStore
from mqkit.broker.storage.sync import FsyncPolicy, IntervalFlusher, fsync_dir
from mqkit.errors import Closed, ConfigError

__all__ = ["Storage"]

RETENTION_CHECK = 1.0  # seconds between retention passes of the background tick
_TRASH = ".deleted-"


class Storage:
    """Partition logs and group state under one locked data directory."""

    def __init__(
        self,
        data_dir: Path,
        *,
        fsync: FsyncPolicy = "always",
        fsync_interval: float = 0.05,
        segment_bytes: int = 64 * 2**20,
        retention_bytes: int | None = None,
        retention_seconds: float | None = None,
        preallocate_bytes: int = PREALLOCATE_BYTES,
        verify: bool = False,
    ) -> None:
        """``verify`` scans every segment at open; by default only the last one is
        scanned and older ones are spot-checked (every read still checks CRCs)."""
        if fsync not in ("always", "interval", "never"):
            raise ConfigError("must be always, interval or never", field="fsync")
        if segment_bytes < 1024:
            raise ConfigError("must be at least 1024", field="segment_bytes")
        if preallocate_bytes < 0:
            raise ConfigError("must be 0 (off) or more", field="preallocate_bytes")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _take_lock(self.data_dir)
        self._fsync: FsyncPolicy = fsync
        self._fsync_interval = fsync_interval
        self._segment_bytes = segment_bytes
        self._preallocate_bytes = preallocate_bytes
        self._retention_bytes = retention_bytes
        self._retention_seconds = retention_seconds
        self._verify = verify
        self._lock = threading.Lock()
        self._logs: dict[tuple[str, int], FileLog] = {}
        self._closed = False
        self._last_retention = 0.0
        self.recovery_report = RecoveryReport()
        try:
            self._topics_dir = self.data_dir / "topics"
            self._topics_dir.mkdir(exist_ok=True)
            self._empty_trash()
            self._flusher = IntervalFlusher(fsync_interval)
            self.state = FileStateStore(
                self.data_dir / "state",
                fsync=fsync,
                report=self.recovery_report,
                floor=self._floor,
            )
            self._flusher.register(self.state)
            self._open_existing()
            self._flusher.add_task(self._retention_tick)
        except BaseException:
            self.close()
            raise

    # -- logs ----------------------------------------------------------------------

    def log(self, topic: str, partition: int) -> FileLog:
        """The partition's log, opened (and recovered) on first use."""
        with self._lock:
            if self._closed:
                raise Closed(f"storage {self.data_dir} is closed")
            log = self._logs.get((topic, partition))
            if log is None or log.closed:
                log = self._open_log(topic, partition)
            return log

    def delete_topic(self, topic: str) -> None:
        """Close the topic's logs and remove its files (atomically, by renaming first)."""
        with self._lock:
            for key in [k for k in self._logs if k[0] == topic]:
                self._logs.pop(key).close()
            src = self._topics_dir / topic
            if not src.exists():
                return
            trash = self._topics_dir / f"{_TRASH}{topic}-{uuid.uuid4().hex[:8]}"
            src.rename(trash)
            if self._fsync != "never":
                fsync_dir(self._topics_dir)
        shutil.rmtree(trash, ignore_errors=True)

    def topics_on_disk(self) -> dict[str, list[int]]:
        """Topic directories and the partitions in them (what exists, not what is declared)."""
        out: dict[str, list[int]] = {}
        for t in self._topics_dir.iterdir():
            if t.is_dir() and not t.name.startswith(_TRASH):
                out[t.name] = sorted(int(p.name) for p in t.iterdir() if p.name.isdigit())
        return out

    def sync(self) -> None:
        """fsync every log and the state now, whatever the policy."""
        with self._lock:
            logs = list(self._logs.values())
        for log in logs:
            if not log.closed:
                log.sync()
        self.state.flush()

    def close(self) -> None:
        """Flush and close everything and release the directory lock."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            logs = list(self._logs.values())
            self._logs.clear()
        flusher = getattr(self, "_flusher", None)
        if flusher is not None:
            flusher.close()
        try:
            for log in logs:
                log.close()
            state = getattr(self, "state", None)
            if state is not None:
                state.close()
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)

    def abandon(self) -> None:
        """Let go of the directory as a crash would (tests): nothing flushed or synced.

        Written bytes stay in the page cache, as after ``kill -9``; buffered
        state entries are lost.  The lock is released so the directory can be
        opened again and recovered.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            logs = list(self._logs.values())
            self._logs.clear()
        self._flusher.close()
        for log in logs:
            log.abandon()
        self.state.abandon()
        os.close(self._lock_fd)

    def __enter__(self) -> Storage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------

    def _open_log(self, topic: str, partition: int) -> FileLog:
        log = FileLog(
            self._topics_dir / topic / str(partition),
            fsync=self._fsync,
            fsync_interval=self._fsync_interval,
            segment_bytes=self._segment_bytes,
            retention_bytes=self._retention_bytes,
            retention_seconds=self._retention_seconds,
            preallocate_bytes=self._preallocate_bytes,
            verify=self._verify,
            report=self.recovery_report,
            flusher=self._flusher,
        )
        self._logs[(topic, partition)] = log
        return log

    def _open_existing(self) -> None:
        """Open every partition now, so the recovery report is complete at startup."""
        with self._lock:
            for topic, partitions in sorted(self.topics_on_disk().items()):
                for p in partitions:
                    self._open_log(topic, p)

    def _empty_trash(self) -> None:
        for t in self._topics_dir.iterdir():
            if t.name.startswith(_TRASH):
                shutil.rmtree(t, ignore_errors=True)

    def _floor(self, topic: str, partition: int) -> int | None:
        log = self._logs.get((topic, partition))
        return None if log is None or log.closed else log.start_offset()

    def _retention_tick(self) -> None:
        now = time.monotonic()
        if now - self._last_retention < RETENTION_CHECK:
            return
        self._last_retention = now
        with self._lock:
            logs = list(self._logs.values())
        for log in logs:
            log.enforce_retention()


def _take_lock(data_dir: Path) -> int:
    fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"data directory {data_dir} is in use by another process; to share one broker "
            "between processes run `mqkit broker serve --data-dir ...` and connect with an "
            "mqkit:// URL",
            field="data_dir",
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
