"""FileStateStore: journal replay, torn journal tails, compaction, snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqkit.broker.log import GroupSnapshot
from mqkit.broker.storage import FileStateStore


def fill(store: FileStateStore) -> None:
    store.topic_created("orders", 2)
    store.topic_created("audit", 1)
    store.group_created("orders", "billing", [0, 10])
    store.group_created("audit", "archive", [5])
    for off in range(0, 6):
        store.delivered("orders", "billing", 0, off, 1)
    store.delivered("orders", "billing", 0, 3, 2)  # a redelivery
    for off in (0, 1, 2, 4):  # 3 still in flight, 4 acked out of order
        store.acked("orders", "billing", 0, off)
    store.delivered("orders", "billing", 1, 10, 1)
    store.acked("orders", "billing", 1, 11)  # never delivered first: still an ack
    store.flush()


EXPECTED_TOPICS = {"orders": 2, "audit": 1}
EXPECTED_BILLING = GroupSnapshot(
    start_offsets=[0, 10],
    committed={0: 3, 1: 10},
    acked={0: {4}, 1: {11}},
    attempts={0: {3: 2, 5: 1}, 1: {10: 1}},
)
EXPECTED_ARCHIVE = GroupSnapshot(start_offsets=[5], committed={0: 5})


def check(store: FileStateStore) -> None:
    topics, groups = store.load()
    assert topics == EXPECTED_TOPICS
    assert groups == {
        ("orders", "billing"): EXPECTED_BILLING,
        ("audit", "archive"): EXPECTED_ARCHIVE,
    }


def test_journal_replay_after_crash(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    fill(store)
    check(store)
    store.abandon()  # no compaction at close: the next open replays the journal
    assert not (tmp_path / "snapshot").exists()
    store = FileStateStore(tmp_path)
    assert store.report.clean
    check(store)
    store.close()


def test_snapshot_after_clean_close(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    fill(store)
    store.close()
    assert (tmp_path / "snapshot").exists()
    store = FileStateStore(tmp_path)
    assert store.journal_path.stat().st_size == 0
    check(store)
    store.close()


def test_unflushed_entries_are_lost_in_a_crash_but_nothing_else(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    fill(store)
    store.acked("orders", "billing", 0, 3)  # buffered, never flushed
    store.abandon()
    store = FileStateStore(tmp_path)
    check(store)  # 3 is simply delivered again: at-least-once
    store.close()


@pytest.mark.parametrize("tail", [b"\x00\x00", b"\x00\x00\x00\x15\x12\x34\x56\x78A\x00"])
def test_torn_journal_tail(tmp_path: Path, tail: bytes) -> None:
    store = FileStateStore(tmp_path)
    fill(store)
    path = store.journal_path
    store.abandon()
    with path.open("ab") as f:
        f.write(tail)
    store = FileStateStore(tmp_path)
    [entry] = store.report.entries
    assert (entry.severity, entry.kind, entry.bytes_dropped) == (
        "warning",
        "journal_tail",
        len(tail),
    )
    check(store)
    store.acked("orders", "billing", 0, 3)  # appends after the cut, not after the garbage
    store.flush()
    store.abandon()
    store = FileStateStore(tmp_path)
    assert store.report.clean
    assert store.load()[1][("orders", "billing")].committed[0] == 5
    store.close()


def test_damaged_journal_entry_drops_the_rest_loudly(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    store.topic_created("t", 1)
    store.group_created("t", "g", [0])
    store.flush()
    path = store.journal_path
    good = path.stat().st_size
    for off in range(10):
        store.acked("t", "g", 0, off)
    store.flush()
    store.abandon()
    data = bytearray(path.read_bytes())
    data[good + 12] ^= 0x40  # inside the first ack entry
    path.write_bytes(bytes(data))
    store = FileStateStore(tmp_path)
    [entry] = store.report.entries
    assert (entry.severity, entry.bytes_dropped) == ("error", len(data) - good)
    assert store.load()[1][("t", "g")].committed == {0: 0}  # redelivered, never lost
    store.close()


def test_compaction_keeps_the_journal_small(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path, compact_bytes=2048)
    store.topic_created("t", 1)
    store.group_created("t", "g", [0])
    for off in range(5000):
        store.delivered("t", "g", 0, off, 1)
        store.acked("t", "g", 0, off)
        if off % 50 == 49:
            store.flush()
    store.delivered("t", "g", 0, 5000, 3)
    store.flush()
    assert store.compactions > 10
    assert store.journal_path.stat().st_size < 4096
    assert len(list(tmp_path.glob("journal-*"))) == 1
    store.abandon()
    store = FileStateStore(tmp_path)
    snap = store.load()[1][("t", "g")]
    assert (snap.committed, snap.acked, snap.attempts) == ({0: 5000}, {}, {0: {5000: 3}})
    store.close()


def test_interrupted_compaction_leftovers_are_removed(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    fill(store)
    store.compact()
    gen = int(store.journal_path.name.split("-")[1])
    store.abandon()
    (tmp_path / "snapshot.tmp").write_bytes(b"half a snapshot")
    (tmp_path / f"journal-{gen + 1:08d}").write_bytes(b"")  # created, snapshot never renamed
    (tmp_path / f"journal-{gen - 1:08d}").write_bytes(b"old")  # renamed, old never unlinked
    store = FileStateStore(tmp_path)
    assert sorted(e.kind for e in store.report.entries) == ["stale_journal", "stale_journal"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"journal-{gen:08d}", "snapshot"]
    check(store)
    store.close()


def test_corrupt_snapshot_is_reported_and_set_aside(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    fill(store)
    store.close()
    snap = tmp_path / "snapshot"
    data = bytearray(snap.read_bytes())
    data[20] ^= 1
    snap.write_bytes(bytes(data))
    store = FileStateStore(tmp_path)
    [entry] = store.report.errors
    assert entry.kind == "snapshot_corrupt"
    assert (tmp_path / "snapshot.corrupt").exists()
    assert store.load() == ({}, {})
    store.close()


def test_group_and_topic_lifecycle(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    store.topic_created("t", 1)
    store.group_created("t", "g", [7])
    store.acked("t", "g", 0, 7)
    store.group_created("t", "g", [100])  # idempotent: keeps its state
    store.delivered("t", "nobody", 0, 1, 1)  # unknown group: ignored
    store.acked("t", "nobody", 0, 1)
    assert store.load()[1] == {("t", "g"): GroupSnapshot([7], {0: 8})}
    store.topic_deleted("t")
    assert store.load() == ({}, {})
    store.topic_created("t", 3)
    store.group_created("t", "g", [0, 0, 0])
    store.abandon()
    store = FileStateStore(tmp_path)
    assert store.load() == ({"t": 3}, {("t", "g"): GroupSnapshot([0, 0, 0], {0: 0, 1: 0, 2: 0})})
    store.close()


def test_floor_forgets_offsets_removed_by_retention(tmp_path: Path) -> None:
    floors = {("t", 0): 100}
    store = FileStateStore(tmp_path, floor=lambda t, p: floors.get((t, p)))
    store.topic_created("t", 1)
    store.group_created("t", "g", [0])
    store.acked("t", "g", 0, 150)
    store.acked("t", "g", 0, 100)
    store.acked("t", "g", 0, 101)
    store.delivered("t", "g", 0, 50, 1)
    store.delivered("t", "g", 0, 120, 2)
    store.compact()
    snap = store.load()[1][("t", "g")]
    assert (snap.committed, snap.acked, snap.attempts) == ({0: 102}, {0: {150}}, {0: {120: 2}})
    store.close()
