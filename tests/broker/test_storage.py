"""Storage: the locked data directory, its logs and state, and the engine on top."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mqkit
from mqkit.broker.engine import Engine
from mqkit.broker.storage import Storage
from mqkit.errors import Closed, ConfigError
from tests.broker.util import flip_byte, make_record, position_of, read_all, segment_files

REPO = Path(__file__).resolve().parents[2]

OPEN_IN_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mqkit.broker.storage import Storage
    from mqkit.errors import ConfigError
    try:
        Storage(Path(sys.argv[1])).close()
    except ConfigError as e:
        print("ConfigError:", e)
    else:
        print("opened")
    """
)


def open_in_child(data: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", OPEN_IN_CHILD, str(data)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


def test_second_process_gets_a_config_error(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    out = open_in_child(tmp_path)
    assert out.startswith("ConfigError:")
    assert "in use by another process" in out
    assert "mqkit://" in out
    with pytest.raises(ConfigError):
        Storage(tmp_path)  # a second open in this process is refused too
    storage.close()
    assert open_in_child(tmp_path) == "opened"


def test_logs_state_and_reopen(tmp_path: Path) -> None:
    with Storage(tmp_path, segment_bytes=4096) as storage:
        log = storage.log("orders", 1)
        assert storage.log("orders", 1) is log
        log.append([make_record(i, size=200) for i in range(100)], durable=True)
        storage.state.topic_created("orders", 2)
        assert (tmp_path / "topics" / "orders" / "1").is_dir()
        log.close()  # the engine closes logs of deleted topics; a new one is handed out
        assert storage.log("orders", 1) is not log
    with Storage(tmp_path, segment_bytes=4096) as storage:
        assert storage.recovery_report.clean
        assert storage.topics_on_disk() == {"orders": [1]}
        assert storage.state.load()[0] == {"orders": 2}
        got = read_all(storage.log("orders", 1))
        assert got == [(i, make_record(i, size=200)) for i in range(100)]
    with pytest.raises(Closed):
        storage.log("orders", 0)


def test_delete_topic_removes_files(tmp_path: Path) -> None:
    with Storage(tmp_path) as storage:
        storage.log("gone", 0).append([make_record(1)], durable=True)
        storage.log("kept", 0).append([make_record(2)], durable=True)
        storage.delete_topic("gone")
        storage.delete_topic("never-existed")
        assert storage.topics_on_disk() == {"kept": [0]}
        fresh = storage.log("gone", 0)
        assert (fresh.start_offset(), fresh.end_offset()) == (0, 0)
    (tmp_path / "topics" / ".deleted-x-123").mkdir()  # a delete interrupted by a crash
    with Storage(tmp_path) as storage:
        assert sorted(p.name for p in (tmp_path / "topics").iterdir()) == ["gone", "kept"]


def test_recovery_report_is_complete_at_open(tmp_path: Path) -> None:
    with Storage(tmp_path, segment_bytes=4096) as storage:
        storage.log("t", 0).append([make_record(i, size=100) for i in range(30)], durable=True)
    seg = segment_files(tmp_path / "topics" / "t" / "0")[-1]
    victim = int(seg.stem) + 1
    flip_byte(seg, position_of(seg, victim))
    with Storage(tmp_path, segment_bytes=4096) as storage:
        [entry] = storage.recovery_report.errors
        assert entry.first_offset == victim
        assert "corrupt_records" in storage.recovery_report.lines()[0]


def test_abandon_then_recover(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    storage.log("t", 0).append([make_record(i) for i in range(10)], durable=True)
    storage.state.topic_created("t", 1)
    storage.abandon()
    with Storage(tmp_path) as storage:
        assert storage.log("t", 0).end_offset() == 10
        assert storage.state.load()[0] == {"t": 1}


def test_engine_over_storage_survives_restart(tmp_path: Path) -> None:
    """The lead's engine on this storage: acked work is not redelivered after a restart."""
    storage = Storage(tmp_path, segment_bytes=4096)
    engine = Engine(storage.log, storage.state)
    engine.declare("jobs", partitions=2, groups=["workers"])
    engine.publish("jobs", [make_record(i, size=100) for i in range(40)], durable=True)
    member = engine.join("jobs", "workers", ordered=False, prefetch=100)
    got = engine.fetch(member, 25, timeout=1.0)
    assert len(got) == 25
    acked = {(d.partition, d.offset) for d in got[:20]}
    for d in got[:20]:
        engine.ack(member, d.partition, d.offset)
    engine.flush()
    engine.close()
    storage.close()

    storage = Storage(tmp_path, segment_bytes=4096)
    engine = Engine(storage.log, storage.state)
    member = engine.join("jobs", "workers", ordered=False, prefetch=100)
    rest = engine.fetch(member, 100, timeout=1.0)
    seen = {(d.partition, d.offset) for d in rest}
    assert len(rest) == 20
    assert not seen & acked
    redelivered = {
        d.attempt
        for d in rest
        if (d.partition, d.offset) in {(g.partition, g.offset) for g in got[20:]}
    }
    assert redelivered == {2}
    engine.close()
    storage.close()


@pytest.mark.parametrize(("option", "reserved"), [("", True), ("?preallocate_bytes=0", False)])
def test_native_url_sets_the_segment_reserve(tmp_path: Path, option: str, reserved: bool) -> None:
    with mqkit.connect(f"native://{tmp_path}{option}") as mq:
        mq.declare("t")
        mq.producer().send("t", b"x" * 100)
        [active] = segment_files(tmp_path / "topics" / "t" / "0")
        size = active.stat().st_size
        assert (size == 2**20) if reserved else (0 < size < 1024)
    assert 0 < active.stat().st_size < 1024  # a clean close trims the reserve


def test_a_negative_reserve_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="preallocate_bytes"):
        Storage(tmp_path, preallocate_bytes=-1)
