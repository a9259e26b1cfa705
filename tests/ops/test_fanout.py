"""fanout / drain / finish on memory:// and native://: counts, per-key order, resume."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

import mqkit
from mqkit import ops
from mqkit.errors import ConfigError
from mqkit.message import DLQ_REASON, DLQ_TOPIC
from tests.ops.helpers import Seen, fill, read_all

pytestmark = pytest.mark.timeout(120)


def test_fanout_moves_every_message_in_key_order(mq: mqkit.Client) -> None:
    mq.declare("orders", partitions=3, groups=["billing"])
    sent = fill(mq, "orders", 5000)

    result = ops.fanout(mq, "orders", group="billing", idle_timeout=0.5)

    assert result.plan.lanes == 30  # 10 x 3 partitions
    assert result.plan.backlog == 5000
    assert result.moved == 5000
    assert ops.lag(mq, "orders", "billing").backlog == 0
    assert ops.lag(mq, "orders.fanout", "billing").backlog == 5000
    seen = Seen()
    stats = ops.drain(mq, "orders", seen, workers=10, group="billing", idle_timeout=0.5)
    assert stats.handled == 5000
    assert Counter(seen.ids) == Counter(sent)  # counts in = counts out, no duplicates
    assert seen.in_key_order()
    # records keep id, key and headers
    m = next(m for m in seen.messages if m.id == "m7")
    assert (m.key, m.headers["seq"], m.headers["kind"]) == ("user-7", "7", "odd")


def test_factor_and_explicit_partitions(mq: mqkit.Client) -> None:
    mq.declare("a", partitions=2, groups=["g"])
    mq.declare("b", partitions=2, groups=["g"])
    assert ops.fanout(mq, "a", group="g", factor=3, idle_timeout=0.2).plan.lanes == 6
    assert ops.fanout(mq, "b", group="g", partitions=5, idle_timeout=0.2).plan.lanes == 5
    with pytest.raises(ConfigError, match="already a fanout topic"):
        ops.fanout(mq, "a.fanout", group="g")


def test_an_interrupted_fanout_resumes_without_loss(mq: mqkit.Client) -> None:
    mq.declare("jobs", partitions=2, groups=["w"])
    sent = fill(mq, "jobs", 3000)
    first = ops.fanout(mq, "jobs", group="w", limit=1000, batch_size=250, idle_timeout=0.3)
    assert first.moved == 1000
    assert ops.lag(mq, "jobs", "w").backlog == 2000
    # The second run keeps the lanes of the first (a different factor cannot re-shape them).
    second = ops.fanout(mq, "jobs", group="w", factor=7, idle_timeout=0.3)
    assert second.plan.lanes == 20
    assert second.moved == 2000
    seen = read_all(mq, "jobs.fanout", "w")
    assert sorted(seen.ids) == sorted(sent)
    assert seen.in_key_order()


def test_stop_event_ends_the_move_cleanly(mq: mqkit.Client) -> None:
    mq.declare("s", groups=["g"])
    fill(mq, "s", 2000)
    stop = threading.Event()
    moved: list[int] = []

    def progress(r: ops.MoveResult) -> None:
        moved.append(r.moved)
        if r.moved >= 500:
            stop.set()

    result = ops.fanout(mq, "s", group="g", batch_size=100, on_progress=progress, stop=stop)
    assert 500 <= result.moved < 2000
    assert ops.lag(mq, "s", "g").backlog == 2000 - result.moved
    assert ops.lag(mq, "s.fanout", "g").backlog == result.moved  # acked = confirmed, no more


def test_new_messages_arriving_during_the_move_are_moved_too(mq: mqkit.Client) -> None:
    mq.declare("live", groups=["g"])
    fill(mq, "live", 1000, prefix="old")
    started = threading.Event()

    def produce() -> None:
        started.wait(10)
        fill(mq, "live", 500, prefix="new")

    t = threading.Thread(target=produce)
    t.start()
    result = ops.fanout(
        mq, "live", group="g", batch_size=100, idle_timeout=1.0, on_start=lambda _: started.set()
    )
    t.join()
    assert result.moved == 1500


def test_finish_refuses_until_drained_then_keeps_dead_letters_and_deletes(
    mq: mqkit.Client,
) -> None:
    mq.declare("orders", groups=["billing"])
    fill(mq, "orders", 200)
    ops.fanout(mq, "orders", group="billing", idle_timeout=0.3)

    not_yet = ops.finish_fanout(mq, "orders", group="billing")
    assert not not_yet.drained
    assert not_yet.remaining == 200
    assert "let the workers finish" in not_yet.note

    def handler(m: mqkit.Message) -> None:
        if m.id in ("m3", "m4"):
            raise mqkit.Reject("poison")

    ops.drain(mq, "orders", handler, workers=3, group="billing", idle_timeout=0.3)
    done = ops.finish_fanout(mq, "orders", group="billing", idle_timeout=0.3)
    assert done.drained
    assert done.dead_letters_moved == 2
    assert done.deleted == ["orders.fanout", "orders.fanout.dlq"]
    dead = read_all(mq, "orders.dlq")
    assert sorted(dead.ids) == ["m3", "m4"]
    assert {m.headers[DLQ_TOPIC] for m in dead.messages} == {"orders"}  # replay goes to orders
    assert {m.headers[DLQ_REASON] for m in dead.messages} == {"rejected"}
    assert "orders.fanout" not in _topics(mq)
    again = ops.finish_fanout(mq, "orders", group="billing")
    assert again.drained
    assert again.note.startswith("nothing to finish")


def test_expired_messages_end_in_the_dlq_and_replay_brings_them_back(mq: mqkit.Client) -> None:
    mq.declare("t", groups=["g"])
    fill(mq, "t", 100, ttl=0.2)
    fill(mq, "t", 100, prefix="keep")
    time.sleep(0.3)
    ops.fanout(mq, "t", group="g", idle_timeout=0.3)
    seen = Seen()
    stats = ops.drain(mq, "t", seen, workers=4, group="g", idle_timeout=0.3)
    assert stats.dead_lettered == 100
    assert ops.finish_fanout(mq, "t", group="g", idle_timeout=0.3).dead_letters_moved == 100
    back = ops.replay(mq, "t.dlq", reason="expired", idle_timeout=0.3)
    assert back.by_target == {"t": 100}
    again = read_all(mq, "t", "g")
    assert sorted(again.ids) == sorted(f"m{i}" for i in range(100))


def _topics(mq: mqkit.Client) -> list[str]:
    engine = getattr(mq.adapter, "_engine", None)
    return list(engine.topics()) if engine is not None else []
