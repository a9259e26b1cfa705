"""replay on memory:// and native://: counts, filters, dry run, limit, plain topics."""

from __future__ import annotations

import time

import pytest

import mqkit
from mqkit import ops
from mqkit.errors import ConfigError
from mqkit.message import DLQ_REASON, Record
from mqkit.ops.select import Selection, parse_when
from mqkit.policies.deadletter import H_DEAD_LETTERED, Reason, dead_letter_record
from tests.ops.helpers import read_all

pytestmark = pytest.mark.timeout(120)


def dead_letters(
    mq: mqkit.Client,
    topic: str,
    n: int,
    *,
    reason: Reason = Reason.FAILED,
    prefix: str = "d",
    at: float | None = None,
    group: str = "billing",
) -> list[str]:
    """Write ``n`` dead letters of ``topic`` straight into ``topic.dlq`` (as consumers do)."""
    mq.declare(topic, groups=["g"])
    records = []
    for i in range(n):
        original = mqkit.Message(
            id=f"{prefix}{i}",
            topic=topic,
            value=b"v",
            key=f"user-{i % 5}",
            headers={"seq": str(i), "tenant": "acme" if i % 2 else "globex"},
            timestamp=time.time(),
        ).to_record()
        rec = dead_letter_record(
            original, topic=topic, group=group, reason=reason, error="boom", attempts=5
        )
        if at is not None:
            rec.headers[H_DEAD_LETTERED] = repr(at)
        records.append(rec)
    out = mq.adapter.publish(topic + ".dlq", records, confirm=True, persistent=False)
    assert not [o for o in out if isinstance(o, BaseException)]
    return [r.id for r in records]


def test_replay_moves_every_dead_letter_back_without_dlq_headers(mq: mqkit.Client) -> None:
    ids = dead_letters(mq, "orders", 1200)
    result = ops.replay(mq, "orders.dlq", idle_timeout=0.3)
    assert result.moved == 1200
    assert result.by_target == {"orders": 1200}
    back = read_all(mq, "orders", "g")
    assert sorted(back.ids) == sorted(ids)
    assert back.in_key_order()
    m = back.messages[0]
    assert not [h for h in m.headers if h.startswith("mqkit_dlq")]
    assert set(m.headers) == {"seq", "tenant"}
    assert ops.lag(mq, "orders", "g").dlq == 0


def test_reason_header_and_key_filters_leave_the_rest_untouched(mq: mqkit.Client) -> None:
    dead_letters(mq, "t", 20, reason=Reason.EXPIRED, prefix="exp")
    dead_letters(mq, "t", 10, reason=Reason.FAILED, prefix="fail")
    result = ops.replay(
        mq, "t.dlq", reason="expired", headers={"tenant": "acm*"}, key="user-[13]", idle_timeout=0.3
    )
    # expired, odd i (tenant acme), key user-1 or user-3: i in 1, 3, 11, 13
    assert result.moved == 4
    assert result.skipped == 26
    back = read_all(mq, "t", "g")
    assert sorted(back.ids) == ["exp1", "exp11", "exp13", "exp3"]
    rest = read_all(mq, "t.dlq")
    assert len(rest.ids) == 26  # all still there, untouched
    assert {m.headers[DLQ_REASON] for m in rest.messages} == {"expired", "failed"}


def test_time_range_on_the_dead_letter_time(mq: mqkit.Client) -> None:
    now = time.time()
    dead_letters(mq, "t", 5, prefix="old", at=now - 7200)
    dead_letters(mq, "t", 5, prefix="new", at=now - 60)
    recent = ops.replay(mq, "t.dlq", since=parse_when("1h"), dry_run=True, idle_timeout=0.3)
    assert (recent.moved, recent.skipped) == (5, 5)
    old = ops.replay(mq, "t.dlq", until=now - 3600, idle_timeout=0.3)
    assert old.moved == 5
    assert sorted(read_all(mq, "t", "g").ids) == [f"old{i}" for i in range(5)]
    # the send time is "now" for all of them
    by_send = ops.replay(mq, "t.dlq", since=now - 600, time_field="sent", idle_timeout=0.3)
    assert by_send.moved == 5


