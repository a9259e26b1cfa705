"""The queue engine on MemoryLog: groups, leases, ordering, delay, prefetch, stats."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator

import pytest

from mqkit.broker.engine import Delivered, Engine
from mqkit.broker.log import MemoryLog
from mqkit.errors import Closed, ConfigError
from mqkit.message import H_DELIVER_AT, H_TS, Record


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine(MemoryLog)
    yield e
    e.close()


def rec(value: str, key: str | None = None, **headers: str) -> Record:
    return Record(key, value.encode(), dict(headers))


def values(got: list[Delivered]) -> list[str]:
    return [d.record.value.decode() for d in got]


def key_for_partition(p: int, n: int) -> str:
    return next(f"k{i}" for i in range(1000) if zlib.crc32(f"k{i}".encode()) % n == p)


def test_group_gets_only_messages_after_its_creation(engine: Engine) -> None:
    engine.declare("t")
    engine.publish("t", [rec("before")], durable=False)
    engine.declare("t", groups=["g"])
    engine.publish("t", [rec("after")], durable=False)
    m = engine.join("t", "g", ordered=False, prefetch=10)
    assert values(engine.fetch(m, 10, 0.1)) == ["after"]
    # a group created by its first member starts at the end too
    late = engine.join("t", "late", ordered=False, prefetch=10)
    assert engine.fetch(late, 10, 0.05) == []
    engine.publish("t", [rec("latest")], durable=False)
    assert values(engine.fetch(late, 10, 0.5)) == ["latest"]


def test_two_groups_both_get_everything(engine: Engine) -> None:
    engine.declare("t", partitions=3, groups=["a", "b"])
    engine.publish("t", [rec(str(i)) for i in range(9)], durable=False)
    for g in ("a", "b"):
        m = engine.join("t", g, ordered=False, prefetch=100)
        assert sorted(values(engine.fetch(m, 100, 0.1)), key=int) == [str(i) for i in range(9)]


def test_members_of_one_group_share(engine: Engine) -> None:
    engine.declare("t", partitions=2, groups=["g"])
    engine.publish("t", [rec(str(i)) for i in range(10)], durable=False)
    m1 = engine.join("t", "g", ordered=False, prefetch=100)
    m2 = engine.join("t", "g", ordered=False, prefetch=100)
    first = engine.fetch(m1, 4, 0.1)
    second = engine.fetch(m2, 100, 0.1)
    assert len(first) == 4
    assert len(second) == 6
    a, b = set(values(first)), set(values(second))
    assert not a & b
    assert a | b == {str(i) for i in range(10)}
    assert engine.fetch(m1, 100, 0.05) == []


def test_acked_is_never_delivered_again(engine: Engine) -> None:
    engine.declare("t", groups=["g"])
    engine.publish("t", [rec("x")], durable=False)
    m = engine.join("t", "g", ordered=False, prefetch=10)
    [d] = engine.fetch(m, 10, 0.1)
    engine.ack(m, d.partition, d.offset)
    engine.ack(m, d.partition, d.offset)  # idempotent
    engine.leave(m)
    m2 = engine.join("t", "g", ordered=False, prefetch=10)
    assert engine.fetch(m2, 10, 0.05) == []


def test_unacked_redelivered_on_leave_with_attempt_plus_one(engine: Engine) -> None:
    engine.declare("t", groups=["g"])
    engine.publish("t", [rec("x"), rec("y")], durable=False)
    m1 = engine.join("t", "g", ordered=False, prefetch=10)
    got = engine.fetch(m1, 10, 0.1)
    assert [d.attempt for d in got] == [1, 1]
    engine.ack(m1, got[1].partition, got[1].offset)
    engine.leave(m1)
    m2 = engine.join("t", "g", ordered=False, prefetch=10)
    [again] = engine.fetch(m2, 10, 0.5)
    assert (values([again]), again.attempt, again.offset) == (["x"], 2, got[0].offset)
    engine.leave(m2)
    m3 = engine.join("t", "g", ordered=False, prefetch=10)
    assert engine.fetch(m3, 10, 0.5)[0].attempt == 3


def test_nack_redelivers_after_delay(engine: Engine) -> None:
    engine.declare("t", groups=["g"])
    engine.publish("t", [rec("x")], durable=False)
    m = engine.join("t", "g", ordered=False, prefetch=10)
    [d] = engine.fetch(m, 10, 0.1)
    engine.nack(m, d.partition, d.offset, delay=0.3)
    assert engine.fetch(m, 10, 0.0) == []
    [again] = engine.fetch(m, 10, 5.0)
    assert again.offset == d.offset
    assert again.attempt == 2


def test_session_timeout_evicts_a_silent_member() -> None:
    engine = Engine(MemoryLog, session_timeout=0.3)
    try:
        engine.declare("t", groups=["g"])
        engine.publish("t", [rec("x")], durable=False)
        silent = engine.join("t", "g", ordered=False, prefetch=10)
        [d] = engine.fetch(silent, 10, 0.1)
        alive = engine.join("t", "g", ordered=False, prefetch=10)
        assert engine.fetch(alive, 10, 0.05) == []  # still leased to the silent member
        for _ in range(4):
            time.sleep(0.1)
            engine.heartbeat(alive)
        [again] = engine.fetch(alive, 10, 1.0)
        assert (again.offset, again.attempt) == (d.offset, 2)
        with pytest.raises(Closed, match="evicted"):
            engine.heartbeat(silent)
        with pytest.raises(Closed):
            engine.ack(silent, d.partition, d.offset)
        with pytest.raises(Closed):
            engine.fetch(silent, 1, 0.0)
    finally:
        engine.close()


def test_heartbeat_keeps_a_member_alive() -> None:
    engine = Engine(MemoryLog, session_timeout=0.3)
    try:
        engine.declare("t", groups=["g"])
        engine.publish("t", [rec("x")], durable=False)
        busy = engine.join("t", "g", ordered=False, prefetch=10)
        [d] = engine.fetch(busy, 10, 0.1)
        other = engine.join("t", "g", ordered=False, prefetch=10)
        for _ in range(6):
            time.sleep(0.1)
            engine.heartbeat(busy)
            assert engine.fetch(other, 10, 0.0) == []
        engine.ack(busy, d.partition, d.offset)
    finally:
        engine.close()


def test_ordered_members_own_partitions(engine: Engine) -> None:
    engine.declare("t", partitions=2, groups=["g"])
    k0, k1 = key_for_partition(0, 2), key_for_partition(1, 2)
    a = engine.join("t", "g", ordered=True, prefetch=100)
    b = engine.join("t", "g", ordered=True, prefetch=100)
    engine.publish("t", [rec(f"{k}-{i}", k) for i in range(3) for k in (k0, k1)], durable=False)
    got_a = engine.fetch(a, 100, 0.1)
    got_b = engine.fetch(b, 100, 0.1)
    assert {d.partition for d in got_a} == {0}
    assert {d.partition for d in got_b} == {1}
    assert values(got_a) == [f"{k0}-{i}" for i in range(3)]
    assert values(got_b) == [f"{k1}-{i}" for i in range(3)]


def test_partition_moves_only_after_the_previous_owner_settles(engine: Engine) -> None:
    engine.declare("t", partitions=2, groups=["g"])
    k1 = key_for_partition(1, 2)
    a = engine.join("t", "g", ordered=True, prefetch=100)  # owns both partitions
    engine.publish("t", [rec("first", k1), rec("second", k1)], durable=False)
    [held] = engine.fetch(a, 1, 0.1)
    assert values([held]) == ["first"]
    b = engine.join("t", "g", ordered=True, prefetch=100)  # partition 1 is now b's
    assert engine.fetch(b, 100, 0.05) == []  # ...but a still holds one of it
    assert engine.fetch(a, 100, 0.05) == []  # and a no longer owns it
    engine.ack(a, held.partition, held.offset)
    assert values(engine.fetch(b, 100, 0.5)) == ["second"]


def test_ordered_redelivery_keeps_order(engine: Engine) -> None:
    engine.declare("t", groups=["g"])
    engine.publish("t", [rec(str(i), "k") for i in range(4)], durable=False)
    m = engine.join("t", "g", ordered=True, prefetch=100)
    got = engine.fetch(m, 2, 0.1)
    assert values(got) == ["0", "1"]
    engine.nack(m, got[1].partition, got[1].offset)
    engine.nack(m, got[0].partition, got[0].offset, delay=0.2)
    # the oldest redelivery is not due yet: nothing newer may overtake it
    assert engine.fetch(m, 100, 0.0) == []
    again = engine.fetch(m, 100, 2.0)
    assert values(again) == ["0", "1", "2", "3"]
    assert [d.attempt for d in again] == [2, 2, 1, 1]


def test_ordered_member_leaving_hands_partitions_over(engine: Engine) -> None:
    engine.declare("t", partitions=2, groups=["g"])
    a = engine.join("t", "g", ordered=True, prefetch=100)
    b = engine.join("t", "g", ordered=True, prefetch=100)
    engine.publish("t", [rec(f"v{i}", f"k{i}") for i in range(20)], durable=False)
    engine.fetch(a, 100, 0.1)
    engine.leave(a)
    got = engine.fetch(b, 100, 0.5)
    assert len(got) == 20


def test_delayed_records(engine: Engine) -> None:
    engine.declare("t", groups=["g"])
    later = repr(time.time() + 0.3)
    engine.publish("t", [rec("delayed", **{H_DELIVER_AT: later}), rec("now")], durable=False)
    m = engine.join("t", "g", ordered=False, prefetch=10)
    assert values(engine.fetch(m, 10, 0.0)) == ["now"]
    assert engine.fetch(m, 10, 0.0) == []
    assert time.time() < float(later)
    got = engine.fetch(m, 10, 5.0)
    assert values(got) == ["delayed"]
    assert time.time() >= float(later)


def test_past_deliver_at_is_delivered_at_once(engine: Engine) -> None:
    engine.declare("t", groups=["g"])
    engine.publish("t", [rec("old", **{H_DELIVER_AT: repr(time.time() - 5)})], durable=False)
    m = engine.join("t", "g", ordered=False, prefetch=10)
    assert values(engine.fetch(m, 10, 0.0)) == ["old"]


def test_prefetch_bounds_in_flight(engine: Engine) -> None:
    engine.declare("t", groups=["g"])
    engine.publish("t", [rec(str(i)) for i in range(5)], durable=False)
    m = engine.join("t", "g", ordered=False, prefetch=2)
    got = engine.fetch(m, 100, 0.1)
    assert len(got) == 2
    assert engine.fetch(m, 100, 0.05) == []
    engine.ack(m, got[0].partition, got[0].offset)
    assert len(engine.fetch(m, 100, 0.1)) == 1
    engine.nack(m, got[1].partition, got[1].offset)
    assert len(engine.fetch(m, 100, 0.1)) == 1
    assert engine.fetch(m, 100, 0.05) == []


def test_fetch_wakes_up_on_publish(engine: Engine) -> None:
    import threading

    engine.declare("t", groups=["g"])
    m = engine.join("t", "g", ordered=False, prefetch=10)
    timer = threading.Timer(0.2, lambda: engine.publish("t", [rec("late")], durable=False))
    timer.start()
    try:
        assert values(engine.fetch(m, 10, 10.0)) == ["late"]
    finally:
        timer.join()


def test_stats(engine: Engine) -> None:
    engine.declare("t", groups=["g"])
    engine.publish("t", [rec(str(i), **{H_TS: repr(1000.0 + i)}) for i in range(5)], durable=False)
    m = engine.join("t", "g", ordered=False, prefetch=100)
    got = engine.fetch(m, 3, 0.1)
    engine.ack(m, got[1].partition, got[1].offset)  # out of order: offset 0 still pending
    [s] = engine.stats("t", "g")
    assert (s.partition, s.backlog, s.in_flight) == (0, 4, 2)
    assert s.oldest_timestamp == 1000.0
    engine.ack(m, got[0].partition, got[0].offset)
    [s] = engine.stats("t", "g")
    assert (s.backlog, s.in_flight, s.oldest_timestamp) == (3, 1, 1002.0)
    with pytest.raises(ConfigError, match="group"):
        engine.stats("t", "nope")


def test_declare_is_idempotent_and_keeps_partitions(engine: Engine) -> None:
    engine.declare("t", partitions=3)
    engine.declare("t", partitions=3)
    engine.declare("t")
    assert engine.topics() == {"t": 3}
    with pytest.raises(ConfigError, match="already has 3 partitions"):
        engine.declare("t", partitions=4)
    with pytest.raises(ConfigError, match="partitions"):
        engine.declare("u", partitions=0)


def test_unknown_topic(engine: Engine) -> None:
    with pytest.raises(ConfigError, match="declare it first"):
        engine.publish("nope", [rec("x")], durable=False)
    with pytest.raises(ConfigError, match="declare it first"):
        engine.join("nope", "g", ordered=False, prefetch=1)


def test_keys_map_to_stable_partitions_and_no_key_spreads(engine: Engine) -> None:
    engine.declare("t", partitions=4)
    placed = engine.publish("t", [rec(str(i), "same") for i in range(10)], durable=False)
    assert len({p for p, _ in placed}) == 1
    assert [o for _, o in placed] == list(range(10))
    # Keyless: one partition per call (one append, one fsync), the next call the next one.
    calls = [
        engine.publish("t", [rec(f"{c}.{i}") for i in range(5)], durable=False) for c in range(4)
    ]
    assert all(len({p for p, _ in placed}) == 1 for placed in calls)
    assert {placed[0][0] for placed in calls} == {0, 1, 2, 3}
    # Keys and no keys in one call: keyed ones still follow their key.
    mixed = engine.publish("t", [rec("a", "same"), rec("b"), rec("c", "same")], durable=False)
    assert mixed[0][0] == mixed[2][0] == placed[0][0]


def test_delete_topic(engine: Engine) -> None:
    engine.declare("t", groups=["g"])
    m = engine.join("t", "g", ordered=False, prefetch=1)
    engine.delete_topic("t")
    assert "t" not in engine.topics()
    with pytest.raises(Closed):
        engine.fetch(m, 1, 0.0)


def test_closed_engine_refuses_work() -> None:
    engine = Engine(MemoryLog)
    engine.declare("t")
    engine.close()
    engine.close()
    with pytest.raises(Closed):
        engine.publish("t", [rec("x")], durable=False)
    with pytest.raises(Closed):
        engine.declare("u")
