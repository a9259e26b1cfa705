"""Durable topics and consumer-group state: :class:`FileStateStore` implements ``StateStore``.

Files in the state directory:

* ``snapshot`` -- one framed JSON document: the whole state, and which
  journal generation continues it.  Replaced atomically (temp + fsync +
  rename + directory fsync).
* ``journal-<gen>`` -- framed binary entries appended since that snapshot.

Deliveries and acks are buffered in memory and written in one ``write`` by
:meth:`flush` (or once 64 KiB pile up, or by the background tick); creation
of topics and groups is written and synced at once.  When the journal
passes ``compact_bytes`` the state is snapshotted into a new generation and
the old journal deleted, so the files stay proportional to the state, not
to the traffic.  A crash between those steps leaves either the old snapshot
with its journal or the new one: stale files are removed at open.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from mqkit.broker.log import GroupSnapshot
from mqkit.broker.storage import journal as jr
from mqkit.broker.storage.groupstate import GroupState, StateModel
from mqkit.broker.storage.report import RecoveryEntry, RecoveryReport, Severity
from mqkit.broker.storage.sync import FileHandle, FsyncPolicy, GroupCommit, fsync_dir
from mqkit.errors import Closed

__all__ = ["FileStateStore"]

WRITE_BEHIND = 64 * 1024  # buffered journal bytes that trigger a write (not an fsync)
SNAPSHOT = "snapshot"

Floor = Callable[[str, int], "int | None"]


class FileStateStore:
    """Journal + snapshot state store; thread-safe; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        *,
        fsync: FsyncPolicy = "always",
        compact_bytes: int = 4 * 2**20,
        report: RecoveryReport | None = None,
        floor: Floor | None = None,
    ) -> None:
        """``floor(topic, partition)`` gives the log's start offset (None if unknown):
        compaction forgets acks and attempts below it, which retention deleted,
        so a group that never consumed them does not pin them in memory forever."""
        self.directory = Path(directory)
        self.report = report if report is not None else RecoveryReport()
        self._policy: FsyncPolicy = fsync
        self._compact_bytes = compact_bytes
        self._floor = floor
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._written = 0  # bytes written since open: the group commit's clock
        self._journal_bytes = 0
        self._closed = False
        self._commit = GroupCommit(self._capture)
        self.compactions = 0
        self._model, self._gen, self._handle = self._open()

    # -- StateStore ------------------------------------------------------------------

    def load(self) -> tuple[dict[str, int], dict[tuple[str, str], GroupSnapshot]]:
        with self._lock:
            topics = dict(self._model.topics)
            groups = {k: g.snapshot() for k, g in self._model.groups.items()}
        return topics, groups

    def topic_created(self, topic: str, partitions: int) -> None:
        with self._lock:
            self._check_open()
            self._model.topics[topic] = partitions
            self._add(jr.encode_topic_created(topic, partitions))
            seq = self._drain()
        self._durable(seq)

    def topic_deleted(self, topic: str) -> None:
        with self._lock:
            self._check_open()
            self._model.drop_topic(topic)
            self._add(jr.encode_topic_deleted(topic))
            seq = self._drain()
        self._durable(seq)

    def group_created(self, topic: str, group: str, start_offsets: list[int]) -> None:
        """Idempotent: a group that exists keeps its state."""
        with self._lock:
            self._check_open()
            if (topic, group) in self._model.groups:
                return
            g = GroupState(self._model.next_gid, topic, group, list(start_offsets))
            self._model.add_group(g)
            self._add(jr.encode_group(g.gid, topic, group, g.start_offsets))
            seq = self._drain()
        self._durable(seq)

    def delivered(self, topic: str, group: str, partition: int, offset: int, attempt: int) -> None:
        with self._lock:
            g = self._model.groups.get((topic, group))
            if g is None or self._closed:
                return
            g.deliver(partition, offset, attempt)
            self._add(jr.encode_deliver(g.gid, partition, offset, attempt))

    def acked(self, topic: str, group: str, partition: int, offset: int) -> None:
        with self._lock:
            g = self._model.groups.get((topic, group))
            if g is None or self._closed:
                return
            g.ack(partition, offset)
            self._add(jr.encode_ack(g.gid, partition, offset))

    def flush(self) -> None:
        """Write what is buffered and, under ``fsync="always"``, fsync it (group commit)."""
        with self._lock:
            if self._closed:
                return
            seq = self._drain()
            if self._journal_bytes >= self._compact_bytes:
                self._compact()
        if self._policy == "always":
            self._commit.wait(seq)

    def sync_if_dirty(self) -> None:
        """The background tick: write, compact if due, fsync unless ``fsync="never"``."""
        with self._lock:
            if self._closed:
                return
            seq = self._drain()
            if self._journal_bytes >= self._compact_bytes:
                self._compact()
        if self._policy != "never" and self._commit.synced < seq:
            with contextlib.suppress(Closed):  # closing meanwhile: close() syncs
                self._commit.wait(seq)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._drain()
            self._compact()  # the next open reads one small snapshot
            self._closed = True
            self._handle.close()

    def abandon(self) -> None:
        """Drop the store as a crash would: unwritten entries are lost, nothing synced."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._pending.clear()
            self._handle.close()

    # -- extras ----------------------------------------------------------------------

    def compact(self) -> None:
        """Snapshot now and start a new journal."""
        with self._lock:
            self._check_open()
            self._compact()

    @property
    def journal_path(self) -> Path:
        return self.directory / f"journal-{self._gen:08d}"

    @property
    def fsyncs(self) -> int:
        return self._commit.fsyncs

    # -- internals -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"{self.directory}: the state store is closed")

    def _add(self, payload: bytes) -> None:
        data = jr.frame(payload)
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= WRITE_BEHIND:
            self._drain()

    def _drain(self) -> int:
        """Write the buffer (under the lock); returns the byte count to sync up to."""
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            view = memoryview(data)
            done = 0
            while done < len(data):
                done += os.write(self._handle.fd, view[done:])
            self._written += len(data)
            self._journal_bytes += len(data)
        return self._written

    def _durable(self, seq: int) -> None:
        if self._policy != "never":
            self._commit.wait(seq)

    def _capture(self) -> tuple[int, FileHandle | None]:
        with self._lock:
            if self._closed:  # close() compacted and advanced; later entries were lost
                raise Closed(f"{self.directory}: the state store closed before the sync")
            return self._written, self._handle

    def _fsync(self, fd: int) -> None:
        if self._policy != "never":
            os.fsync(fd)

    def _compact(self) -> None:
        """Snapshot the model into generation gen+1 (under the lock)."""
        if self._floor is not None:
            for g in self._model.groups.values():
                for p in range(self._model.topics.get(g.topic, len(g.start_offsets))):
                    low = self._floor(g.topic, p)
                    if low is not None:
                        g.raise_floor(p, low)
        self._pending.clear()
        self._pending_bytes = 0
        gen = self._gen + 1
        new = self.directory / f"journal-{gen:08d}"
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        self._write_snapshot(self._model.to_snapshot(gen))
        old_path, old = self.journal_path, self._handle
        self._handle, self._gen, self._journal_bytes = FileHandle(fd), gen, 0
        old.close()
        with contextlib.suppress(FileNotFoundError):
            old_path.unlink()
        self.compactions += 1
        if self._policy != "never":
            self._commit.advance(self._written)  # the snapshot holds all of it

    def _write_snapshot(self, doc: bytes) -> None:
        tmp = self.directory / (SNAPSHOT + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, jr.frame(doc))
            self._fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / SNAPSHOT)
        if self._policy != "never":
            fsync_dir(self.directory)

    def _open(self) -> tuple[StateModel, int, FileHandle]:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (d / (SNAPSHOT + ".tmp")).unlink()
        model, gen = self._read_snapshot()
        path = d / f"journal-{gen:08d}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        data = b""
        with contextlib.suppress(FileNotFoundError):
            data = path.read_bytes()
        payloads, end, why = jr.unframe(data)
        for payload in payloads:
            try:
                entry = jr.decode(payload)
            except ValueError as e:  # CRC-valid but unreadable: written by a newer version?
                why = str(e)
                break
            model.apply(entry)
        if why is not None:
            torn = "runs past the end" in why or "trailing bytes" in why
            severity: Severity = "warning" if torn else "error"
            self._note(
                severity,
                "journal_tail",
                path,
                f"at byte {end}: {why}; entries from there on dropped"
                + ("" if torn else " (deliveries/acks may be redelivered)"),
                dropped=len(data) - end,
            )
            os.ftruncate(fd, end)
            self._fsync(fd)
        self._journal_bytes = end
        for stale in d.glob("journal-*"):
            if stale != path:
                stale.unlink()
                self._note("info", "stale_journal", stale, "left by an interrupted compaction")
        return model, gen, FileHandle(fd)

    def _read_snapshot(self) -> tuple[StateModel, int]:
        path = self.directory / SNAPSHOT
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return StateModel(), self._newest_journal()
        payloads, _, why = jr.unframe(data)
        if why is None and len(payloads) == 1:
            try:
                return StateModel.from_snapshot(payloads[0])
            except (ValueError, KeyError, TypeError) as e:
                why = str(e)
        self._note(
            "error",
            "snapshot_corrupt",
            path,
            f"{why or 'unexpected content'}; group state restarts from the journal only "
            "(groups may see redeliveries)",
            dropped=len(data),
        )
        path.rename(path.with_name(SNAPSHOT + ".corrupt"))
        return StateModel(), self._newest_journal()

    def _newest_journal(self) -> int:
        gens = [int(p.name[8:]) for p in self.directory.glob("journal-*") if p.name[8:].isdigit()]
        return max(gens, default=0)

    def _note(
        self, severity: Severity, kind: str, path: Path, detail: str, dropped: int = 0
    ) -> None:
        self.report.add(RecoveryEntry(severity, kind, str(path), detail, bytes_dropped=dropped))
