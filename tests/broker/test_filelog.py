"""FileLog: records round-trip through segment files, reads at any offset, retention."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from mqkit.broker.storage import FileLog
from mqkit.broker.storage.filelog import MAX_OPEN_SEALED
from mqkit.errors import Closed
from mqkit.message import Record
from tests.broker.util import make_record, read_all, segment_files

ODD = [
    Record(None, b"", {}),
    Record("", b"", {"": ""}),
    Record("clé-ü", b"\x00\xff" * 3, {"x-mqkit-ts": "1712345678.25", "h\u00e9": "v\u2603"}),
    Record("big", bytes(range(256)) * 4096, {"size": "1MiB"}),  # 1 MiB value
    Record(None, b"after-big", {"a": "1", "b": "2", "c": "3"}),
]


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_round_trip_across_rolls_and_reopen(logdir: Path, fsync: str) -> None:
    records = [*ODD, *(make_record(i, size=300) for i in range(200)), *ODD]
    log = FileLog(logdir, fsync=fsync, segment_bytes=4096)  # type: ignore[arg-type]
    firsts = [log.append(records[i : i + 7], durable=True) for i in range(0, len(records), 7)]
    assert firsts == list(range(0, len(records), 7))
    assert len(segment_files(logdir)) > 10
    assert read_all(log) == list(enumerate(records))
    log.close()

    log = FileLog(logdir, fsync=fsync, segment_bytes=4096)  # type: ignore[arg-type]
    assert log.report.clean, log.report.lines()
    assert (log.start_offset(), log.end_offset()) == (0, len(records))
    assert read_all(log, batch=1000) == list(enumerate(records))
    assert log.append([make_record(999)], durable=True) == len(records)
    log.close()


def test_read_at_arbitrary_offsets_and_past_the_end(logdir: Path) -> None:
    records = [make_record(i, size=random.Random(i).randint(1, 900)) for i in range(600)]
    log = FileLog(logdir, segment_bytes=8192, index_interval=512)
    for i in range(0, 600, 50):
        log.append(records[i : i + 50], durable=False)
    rng = random.Random(7)
    for _ in range(300):
        offset = rng.randrange(0, 620)
        count = rng.choice([1, 2, 5, 64, 1000])
        want = [(o, records[o]) for o in range(offset, min(600, offset + count))]
        assert log.read(offset, count) == want
    assert log.read(600, 10) == []
    assert log.read(10_000, 10) == []
    assert log.read(5, 0) == []
    log.close()
    with pytest.raises(Closed):
        log.read(0, 1)
    with pytest.raises(Closed):
        log.append([make_record(1)], durable=False)


def test_empty_log_and_empty_append(logdir: Path) -> None:
    log = FileLog(logdir)
    assert (log.start_offset(), log.end_offset()) == (0, 0)
    assert log.read(0, 10) == []
    assert log.append([], durable=True) == 0
    log.close()
    log.close()  # idempotent


def test_reads_see_only_whole_records_while_appending(logdir: Path) -> None:
    log = FileLog(logdir, fsync="never", segment_bytes=16_384)
    total = 3000
    errors: list[str] = []

    def write() -> None:
        for i in range(0, total, 10):
            log.append([make_record(j, size=200) for j in range(i, i + 10)], durable=False)

    def read() -> None:
        offset = 0
        while offset < total:
            for o, r in log.read(offset, 50):
                if o != offset or r != make_record(o, size=200):
                    errors.append(f"bad record at {o} (expected {offset})")
                    return
                offset += 1

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    log.close()


def test_retention_by_size_moves_start_and_deletes_files(logdir: Path) -> None:
    log = FileLog(logdir, segment_bytes=2048, retention_bytes=8192)
    for i in range(400):
        log.append([make_record(i, size=100)], durable=False)
    start = log.start_offset()
    assert start > 0
    files = segment_files(logdir)
    assert sum(f.stat().st_size for f in files[:-1]) <= 8192
    assert files[0].name == f"{start:020d}.log"
    assert len(list(logdir.glob("*.index"))) == len(files)
    got = read_all(log)  # from 0: skips what retention removed
    assert [o for o, _ in got] == list(range(start, 400))
    assert log.read(0, 1) == [(start, make_record(start, size=100))]
    log.close()
    log = FileLog(logdir, segment_bytes=2048, retention_bytes=8192)  # enforces at open too
    assert log.start_offset() >= start
    assert sum(f.stat().st_size for f in segment_files(logdir)) <= 8192
    log.close()


def test_retention_by_age_deletes_old_segments_never_the_active(logdir: Path) -> None:
    log = FileLog(logdir, segment_bytes=2048, retention_seconds=60)
    for i in range(100):
        log.append([make_record(i, size=100)], durable=False)
    n_files = len(segment_files(logdir))
    assert n_files > 3
    assert log.enforce_retention(now=time.time()) == 0
    assert log.enforce_retention(now=time.time() + 3600) == n_files - 1
    assert len(segment_files(logdir)) == 1
    start = log.start_offset()
    assert 0 < start < 100
    assert [o for o, _ in read_all(log)] == list(range(start, 100))
    assert log.append([make_record(100)], durable=True) == 100
    log.close()


def test_read_fds_stay_bounded_over_many_segments(logdir: Path) -> None:
    log = FileLog(logdir, segment_bytes=1024)
    for i in range(300):
        log.append([make_record(i, size=200)], durable=False)
    assert len(segment_files(logdir)) > 50
    for _ in range(2):
        assert len(read_all(log)) == 300
    open_here = [
        fd for fd in os.listdir("/proc/self/fd") if str(logdir) in _readlink(f"/proc/self/fd/{fd}")
    ]
    assert len(open_here) <= MAX_OPEN_SEALED + 2  # + the active segment and its index
    log.close()


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def test_reads_survive_concurrent_retention(logdir: Path) -> None:
    log = FileLog(logdir, fsync="never", segment_bytes=2048, retention_bytes=16_384)
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                for o, r in log.read(log.start_offset(), 200):
                    assert r == make_record(o, size=100)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(3000):
        log.append([make_record(i, size=100)], durable=False)
    stop.set()
    t.join(timeout=60)
    assert not errors
    assert log.start_offset() > 2000
    log.close()


def test_failed_write_leaves_the_log_consistent(
    logdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = FileLog(logdir, segment_bytes=4096, index_interval=512)
    log.append([make_record(i, size=300) for i in range(20)], durable=True)
    real = os.pwrite
    calls = {"n": 0}

    def full_disk(fd: int, data: bytes, pos: int) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            real(fd, bytes(data)[: len(data) // 2], pos)  # half of it lands, then ENOSPC
            raise OSError(28, "No space left on device")
        return real(fd, data, pos)

    monkeypatch.setattr(os, "pwrite", full_disk)
    with pytest.raises(OSError, match="No space"):
        log.append([make_record(i, size=300) for i in range(20, 25)], durable=True)
    monkeypatch.setattr(os, "pwrite", real)
    assert log.end_offset() == 20
    assert log.append([make_record(i, size=300) for i in range(20, 40)], durable=True) == 20
    expected = [(i, make_record(i, size=300)) for i in range(40)]
    assert read_all(log) == expected
    log.close()
    log = FileLog(logdir, segment_bytes=4096, index_interval=512)
    assert log.report.clean, log.report.lines()
    assert read_all(log) == expected
    log.close()
