"""Group commit: one fsync confirms every durable append that waited on it."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from mqkit.broker.storage import FileLog, FileStateStore
from tests.broker.util import make_record, read_all

THREADS = 8
PER_THREAD = 40


class FsyncSpy:
    """Wraps os.fsync: counts calls and tracks which offsets a *finished* fsync covers.

    Before the real fsync the log's end offset is read: every record below it
    was written before the fsync started, so it is on disk once fsync returns
    (the test log never rolls, so all of them are in the file being synced).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, end_offset: object = None) -> None:
        self.calls = 0
        self.covered = 0
        self.end_offset = end_offset
        self._lock = threading.Lock()
        self._real = os.fsync
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd: int) -> None:
        end = self.end_offset() if callable(self.end_offset) else 0
        time.sleep(0.002)  # a slow disk, so that appenders pile up behind the leader
        self._real(fd)
        with self._lock:
            self.calls += 1
            self.covered = max(self.covered, end)


def test_concurrent_durable_appends_share_fsyncs(
    logdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = FileLog(logdir, fsync="always")
    spy = FsyncSpy(monkeypatch, log.end_offset)
    early: list[str] = []
    start = threading.Barrier(THREADS)

    def producer(t: int) -> None:
        start.wait()
        for n in range(PER_THREAD):
            first = log.append([make_record(t * 1000 + n)], durable=True)
            if spy.covered < first + 1:
                early.append(f"offset {first} confirmed before an fsync covered it")

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    total = THREADS * PER_THREAD
    assert not early
    assert 0 < spy.calls < total, f"{spy.calls} fsyncs for {total} appends"
    assert log.fsyncs == spy.calls
    assert len(read_all(log)) == total
    log.close()


def test_non_durable_appends_never_wait_for_fsync(
    logdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = FileLog(logdir, fsync="always")
    spy = FsyncSpy(monkeypatch)
    for i in range(50):
        log.append([make_record(i)], durable=False)
    assert spy.calls == 0
    log.append([make_record(50)], durable=True)  # one fsync covers all 51
    assert spy.calls == 1
    log.close()


@pytest.mark.parametrize("fsync", ["interval", "never"])
def test_other_policies_do_not_fsync_per_append(
    logdir: Path, monkeypatch: pytest.MonkeyPatch, fsync: str
) -> None:
    log = FileLog(logdir, fsync=fsync, fsync_interval=3600)  # type: ignore[arg-type]
    spy = FsyncSpy(monkeypatch)
    for i in range(50):
        log.append([make_record(i)], durable=True)
    assert spy.calls == 0
    if fsync == "interval":
        log.sync_if_dirty()  # what the background tick does
        assert spy.calls == 1
    log.close()


def test_interval_flusher_syncs_in_the_background(logdir: Path) -> None:
    log = FileLog(logdir, fsync="interval", fsync_interval=0.01)
    log.append([make_record(1)], durable=True)
    deadline = time.monotonic() + 30
    while log.fsyncs == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.fsyncs >= 1
    log.close()


def test_state_store_flushes_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStateStore(tmp_path / "state")
    store.topic_created("t", 1)
    store.group_created("t", "g", [0])
    spy = FsyncSpy(monkeypatch)
    start = threading.Barrier(THREADS)

    def consumer(t: int) -> None:
        start.wait()
        for n in range(PER_THREAD):
            store.acked("t", "g", 0, t * PER_THREAD + n)
            store.flush()

    threads = [threading.Thread(target=consumer, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert 0 < spy.calls < THREADS * PER_THREAD
    assert store.load()[1][("t", "g")].committed[0] == THREADS * PER_THREAD
    store.close()


def test_fsync_failure_is_sticky(logdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failed fsync the kernel may have dropped the pages: never confirm again."""
    log = FileLog(logdir, fsync="always")
    real = os.fsync

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output"):
        log.append([make_record(1)], durable=True)
    monkeypatch.setattr(os, "fsync", real)
    with pytest.raises(OSError, match="durability can no longer be confirmed"):
        log.append([make_record(2)], durable=True)
    assert log.append([make_record(3)], durable=False) == 2  # not durable: still accepted
    log.abandon()


def test_waiters_parked_behind_a_failing_leader_fail_too(
    logdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = FileLog(logdir, fsync="always")
    entered = threading.Event()
    release = threading.Event()

    def slow_broken(fd: int) -> None:
        entered.set()
        release.wait(30)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", slow_broken)
    errors: list[BaseException] = []

    def append(i: int) -> None:
        try:
            log.append([make_record(i)], durable=True)
        except OSError as e:
            errors.append(e)

    leader = threading.Thread(target=append, args=(0,))
    leader.start()
    assert entered.wait(30)
    followers = [threading.Thread(target=append, args=(i,)) for i in range(1, 4)]
    for t in followers:
        t.start()
    deadline = time.monotonic() + 30
    while len(log._commit._waiters) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)  # until all three are parked behind the leader's fsync
    release.set()
    for t in [leader, *followers]:
        t.join(30)
    assert len(errors) == 4
    log.abandon()
