"""Crash and corruption recovery of FileLog: torn tails, flipped bytes, broken indexes.

Every test checks the three promises: reopen works and reports what it
dropped, no corrupt record is ever returned, and every record before the
damage is kept.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from mqkit.broker.storage import FileLog
from mqkit.message import Record
from tests.broker.util import flip_byte, make_record, position_of, read_all, segment_files

N = 300
SIZE = 120
SEGMENT = 8192


def build(logdir: Path, n: int = N) -> list[Record]:
    records = [make_record(i, size=SIZE) for i in range(n)]
    log = FileLog(logdir, segment_bytes=SEGMENT, index_interval=1024)
    for i in range(0, n, 10):
        log.append(records[i : i + 10], durable=True)
    log.close()
    return records


def reopen(logdir: Path, *, verify: bool = False) -> FileLog:
    return FileLog(logdir, segment_bytes=SEGMENT, index_interval=1024, verify=verify)


def assert_intact(got: list[tuple[int, Record]], records: list[Record]) -> None:
    """Whatever is returned is exactly what was written at that offset."""
    for offset, rec in got:
        assert rec == records[offset], f"offset {offset} returned a damaged record"


def first_in(path: Path) -> int:
    return int(path.stem)


def test_torn_tail_is_cut_and_reported(logdir: Path) -> None:
    records = build(logdir)
    last = segment_files(logdir)[-1]
    with last.open("r+b") as f:
        f.truncate(last.stat().st_size - 10)  # mid-way through the last record
    log = reopen(logdir)
    [entry] = log.report.entries
    assert (entry.severity, entry.kind, entry.first_offset) == ("warning", "torn_tail", N - 1)
    assert entry.bytes_dropped > 0
    assert log.end_offset() == N - 1
    got = read_all(log)
    assert [o for o, _ in got] == list(range(N - 1))
    assert_intact(got, records)
    assert log.append([records[N - 1]], durable=True) == N - 1  # never confirmed: reused
    log.close()
    log = reopen(logdir)
    assert log.report.clean
    assert read_all(log) == list(enumerate(records))
    log.close()


@pytest.mark.parametrize("keep", [1, 5, 23])
def test_partial_frame_header_at_the_tail(logdir: Path, keep: int) -> None:
    records = build(logdir)
    last = segment_files(logdir)[-1]
    frame = last.read_bytes()[-(SIZE + 200) :]
    start = len(frame) - frame.rfind(f"value-{N - 1:08d}|".encode())  # bytes from value to end
    with last.open("r+b") as f:
        f.truncate(last.stat().st_size - start - 60 + keep)
    log = reopen(logdir)
    assert [e.kind for e in log.report.entries] == ["torn_tail"]
    assert_intact(read_all(log), records)
    assert log.end_offset() in (N - 2, N - 1)
    log.close()


def test_a_zero_filled_tail_is_reserved_space_not_a_loss(logdir: Path) -> None:
    """Zeros hold no frame (a frame's length is never 0): cut off, nothing reported."""
    records = build(logdir)
    last = segment_files(logdir)[-1]
    with last.open("ab") as f:
        f.write(bytes(5000))  # the reserve a crash left, or a grown file whose data never landed
    log = reopen(logdir)
    assert log.report.clean
    assert read_all(log) == list(enumerate(records))
    assert log.append([make_record(N, size=SIZE)], durable=True) == N
    log.close()
    log = reopen(logdir)
    assert log.report.clean
    assert read_all(log) == [*enumerate(records), (N, make_record(N, size=SIZE))]
    log.close()


def test_a_torn_record_before_the_reserve_is_still_reported(logdir: Path) -> None:
    records = build(logdir)
    last = segment_files(logdir)[-1]
    size = last.stat().st_size
    with last.open("r+b") as f:
        f.truncate(size - 10)  # the last record loses its end...
        f.truncate(size + 4000)  # ...and zeros follow it, as in a reserved file
    log = reopen(logdir)
    [entry] = log.report.entries
    assert (entry.kind, entry.first_offset) == ("torn_tail", N - 1)
    assert read_all(log) == list(enumerate(records))[: N - 1]
    log.close()


def test_the_active_segment_is_allocated_ahead_and_trimmed_when_sealed(logdir: Path) -> None:
    log = FileLog(logdir, segment_bytes=SEGMENT, index_interval=1024, preallocate_bytes=4096)
    records = [make_record(i, size=SIZE) for i in range(100)]
    log.append(records[:5], durable=True)
    [active] = segment_files(logdir)
    written = log._segments[-1].size
    assert 0 < written < 4096
    assert active.stat().st_size == 4096  # reserved ahead of the writes
    for i in range(5, 100, 5):
        log.append(records[i : i + 5], durable=True)
    *sealed, active = segment_files(logdir)
    assert sealed  # rolled: every sealed file holds exactly its frames
    for f, seg in zip(sealed, log._segments, strict=False):
        assert f.stat().st_size == seg.size
    log.abandon()  # a crash: the active file keeps its reserve
    assert active.stat().st_size > log._segments[-1].size
    log = reopen(logdir)
    assert log.report.clean
    assert read_all(log) == list(enumerate(records))
    log.close()  # a clean close trims the reserve
    assert all(f.stat().st_size > 0 for f in segment_files(logdir))
    assert active.stat().st_size == log._segments[-1].size


def test_a_sealed_segment_with_a_zero_tail_opens_clean(logdir: Path) -> None:
    """fsync="never" and a power loss can leave a sealed file's trim unwritten."""
    records = build(logdir)
    first = segment_files(logdir)[0]
    with first.open("ab") as f:
        f.write(bytes(3000))
    log = reopen(logdir)
    assert log.report.clean
    assert read_all(log) == list(enumerate(records))
    log.close()


def test_flipped_byte_in_active_segment_drops_from_there(logdir: Path) -> None:
    records = build(logdir)
    active = segment_files(logdir)[-1]
    base = first_in(active)
    victim = base + 3
    flip_byte(active, position_of(active, victim) + 5)
    log = reopen(logdir)
    [entry] = log.report.entries
    assert (entry.severity, entry.kind) == ("error", "corrupt_records")
    assert (entry.first_offset, entry.last_offset) == (victim, N - 1)
    assert entry.bytes_dropped > 0
    got = read_all(log)
    assert [o for o, _ in got] == list(range(victim))
    assert_intact(got, records)
    # offsets keep moving forward: a group may have passed the lost ones already
    assert log.end_offset() == N
    assert log.append([make_record(N)], durable=True) == N
    assert log.read(victim, 1) == [(N, make_record(N))]
    log.close()


def test_flipped_byte_in_old_segment_found_by_read(logdir: Path) -> None:
    records = build(logdir)
    files = segment_files(logdir)
    assert len(files) >= 4
    old = files[1]
    victim = first_in(old) + 4
    flip_byte(old, position_of(old, victim) + 2)
    log = reopen(logdir)  # old segments are spot-checked only at open...
    got = read_all(log)  # ...and CRC-checked on every read
    lost = set(range(victim, first_in(files[2])))
    assert [o for o, _ in got] == [o for o in range(N) if o not in lost]
    assert_intact(got, records)
    [entry] = log.report.errors
    assert (entry.kind, entry.first_offset, entry.last_offset) == (
        "corrupt_records",
        victim,
        first_in(files[2]) - 1,
    )
    log.close()
    log = reopen(logdir)  # the damage was cut off for good
    assert not log.report.errors
    assert read_all(log) == got
    log.close()


def test_verify_finds_damage_in_old_segments_at_open(logdir: Path) -> None:
    records = build(logdir)
    files = segment_files(logdir)
    victim = first_in(files[0]) + 7
    flip_byte(files[0], position_of(files[0], victim))
    log = reopen(logdir, verify=True)
    [entry] = log.report.errors
    assert (entry.first_offset, entry.last_offset) == (victim, first_in(files[1]) - 1)
    got = read_all(log)
    assert [o for o, _ in got][:victim] == list(range(victim))
    assert_intact(got, records)
    log.close()


@pytest.mark.parametrize("which", ["old", "active"])
def test_deleted_index_is_rebuilt(logdir: Path, which: str) -> None:
    records = build(logdir)
    files = segment_files(logdir)
    seg = files[1] if which == "old" else files[-1]
    index = seg.with_suffix(".index")
    expected = index.read_bytes()
    index.unlink()
    log = reopen(logdir)
    assert [(e.kind, e.path) for e in log.report.entries] == [("index_rebuilt", str(index))]
    assert index.read_bytes() == expected
    assert read_all(log) == list(enumerate(records))
    log.close()


@pytest.mark.parametrize("garbage", [b"\xff" * 48, b"\x01" * 37, b"", "swap"])
def test_garbage_index_is_rebuilt(logdir: Path, garbage: bytes | str) -> None:
    records = build(logdir)
    files = segment_files(logdir)
    index = files[2].with_suffix(".index")
    expected = index.read_bytes()
    if garbage == "swap":  # a plausible index, but of another segment
        index.write_bytes(files[1].with_suffix(".index").read_bytes())
    else:
        assert isinstance(garbage, bytes)
        index.write_bytes(garbage)
    log = reopen(logdir)
    assert [e.kind for e in log.report.entries] == ["index_rebuilt"]
    assert index.read_bytes() == expected
    for offset in range(0, N, 7):
        assert log.read(offset, 3) == [(o, records[o]) for o in range(offset, min(N, offset + 3))]
    log.close()


def test_bad_index_found_at_read_time_is_rebuilt_not_treated_as_damage(logdir: Path) -> None:
    """An index that passes the spot checks but points wrongly must not cost data."""
    records = build(logdir)
    files = segment_files(logdir)
    index = files[1].with_suffix(".index")
    data = bytearray(index.read_bytes())
    assert len(data) >= 48
    # shift one entry's position by a byte: still ordered, and not one of the 5 spot checks
    entries = len(data) // 16
    spot = {(entries - 1) * k // 4 for k in range(5)}
    k = next(k for k in range(entries) if k not in spot)
    data[16 * k + 15] = (data[16 * k + 15] + 1) % 256
    index.write_bytes(bytes(data))
    log = reopen(logdir)
    assert log.report.clean
    for offset in reversed(range(N)):  # backwards: every read goes through the index
        assert log.read(offset, 1) == [(offset, records[offset])]
    assert [e.kind for e in log.report.entries] == ["index_rebuilt"]
    log.close()


def test_random_damage_never_serves_a_corrupt_record(tmp_path: Path) -> None:
    """Flip a random byte anywhere; whatever comes back must be the original."""
    for seed in range(25):
        rng = random.Random(seed)
        logdir = tmp_path / str(seed)
        records = build(logdir, n=120)
        victim = rng.choice(segment_files(logdir))
        flip_byte(victim, rng.randrange(victim.stat().st_size))
        log = reopen(logdir, verify=rng.random() < 0.5)
        got = read_all(log)
        assert_intact(got, records)
        dropped = [e for e in log.report.entries if e.first_offset is not None]
        assert dropped, f"seed {seed}: damage went unreported"
        lost_from = min(e.first_offset for e in dropped if e.first_offset is not None)
        assert [o for o, _ in got][:lost_from] == list(range(lost_from))
        log.close()


def test_stale_files_are_cleaned_up(logdir: Path) -> None:
    records = build(logdir, n=50)
    (logdir / "00000000000000999999.index").write_bytes(b"x" * 16)
    (logdir / "00000000000000000000.index.tmp").write_bytes(b"junk")
    log = reopen(logdir)
    assert [e.kind for e in log.report.entries] == ["stale_index"]
    assert sorted(os.listdir(logdir)) == sorted(
        p.name for p in (*segment_files(logdir), *logdir.glob("*.index"))
    )
    assert read_all(log) == list(enumerate(records))
    log.close()


def test_damage_found_while_running_in_active_segment(logdir: Path) -> None:
    records = build(logdir)
    log = reopen(logdir)
    active = segment_files(logdir)[-1]
    victim = first_in(active) + 2
    flip_byte(active, position_of(active, victim) + 1)  # the disk rots under a running log
    got = read_all(log)
    assert [o for o, _ in got] == list(range(victim))
    assert_intact(got, records)
    [entry] = log.report.errors
    assert (entry.first_offset, entry.last_offset) == (victim, N - 1)
    assert log.append([make_record(N)], durable=True) == N  # a new segment past the gap
    assert log.read(victim, 5) == [(N, make_record(N))]
    log.close()
    log = reopen(logdir)
    assert not log.report.errors
    assert [o for o, _ in read_all(log)] == [*range(victim), N]
    log.close()