def test_dry_run_moves_nothing_and_limit_stops(mq: mqkit.Client) -> None:
    dead_letters(mq, "t", 50)
    dry = ops.replay(mq, "t.dlq", dry_run=True, idle_timeout=0.3)
    assert dry.moved == 50
    assert dry.dry_run
    assert ops.lag(mq, "t", "g").dlq == 50
    some = ops.replay(mq, "t.dlq", limit=7, batch_size=3, idle_timeout=0.3)
    assert some.moved == 7
    assert ops.lag(mq, "t", "g").dlq == 43
    assert ops.lag(mq, "t", "g").backlog == 7


def test_replay_from_a_plain_topic_to_another(mq: mqkit.Client) -> None:
    mq.declare("events", groups=["audit"])
    mq.declare("events-retry", groups=["g"])
    p = mq.producer(mqkit.Policy(persistent=mq.capabilities.supports("persistent")))
    for i in range(30):
        p.send("events", f"e{i}", key=f"k{i % 3}", id=f"e{i}")
    result = ops.replay(
        mq, "events", group="audit", target="events-retry", key="k1", idle_timeout=0.3
    )
    assert result.moved == 10
    assert sorted(read_all(mq, "events-retry", "g").ids) == sorted(f"e{i}" for i in range(1, 30, 3))
    with pytest.raises(ConfigError, match="not a dead-letter queue"):
        ops.replay(mq, "events")
    with pytest.raises(ConfigError, match="loop"):
        ops.replay(mq, "events", target="events")


def test_where_callable_and_selection_object(mq: mqkit.Client) -> None:
    dead_letters(mq, "t", 10)
    only_even = Selection(where=lambda m: int(m.headers["seq"]) % 2 == 0)
    assert ops.replay(mq, "t.dlq", select=only_even, idle_timeout=0.3).moved == 5
    with pytest.raises(ConfigError, match="either select"):
        ops.replay(mq, "t.dlq", select=only_even, reason="failed")


def test_a_full_scan_window_is_reported(mq: mqkit.Client) -> None:
    dead_letters(mq, "t", 30)
    result = ops.replay(mq, "t.dlq", key="nobody", window=10, batch_size=5, idle_timeout=0.3)
    assert result.moved == 0
    assert result.window_full


def test_selection_unit() -> None:
    rec = Record(
        "user-42",
        b"x",
        {"x-mqkit-ts": "100.0", H_DEAD_LETTERED: "200.0", DLQ_REASON: "expired", "h": "v1"},
    )
    assert Selection().matches("t", rec)
    assert Selection(since=150).matches("t", rec)
    assert not Selection(since=150, time_field="sent").matches("t", rec)
    assert Selection(until=201, headers={"h": "v?"}, key="user-*").matches("t", rec)
    assert not Selection(headers={"missing": "*"}).matches("t", rec)
    assert not Selection(reason="failed").matches("t", rec)
    with pytest.raises(ConfigError):
        Selection(since=10, until=5)
    assert parse_when("90s", now=1000.0) == 910.0
    assert parse_when("2026-01-01T00:00:00Z") == 1767225600.0
    with pytest.raises(ConfigError, match="since"):
        parse_when("yesterday-ish")


def test_real_dead_letters_carry_their_dead_letter_time(mq: mqkit.Client) -> None:
    mq.declare("pay", groups=["g"])
    mq.producer(mqkit.Policy(persistent=False)).send("pay", "poison", id="p1")
    c = mq.consumer("pay", group="g")
    for d in c.iter(timeout=0.3):
        d.reject("bad")
    c.close()
    assert ops.replay(mq, "pay.dlq", until=time.time() - 60, idle_timeout=0.3).moved == 0
    assert ops.replay(mq, "pay.dlq", since=time.time() - 60, idle_timeout=0.3).moved == 1
    back = read_all(mq, "pay", "g")
    assert back.ids == ["p1"]
