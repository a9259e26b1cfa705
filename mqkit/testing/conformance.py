"""The conformance suite: the contract C1-C14, run unchanged over every backend.

A backend's test module subclasses :class:`ConformanceSuite` and provides the
URL (and, where it can, hooks that stop, kill and restart the broker)::

    class TestMyBroker(ConformanceSuite):
        def make_url(self) -> str:
            return "mybroker://127.0.0.1:1234"

Features a backend declares unsupported (``mq.capabilities``) are tested for a
clear :class:`~mqkit.errors.Unsupported` (or the documented warning), never
skipped.  Timing knobs (``settle``) let slow real brokers pass without making
the in-process ones slow; no test asserts an upper bound on time.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

import mqkit
from mqkit.capabilities import Support
from mqkit.client import Client
from mqkit.delivery import Delivery
from mqkit.errors import ConfigError, MessageTooLarge, MQError, Unsupported
from mqkit.message import DLQ_ATTEMPTS, DLQ_ERROR, DLQ_GROUP, DLQ_REASON, DLQ_TOPIC, Message
from mqkit.ops.replay import replay
from mqkit.policy import Policy
from mqkit.testing.hooks import BrokerHooks

__all__ = ["ConformanceSuite", "Order"]


class Order(BaseModel):
    id: int
    item: str


class _Crash(BaseException):
    """Simulates a consumer dying at a chosen point (not an Exception: nothing catches it)."""


class ConformanceSuite(BrokerHooks):
    """C1-C14.  Subclasses implement :meth:`make_url` and may override the hooks."""

    #: seconds a consumer waits for more before deciding the topic is drained
    settle: ClassVar[float] = 1.0
    #: partitions used where a test wants several
    partitions: ClassVar[int] = 4
    #: seconds of quiet that end the read of what survived a broker restart (C3)
    recover_settle: ClassVar[float] = 1.0

    # -- fixtures (the hooks and ``url`` come from BrokerHooks) -------------------

    @pytest.fixture
    def mq(self, url: str) -> Iterator[Client]:
        client = mqkit.connect(url)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield client
        client.close()

    @pytest.fixture
    def topic(self, mq: Client) -> str:
        name = f"c-{uuid.uuid4().hex[:10]}"
        mq.declare(name, partitions=self.partitions, groups=["g1", "g2"])
        return name

    # -- helpers -------------------------------------------------------------------

    def drain(
        self,
        mq: Client,
        topic: str,
        group: str = "g1",
        *,
        policy: Policy | None = None,
        handler: Callable[[Message], Any] | None = None,
        expect: int | None = None,
        settle: float | None = None,
    ) -> list[Message]:
        got: list[Message] = []

        def record(m: Message) -> None:
            if handler is not None:
                handler(m)
            got.append(m)

        c = mq.consumer(topic, group=group, policy=policy or Policy(backoff=(0.05, 2.0, 0.2)))
        try:
            c.run(record, idle_timeout=settle or self.settle, max_messages=expect)
        finally:
            c.close()
        return got

    def dead_letters(self, mq: Client, topic: str, expect: int | None = None) -> list[Message]:
        out: list[Message] = []
        c = mq.consumer(f"{topic}.dlq", policy=Policy(max_attempts=1))
        try:
            for d in c.iter(timeout=self.settle * 2):
                out.append(d.message)
                d.ack()
                if expect is not None and len(out) >= expect:
                    break
        finally:
            c.close()
        return out

    def caps(self, mq: Client, feature: str) -> Support:
        return mq.capabilities.level(feature)

    # -- C1 round trip ---------------------------------------------------------------

    def test_c1_round_trip_bytes_key_headers_id(self, mq: Client, topic: str) -> None:
        value = bytes(range(256)) * 4
        before = time.time()
        r = mq.producer().send(
            topic, value, key="user-42", headers={"h": "v", "trace": "é✓"}, id="order-1"
        )
        assert r.id == "order-1"
        [m] = self.drain(mq, topic, expect=1)
        assert m.value == value
        assert m.payload == value
        assert m.key == "user-42"
        assert m.headers == {"h": "v", "trace": "é✓"}
        assert m.id == "order-1"
        assert m.topic == topic
        assert before - 5 <= m.timestamp <= time.time() + 5

    def test_c1_json_text_and_model_payloads(self, mq: Client, topic: str) -> None:
        p = mq.producer()
        p.send(topic, {"id": 1, "items": [1, 2.5, None, "x"]}, key="k")
        p.send(topic, "héllo", key="k")
        p.send(topic, Order(id=7, item="book"), key="k")
        got = self.drain(mq, topic, expect=3)
        assert [m.payload for m in got] == [
            {"id": 1, "items": [1, 2.5, None, "x"]},
            "héllo",
            {"id": 7, "item": "book"},
        ]
        models: list[Order] = []

        def handle(order: Order) -> None:
            models.append(order)

        p.send(topic, Order(id=8, item="pen"))
        c = mq.consumer(topic, group="g2", policy=Policy())
        try:
            c.run(handle, idle_timeout=self.settle)
        finally:
            c.close()
        assert Order(id=8, item="pen") in models
        assert all(isinstance(o, Order) for o in models)

    # -- C2 confirm ------------------------------------------------------------------

    def test_c2_confirmed_send_is_stored(self, mq: Client, topic: str) -> None:
        receipts = mq.producer(Policy(confirm=True)).send_many(topic, [b"a", b"b", b"c"])
        assert all(r.confirmed for r in receipts)
        assert len({r.id for r in receipts}) == 3
        got = self.drain(mq, topic, expect=3)
        assert sorted(m.value for m in got) == [b"a", b"b", b"c"]

    def test_c2_send_to_unreachable_broker_raises(self, url: str) -> None:
        mq = mqkit.connect(url)
        try:
            t = f"c-{uuid.uuid4().hex[:10]}"
            mq.declare(t)
            try:
                self.stop_broker()
            except NotImplementedError:
                pytest.fail(f"{type(self).__name__} must implement stop_broker() for C2")
            with pytest.raises(MQError):
                mq.producer(Policy(confirm=True)).send(t, b"lost?")
        finally:
            with contextlib.suppress(MQError):
                mq.close()
            self.restart_broker()

    # -- C3 persistence --------------------------------------------------------------

    def test_c3_confirmed_messages_survive_broker_kill(self, url: str) -> None:
        mq = mqkit.connect(url)
        t = f"c-{uuid.uuid4().hex[:10]}"
        if self.caps(mq, "persistent") is Support.UNSUPPORTED:
            mq.declare(t)
            with pytest.warns(UserWarning, match="persistent"):
                mq.producer(Policy(persistent=True)).send(t, b"x")
            mq.close()
            return
        mq.declare(t, groups=["g1"])
        ids = [r.id for r in mq.producer().send_many(t, [f"m{i}".encode() for i in range(50)])]
        with contextlib.suppress(MQError):
            mq.close()
        self.kill_broker()
        self.restart_broker()
        mq2 = mqkit.connect(url)
        try:
            # Wait for the count, not for a quiet spell: a broker just restarted
            # may take a while before it dispatches a recovered queue.
            got = self.drain(mq2, t, expect=50, settle=self.recover_settle)
        finally:
            mq2.close()
        missing = set(ids) - {m.id for m in got}
        assert sorted(m.id for m in got) == sorted(ids), (
            f"after the restart: {len(got)} received, {len(missing)} of {len(ids)} confirmed "
            "messages missing"
        )

    # -- C4 manual ack ---------------------------------------------------------------

    def test_c4_unacked_delivery_is_redelivered_with_attempt(self, mq: Client, topic: str) -> None:
        mq.producer().send(topic, b"work", id="w-1")
        c1 = mq.consumer(topic, group="g1")
        first = next(iter(c1.iter(timeout=self.settle * 5)))
        assert first.message.id == "w-1"
        assert first.attempt == 1
        c1.close()  # not acked: must come back
        c2 = mq.consumer(topic, group="g1")
        try:
            again = next(iter(c2.iter(timeout=self.settle * 5)))
            assert again.message.id == "w-1"
            if self.caps(mq, "attempt_count") is Support.NATIVE:
                assert again.attempt == 2
            else:
                assert again.attempt >= 1
            again.ack()
        finally:
            c2.close()
        assert self.drain(mq, topic) == []

    # -- C5 retry + dead letter ------------------------------------------------------

    def test_c5_retry_with_backoff_then_dead_letter(self, mq: Client, topic: str) -> None:
        mq.producer().send(topic, b"poison", key="k", headers={"x": "1"}, id="p-1")
        times: list[float] = []

        def always_fails(m: Message) -> None:
            times.append(time.monotonic())
            raise ValueError("cannot handle p-1")

        policy = Policy(max_attempts=3, backoff=(0.2, 2.0, 5.0))
        self.drain(mq, topic, policy=policy, handler=always_fails)
        assert len(times) == 3
        # equal jitter: each wait is at least half the nominal backoff
        assert times[1] - times[0] >= 0.1
        assert times[2] - times[1] >= 0.2
        [dl] = self.dead_letters(mq, topic, expect=1)
        assert dl.id == "p-1"
        assert dl.value == b"poison"
        assert dl.key == "k"
        assert dl.headers["x"] == "1"
        assert dl.headers[DLQ_TOPIC] == topic
        assert dl.headers[DLQ_GROUP] == "g1"
        assert dl.headers[DLQ_REASON] == "failed"
        assert dl.headers[DLQ_ATTEMPTS] == "3"
        assert "ValueError: cannot handle p-1" in dl.headers[DLQ_ERROR]

    def test_c5_transient_failure_is_retried_not_dead_lettered(
        self, mq: Client, topic: str
    ) -> None:
        mq.producer().send(topic, b"flaky", id="f-1")
        calls: list[int] = []

        def flaky(m: Message) -> None:
            calls.append(1)
            if len(calls) < 2:
                raise RuntimeError("transient")

        self.drain(mq, topic, policy=Policy(backoff=(0.05, 2.0, 0.2)), handler=flaky)
        assert len(calls) == 2
        assert self.dead_letters(mq, topic) == []

    # -- C6 replay -------------------------------------------------------------------

    def test_c6_replay_moves_dead_letters_back(self, mq: Client, topic: str) -> None:
        mq.producer().send_many(topic, [b"a", b"b"])
        d = mq.consumer(topic, group="g1")
        try:
            for delivery in d.iter(timeout=self.settle * 5):
                delivery.reject("bad data")
                if d.stats.dead_lettered == 2:
                    break
        finally:
            d.close()
        result = replay(mq, f"{topic}.dlq", idle_timeout=self.settle * 2)
        assert result.moved == 2
        assert result.by_target == {topic: 2}
        got = self.drain(mq, topic, expect=2)
        assert sorted(m.value for m in got) == [b"a", b"b"]
        assert all(DLQ_REASON not in m.headers for m in got)
        assert self.dead_letters(mq, topic) == []

    # -- C7 dedupe -------------------------------------------------------------------

    def test_c7_same_id_is_handled_once(self, mq: Client, topic: str) -> None:
        p = mq.producer()
        for _ in range(3):
            p.send(topic, b"pay", id="pay-1")
        p.send(topic, b"other", id="pay-2")
        policy = Policy(dedupe="memory://", backoff=(0.05, 2.0, 0.2))
        got = self.drain(mq, topic, policy=policy)
        assert sorted(m.id for m in got) == ["pay-1", "pay-2"]

    def test_c7_crash_after_handling_before_ack_is_not_handled_again(
        self, mq: Client, topic: str
    ) -> None:
        mq.producer().send_many(topic, [b"a", b"b", b"c"])
        store = "memory://"
        policy = Policy(dedupe=store, backoff=(0.05, 2.0, 0.2))
        handled: list[str] = []
        c1 = mq.consumer(topic, group="g1", policy=policy)

        def crash(d: Delivery) -> None:
            raise _Crash

        c1._on_handled = crash
        with pytest.raises(_Crash):
            c1.run(lambda m: handled.append(m.id), idle_timeout=self.settle)
        c1.close()  # died between handling and acking: the message is redelivered
        assert len(handled) == 1
        got = self.drain(mq, topic, policy=policy, handler=lambda m: handled.append(m.id))
        assert len(got) == 2
        assert sorted(handled) == sorted(set(handled))  # nothing handled twice
        assert len(handled) == 3

    # -- C8 ordering -----------------------------------------------------------------

    def test_c8_per_key_order_with_two_consumers_and_retries(self, mq: Client, topic: str) -> None:
        policy = Policy(ordering="per_key", backoff=(0.02, 2.0, 0.1), prefetch=10)
        if self.caps(mq, "per_key_ordering") is Support.UNSUPPORTED:
            with pytest.raises(Unsupported):
                mq.consumer(topic, group="g1", policy=policy)
            return
        keys = [f"user-{i}" for i in range(6)]
        per_key = 15
        seen: list[tuple[str, int]] = []
        lock = threading.Lock()
        failed_once: set[tuple[str, int]] = set()

        def handler(m: Message) -> None:
            key = m.key or ""
            seq = int(m.value)
            with lock:
                if seq % 5 == 2 and (key, seq) not in failed_once:
                    failed_once.add((key, seq))
                    raise RuntimeError("retry me")
                seen.append((key, seq))

        consumers = [mq.consumer(topic, group="g1", policy=policy) for _ in range(2)]
        threads = [
            threading.Thread(
                target=c.run, args=(handler,), kwargs={"idle_timeout": self.settle * 3}
            )
            for c in consumers
        ]
        for th in threads:
            th.start()
        p = mq.producer()
        for seq in range(5):  # one at a time, then the rest in one send_many batch
            for k in keys:
                p.send(topic, str(seq).encode(), key=k)
        p.send_many(
            topic,
            [
                mqkit.OutgoingMessage(str(seq).encode(), key=k)
                for seq in range(5, per_key)
                for k in keys
            ],
        )
        for th in threads:
            th.join(timeout=120)
        for c in consumers:
            c.close()
        for k in keys:
            order = [s for key, s in seen if key == k]
            deduped = [s for i, s in enumerate(order) if s not in order[:i]]
            assert deduped == list(range(per_key)), f"key {k} out of order: {order}"
        assert {k for k, _ in seen} == set(keys)

    # -- C9 groups -------------------------------------------------------------------

    def test_c9_every_group_gets_every_message(self, mq: Client, topic: str) -> None:
        mq.producer().send_many(topic, [str(i).encode() for i in range(20)])
        g1 = self.drain(mq, topic, "g1", expect=20)
        g2 = self.drain(mq, topic, "g2", expect=20)
        assert sorted(int(m.value) for m in g1) == list(range(20))
        assert sorted(int(m.value) for m in g2) == list(range(20))

    def test_c9_group_created_later_sees_only_later_messages(self, mq: Client, topic: str) -> None:
        p = mq.producer()
        p.send(topic, b"before")
        mq.declare(topic, groups=["late"])
        p.send(topic, b"after")
        got = self.drain(mq, topic, "late")
        assert [m.value for m in got] == [b"after"]

    def test_c9_members_of_one_group_share_the_work(self, mq: Client, topic: str) -> None:
        n = 60
        a = mq.consumer(topic, group="g1", policy=Policy(prefetch=5))
        b = mq.consumer(topic, group="g1", policy=Policy(prefetch=5))
        got: dict[str, list[bytes]] = {"a": [], "b": []}

        def run(c: mqkit.Consumer, name: str) -> None:
            def h(m: Message) -> None:
                got[name].append(m.value)
                time.sleep(0.005)

            c.run(h, idle_timeout=self.settle * 2)

        ta = threading.Thread(target=run, args=(a, "a"))
        tb = threading.Thread(target=run, args=(b, "b"))
        ta.start()
        tb.start()
        mq.producer().send_many(topic, [str(i).encode() for i in range(n)])
        ta.join(timeout=120)
        tb.join(timeout=120)
        a.close()
        b.close()
        both = got["a"] + got["b"]
        assert sorted(int(v) for v in both) == list(range(n))
        assert got["a"], "member a got nothing: the group did not share"
        assert got["b"], "member b got nothing: the group did not share"

    # -- C10 TTL ---------------------------------------------------------------------

    def test_c10_expired_message_goes_to_dlq_not_handler(self, mq: Client, topic: str) -> None:
        p = mq.producer()
        p.send(topic, b"stale", ttl=0.2, id="t-1")
        p.send(topic, b"fresh", ttl=600, id="t-2")
        time.sleep(0.5)
        got = self.drain(mq, topic)
        assert [m.id for m in got] == ["t-2"]
        [dl] = self.dead_letters(mq, topic, expect=1)
        assert dl.id == "t-1"
        assert dl.value == b"stale"
        assert dl.headers[DLQ_REASON] == "expired"

    # -- C11 delay -------------------------------------------------------------------

    def test_c11_delayed_delivery(self, mq: Client, topic: str) -> None:
        p = mq.producer()
        if self.caps(mq, "delay") is Support.UNSUPPORTED:
            with pytest.raises(Unsupported):
                p.send(topic, b"later", delay=1.0)
            return
        sent = time.time()
        p.send(topic, b"later", delay=1.5, id="d-1")
        p.send(topic, b"now", id="d-2")
        arrivals: dict[str, float] = {}

        def h(m: Message) -> None:
            arrivals[m.id] = time.time()

        c = mq.consumer(topic, group="g1")
        try:
            c.run(h, idle_timeout=self.settle + 3.0, max_messages=2)
        finally:
            c.close()
        assert set(arrivals) == {"d-1", "d-2"}
        assert arrivals["d-1"] - sent >= 1.4
        assert arrivals["d-2"] < arrivals["d-1"]

    # -- C12 bad input ---------------------------------------------------------------

    def test_c12_bad_url_names_the_field(self, url: str) -> None:
        scheme = url.split("://", 1)[0]
        with pytest.raises(ConfigError, match="url"):
            mqkit.connect(f"{scheme}://127.0.0.1:99999")

    def test_c12_oversize_message_rejected_before_sending(self, mq: Client, topic: str) -> None:
        too_big = b"x" * (mq.max_message_size + 1)
        with pytest.raises(MessageTooLarge, match="max_message_size"):
            mq.producer().send(topic, too_big)
        assert self.drain(mq, topic) == []

    def test_c12_invalid_payload_is_dead_lettered(self, mq: Client, topic: str) -> None:
        mq.producer().send(topic, {"id": "not-a-number"}, id="bad-1")
        called: list[Order] = []

        def handle(order: Order) -> None:
            called.append(order)

        c = mq.consumer(topic, group="g1")
        try:
            c.run(handle, idle_timeout=self.settle)
        finally:
            c.close()
        assert called == []
        [dl] = self.dead_letters(mq, topic, expect=1)
        assert dl.id == "bad-1"
        assert dl.headers[DLQ_REASON] == "invalid"
        assert dl.headers[DLQ_ATTEMPTS] == "1"

    # -- C13 backpressure ------------------------------------------------------------

    def test_c13_prefetch_bounds_in_flight(self, mq: Client, topic: str) -> None:
        mq.producer().send_many(topic, [str(i).encode() for i in range(30)])
        c = mq.consumer(topic, group="g1", policy=Policy(prefetch=5))
        held: list[Delivery] = []
        try:
            for d in c.iter(timeout=self.settle * 2):
                held.append(d)
            assert len(held) == 5
            held[0].ack()
            more = next(iter(c.iter(timeout=self.settle * 5)))
            held.append(more)
            assert len(held) == 6
        finally:
            c.close()

    # -- C14 graceful close ----------------------------------------------------------

    def test_c14_close_finishes_in_flight_work_and_loses_nothing(
        self, mq: Client, topic: str
    ) -> None:
        n = 30
        mq.producer().send_many(topic, [str(i).encode() for i in range(n)])
        handled: list[int] = []
        started = threading.Event()

        def slow(m: Message) -> None:
            started.set()
            time.sleep(0.05)
            handled.append(int(m.value))

        c = mq.consumer(topic, group="g1", policy=Policy(prefetch=10))
        th = threading.Thread(target=c.run, args=(slow,))
        th.start()
        assert started.wait(30)
        time.sleep(0.2)
        c.close()  # returns after the handler in progress finished and was acked
        th.join(timeout=30)
        assert not th.is_alive()
        first = list(handled)
        assert 0 < len(first) < n
        rest = self.drain(mq, topic, handler=lambda m: handled.append(int(m.value)))
        assert sorted(handled) == list(range(n)), "lost or duplicated across close()"
        assert len(rest) == n - len(first)
