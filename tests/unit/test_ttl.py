"""TTL: an absolute expiry in a reserved header; expired messages are dead-lettered."""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Iterator

import pytest

import mqkit
from mqkit.backends.memory import reset
from mqkit.message import DLQ_REASON, H_EXPIRES, Message, Record
from mqkit.policies.ttl import expires_at, is_expired


@pytest.fixture
def mq() -> Iterator[mqkit.Client]:
    name = uuid.uuid4().hex
    warnings.simplefilter("ignore")
    client = mqkit.connect(f"memory://{name}")
    try:
        yield client
    finally:
        client.close()
        reset(name)


def test_expires_at() -> None:
    assert expires_at(None) is None
    assert expires_at(5.0, now=100.0) == 105.0
    before = time.time()
    at = expires_at(2.0)
    assert at is not None
    assert before + 2.0 <= at <= time.time() + 2.0


def test_is_expired_boundaries() -> None:
    rec = Record(None, b"", {H_EXPIRES: repr(100.0)})
    assert not is_expired(rec, now=99.999)
    assert is_expired(rec, now=100.0)
    assert is_expired(rec, now=101.0)
    assert not is_expired(Record(None, b"", {}), now=1e12)


def test_expiry_survives_record_round_trip() -> None:
    m = Message(id="a", topic="t", value=b"v", timestamp=1.0, expires_at=123.25)
    back = Message.from_record("t", m.to_record())
    assert back.expires_at == 123.25
    assert back.expired(now=123.25)
    assert not back.expired(now=123.0)
    assert H_EXPIRES not in back.headers


def test_send_ttl_sets_expiry(mq: mqkit.Client) -> None:
    mq.declare("t", groups=["default"])
    before = time.time()
    mq.producer().send("t", b"x", ttl=60.0)
    [d] = list(mq.consumer("t").iter(timeout=0.5))
    assert d.message.expires_at is not None
    assert before + 60.0 <= d.message.expires_at <= time.time() + 60.0
    d.ack()


def test_policy_ttl_is_the_default_and_send_ttl_overrides(mq: mqkit.Client) -> None:
    mq.declare("t", groups=["default"])
    p = mq.producer(policy=mqkit.Policy(ttl=100.0))
    now = time.time()
    p.send("t", b"policy")
    p.send("t", b"explicit", ttl=5.0)
    got = {d.message.value: d for d in mq.consumer("t").iter(timeout=0.5)}
    e1 = got[b"policy"].message.expires_at
    e2 = got[b"explicit"].message.expires_at
    assert e1 is not None
    assert e2 is not None
    assert e1 >= now + 100.0
    assert e2 < now + 100.0
    for d in got.values():
        d.ack()


def test_expired_message_goes_to_dlq_not_to_handler(mq: mqkit.Client) -> None:
    mq.declare("t", groups=["default"])
    p = mq.producer()
    p.send("t", b"short", ttl=0.05, id="short-lived")
    p.send("t", b"long", ttl=60.0, id="long-lived")
    time.sleep(0.2)
    seen: list[str] = []
    c = mq.consumer("t")
    stats = c.run(lambda m: seen.append(m.id), idle_timeout=0.5)
    assert seen == ["long-lived"]
    assert stats.dead_lettered == 1
    dead = list(mq.consumer("t.dlq").iter(timeout=0.5))
    assert [d.message.id for d in dead] == ["short-lived"]
    assert dead[0].message.headers[DLQ_REASON] == "expired"
    assert dead[0].message.expires_at is None  # readable in the DLQ, not expired again
    assert dead[0].message.value == b"short"


def test_expired_message_is_dead_lettered_by_iter_too(mq: mqkit.Client) -> None:
    mq.declare("t", groups=["default"])
    mq.producer().send("t", b"x", ttl=0.05)
    time.sleep(0.2)
    assert list(mq.consumer("t").iter(timeout=0.5)) == []
    dead = list(mq.consumer("t.dlq").iter(timeout=0.5))
    assert len(dead) == 1
    assert dead[0].message.headers[DLQ_REASON] == "expired"
