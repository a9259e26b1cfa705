"""Delivery settling: the same way twice is fine, another way after settling raises."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable, Iterator

import pytest

import mqkit
from mqkit.backends.memory import reset
from mqkit.delivery import Delivery, Settled
from mqkit.errors import DeliveryStateError
from mqkit.message import DLQ_ATTEMPTS, DLQ_ERROR, DLQ_GROUP, DLQ_REASON, DLQ_TOPIC

TOPIC = "orders"


@pytest.fixture
def mq() -> Iterator[mqkit.Client]:
    name = uuid.uuid4().hex
    warnings.simplefilter("ignore")
    client = mqkit.connect(f"memory://{name}")
    client.declare(TOPIC, groups=["g"])
    try:
        yield client
    finally:
        client.close()
        reset(name)


def _one(mq: mqkit.Client, group: str = "g") -> tuple[mqkit.Consumer, Delivery]:
    c = mq.consumer(TOPIC, group=group)
    got = next(iter(c.iter(timeout=2.0)))
    return c, got


def _drain(mq: mqkit.Client, topic: str, group: str = "default") -> list[Delivery]:
    c = mq.consumer(topic, group=group)
    out = list(c.iter(timeout=0.3))
    for d in out:
        d.ack()
    c.close()
    return out


def test_ack_twice_is_fine_and_not_redelivered(mq: mqkit.Client) -> None:
    mq.producer().send(TOPIC, b"x", id="a")
    c, d = _one(mq)
    assert d.attempt == 1
    d.ack()
    d.ack()
    assert d.state is Settled.ACKED
    c.close()
    assert _drain(mq, TOPIC, "g") == []


@pytest.mark.parametrize("second", ["nack", "nack_no_requeue", "reject"])
def test_ack_then_other_settlement_raises(mq: mqkit.Client, second: str) -> None:
    mq.producer().send(TOPIC, b"x")
    c, d = _one(mq)
    d.ack()
    settle: Callable[[], None] = {
        "nack": d.nack,
        "nack_no_requeue": lambda: d.nack(requeue=False),
        "reject": lambda: d.reject("late"),
    }[second]
    with pytest.raises(DeliveryStateError, match="already acked"):
        settle()
    assert d.state is Settled.ACKED
    c.close()
    assert _drain(mq, TOPIC + ".dlq") == []


def test_nack_then_ack_raises(mq: mqkit.Client) -> None:
    mq.producer().send(TOPIC, b"x")
    _, d = _one(mq)
    d.nack()
    d.nack()  # same way again: no-op
    with pytest.raises(DeliveryStateError, match="already nacked"):
        d.ack()


def test_nack_redelivers_with_attempt_plus_one(mq: mqkit.Client) -> None:
    mq.producer().send(TOPIC, b"x", id="n1")
    c, d = _one(mq)
    d.nack()
    again = next(iter(c.iter(timeout=2.0)))
    assert again.message.id == "n1"
    assert again.attempt == 2
    again.ack()


def test_reject_dead_letters_with_reason(mq: mqkit.Client) -> None:
    mq.producer().send(TOPIC, b"poison", id="p1", key="k", headers={"h": "v"})
    c, d = _one(mq)
    d.reject("cannot parse")
    d.reject("again")  # same way: no-op, not dead-lettered twice
    with pytest.raises(DeliveryStateError):
        d.ack()
    c.close()
    [dead] = _drain(mq, TOPIC + ".dlq")
    m = dead.message
    assert (m.id, m.key, m.value) == ("p1", "k", b"poison")
    assert m.headers["h"] == "v"
    assert m.headers[DLQ_REASON] == "rejected"
    assert m.headers[DLQ_ERROR] == "cannot parse"
    assert m.headers[DLQ_TOPIC] == TOPIC
    assert m.headers[DLQ_GROUP] == "g"
    assert m.headers[DLQ_ATTEMPTS] == "1"
    assert _drain(mq, TOPIC, "g") == []


def test_nack_without_requeue_dead_letters(mq: mqkit.Client) -> None:
    mq.producer().send(TOPIC, b"x", id="n2")
    c, d = _one(mq)
    d.nack(requeue=False)
    assert d.state is Settled.REJECTED
    c.close()
    [dead] = _drain(mq, TOPIC + ".dlq")
    assert dead.message.id == "n2"
    assert dead.message.headers[DLQ_REASON] == "rejected"
    assert _drain(mq, TOPIC, "g") == []


def test_unsettled_delivery_is_redelivered_after_close(mq: mqkit.Client) -> None:
    mq.producer().send(TOPIC, b"x", id="u1")
    c, d = _one(mq)
    assert d.state is Settled.PENDING
    c.close()
    [again] = _drain(mq, TOPIC, "g")
    assert again.message.id == "u1"
    assert again.attempt == 2


def test_repr_names_the_message(mq: mqkit.Client) -> None:
    mq.producer().send(TOPIC, b"x", id="r1", key="kk")
    _, d = _one(mq)
    assert "id=r1" in repr(d)
    assert "key=kk" in repr(d)
    assert "pending" in repr(d)


@pytest.mark.timeout(30)
def test_iter_times_out_when_the_caller_holds_the_window_and_the_link_is_down(
    mq: mqkit.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing can arrive while the caller holds every slot: the timeout must still end it.

    (A rejoining subscription does not count as idle -- but only while there is room
    for what it would bring.)
    """
    mq.producer().send_many(TOPIC, [b"a", b"b", b"c"])
    c = mq.consumer(TOPIC, group="g", policy=mqkit.Policy(prefetch=2))
    held = []
    it = c.iter(timeout=0.5)
    held.append(next(it))
    monkeypatch.setattr(type(c._sub), "ready", property(lambda self: False))
    held.append(next(it))  # the window (2) is now full and the link "rejoining"
    with pytest.raises(StopIteration):
        next(it)
    assert [d.message.value for d in held] == [b"a", b"b"]
    for d in held:
        d.ack()
    c.close()
