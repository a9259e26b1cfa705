"""The conformance suite against a real RocketMQ 5.3 (``docker/brokers up rocketmq``).

namesrv plus a proxy in local mode with the broker inside (SYNC_FLUSH, MIXED topics
enabled; docker/rocketmq/).  The broker hooks drive docker/brokers: C2 and C3 kill -9
both JVMs, then start them again on the same store and wait until a topic can be
created and routed.  ``settle`` is longer than for other brokers: a message given back
to a non-orderly group (close, nack) returns only after RocketMQ's revive service has
caught up with it, about 3 s.

After the suite: RocketMQ specifics -- name mapping, the header/property mapping, option
errors, the install hint, lease renewal of a slow handler, redelivery when a lease ends
unacked (rocketmq-clients#1344), a group created by its first consumer, strict
(non-MIXED) topic types, and per-key order of a batch whose sends overtake each other.
"""

from __future__ import annotations

import importlib
import itertools
import re
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any

import pytest

import mqkit
from mqkit.errors import ConfigError, MissingDriver, Unsupported
from mqkit.message import Record
from mqkit.policy import Policy
from mqkit.testing.conformance import ConformanceSuite
from tests.brokers_plugin import BrokerControl, BrokerControlError

pytestmark = [pytest.mark.rocketmq, pytest.mark.timeout(300)]


class TestRocketMQ(ConformanceSuite):
    settle = 5.0

    @pytest.fixture(autouse=True)
    def _broker(self, broker_urls: dict[str, str], broker_control: BrokerControl) -> None:
        self._url = broker_urls["rocketmq"]
        self._control = broker_control

    def make_url(self) -> str:
        return self._url

    def stop_broker(self) -> None:
        self._control.kill9("rocketmq")

    def kill_broker(self) -> None:
        self._control.kill9("rocketmq")

    def restart_broker(self) -> None:
        try:
            self._control.restart("rocketmq")
        except BrokerControlError as exc:
            # Seen once under heavy load on the shared test machine (the runner gave up
            # on the first start); a second start on the same data is what an operator
            # would do, and what the contract is about is the data, not the runner.
            print(f"restart failed once, retrying: {exc}", file=sys.stderr)
            self._control.restart("rocketmq")


# -- RocketMQ specifics (beyond the contract) ------------------------------------------------

_names = importlib.import_module("mqkit.adapters.rocketmq.names")
_codec = importlib.import_module("mqkit.adapters.rocketmq.codec")


def test_names_are_mapped_to_what_rocketmq_accepts() -> None:
    rocket_name = _names.rocket_name
    assert rocket_name("orders") == "orders"
    dlq = rocket_name("orders.dlq")
    assert re.fullmatch(r"orders_dlq_[0-9a-f]{8}", dlq)
    assert rocket_name("orders_dlq") != dlq  # the hash keeps distinct names distinct
    long = rocket_name("x" * 200)
    assert len(long) <= _names.TOPIC_MAX
    assert long != rocket_name("x" * 199)
    gid = _names.group_id("orders.dlq", "default")
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,62}", gid)
    assert gid != _names.group_id("orders", "dlq.default")


def test_records_survive_the_property_mapping() -> None:
    rocketmq = pytest.importorskip("rocketmq")
    record = Record(
        "a key with spaces",
        b"",
        {"h": "v", "empty": "", "KEYS": "reserved", "__x": "y", "ctl": "a\x01b", "é": "✓"},
    )
    msg = _codec.to_message(rocketmq.Message, "t", record)
    assert msg.body == b"\x00"  # RocketMQ refuses empty bodies
    assert msg.properties["h"] == "v"
    assert "KEYS" not in msg.properties
    back = _codec.to_record(msg)
    assert back.key == record.key
    assert back.value == b""
    assert back.headers == record.headers
    plain = _codec.to_message(rocketmq.Message, "t", Record("user-42", b"v", {}))
    assert plain.keys == {"user-42"}
    assert _codec.to_record(plain).key == "user-42"
    assert _codec.message_group("user-42") == "user-42"
    assert re.fullmatch(r"k[0-9a-f]{32}", _codec.message_group("k" * 65))


def test_an_option_typo_names_the_option(broker_urls: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"options\.invisble_time"):
        mqkit.connect(f"{broker_urls['rocketmq']}?invisble_time=3")
    with pytest.raises(ConfigError, match=r"options\.invisible_time"):
        mqkit.connect(f"{broker_urls['rocketmq']}?invisible_time=1")


def test_a_missing_driver_gives_the_install_hint(
    broker_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "rocketmq", None)
    with pytest.raises(MissingDriver, match=r"mqkit\[rocketmq\]"):
        mqkit.connect(broker_urls["rocketmq"])


def test_a_slow_handler_keeps_its_message_past_the_lease(broker_urls: dict[str, str]) -> None:
    """The lease (invisible_time=2) is renewed while the message is held."""
    with mqkit.connect(f"{broker_urls['rocketmq']}?invisible_time=2") as mq:
        topic = f"c-{uuid.uuid4().hex[:10]}"
        mq.declare(topic, groups=["g"])
        mq.producer().send(topic, b"slow", id="s-1")
        c1 = mq.consumer(topic, group="g")
        held = next(iter(c1.iter(timeout=20)))
        stolen: list[str] = []
        c2 = mq.consumer(topic, group="g")

        def other_member() -> None:
            for d in c2.iter(timeout=7):
                stolen.append(d.message.id)
                d.ack()

        t = threading.Thread(target=other_member)
        t.start()
        t.join(30)
        held.ack()
        c1.close()
        c2.close()
        assert stolen == [], "the message was redelivered while its handler still held it"
        assert held.attempt == 1


def test_a_group_created_by_its_first_consumer_sees_only_later_messages(
    broker_urls: dict[str, str],
) -> None:
    with mqkit.connect(broker_urls["rocketmq"]) as mq:
        topic = f"c-{uuid.uuid4().hex[:10]}"
        mq.declare(topic)
        p = mq.producer()
        p.send(topic, b"before")
        c = mq.consumer(topic, group="newcomer")
        p.send(topic, b"after")
        got = list(c.iter(timeout=6))
        for d in got:
            d.ack()
        c.close()
        assert [d.message.value for d in got] == [b"after"]


def test_strict_topic_types_refuse_what_they_cannot_carry(broker_urls: dict[str, str]) -> None:
    url = broker_urls["rocketmq"]
    with mqkit.connect(f"{url}?topic_type=FIFO") as mq:
        topic = f"c-{uuid.uuid4().hex[:10]}"
        mq.declare(topic, groups=["g"], ordered=True)
        with pytest.raises(Unsupported, match="delay"):
            mq.producer().send(topic, b"later", delay=1.0)
        mq.producer().send(topic, b"no key")  # FIFO only: a group is made from the id
        c = mq.consumer(topic, group="g", policy=Policy(ordering="per_key"))
        got = list(c.iter(timeout=6))
        for d in got:
            d.ack()
        c.close()
        assert [d.message.value for d in got] == [b"no key"]
    with mqkit.connect(f"{url}?topic_type=NORMAL") as mq:
        topic = f"c-{uuid.uuid4().hex[:10]}"
        mq.declare(topic, groups=["g"])
        with pytest.raises(Unsupported, match="per_key"):
            mq.consumer(topic, group="g", policy=Policy(ordering="per_key"))


def test_a_message_whose_lease_ends_unacked_comes_back_with_attempt_2(
    broker_urls: dict[str, str],
) -> None:
    """rocketmq-clients#1344 (client 5.1.1, server 5.5.0): unacked messages never came
    back.  Here a member takes the message with a 2 s lease and vanishes without acking
    or giving it back (what a crash leaves); the group gets it again, attempt 2."""
    rocketmq = pytest.importorskip("rocketmq")
    url = broker_urls["rocketmq"]
    with mqkit.connect(url) as mq:
        topic = f"c-{uuid.uuid4().hex[:10]}"
        mq.declare(topic, groups=["g"])
        mq.producer().send(topic, b"lease", id="l-1")
        cfg = rocketmq.ClientConfiguration(url.split("://", 1)[1], rocketmq.Credentials())
        crashed = rocketmq.SimpleConsumer(
            cfg,
            _names.group_id(topic, "g"),
            {_names.rocket_name(topic): rocketmq.FilterExpression()},
            await_duration=1,
        )
        crashed.startup()
        try:
            assert crashed._init_settings_event.wait(10)
            taken: list[Any] = []
            deadline = time.monotonic() + 20
            while not taken and time.monotonic() < deadline:
                taken = crashed.receive(1, 2)
            assert [m.delivery_attempt for m in taken] == [1]
            t0 = time.monotonic()
            c = mq.consumer(topic, group="g")
            again = next(iter(c.iter(timeout=30)))
            waited = time.monotonic() - t0
            again.ack()
            c.close()
        finally:
            crashed.shutdown()
        assert again.message.id == "l-1"
        assert again.attempt == 2
        assert waited >= 1.0, f"back after {waited:.1f}s, before its lease ended"


def test_a_batch_keeps_each_keys_order_when_sends_overtake(
    broker_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: ``send_many`` put every record on the wire at once, and RocketMQ stored two
    records of one message group in the order they arrived.  Here each send is held back a
    little less than the one before it (a busy network, an SDK retry), so two records of a
    key in flight together would arrive -- and be stored -- the wrong way round."""
    with mqkit.connect(broker_urls["rocketmq"]) as mq:
        topic = f"c-{uuid.uuid4().hex[:10]}"
        mq.declare(topic, groups=["g"])
        producer = mq.adapter._producer  # type: ignore[attr-defined]
        real = producer.send_async
        calls = itertools.count()

        def overtaken(msg: Any) -> Future[Any]:
            out: Future[Any] = Future()

            def go() -> None:
                try:
                    sent = real(msg)
                except Exception as exc:
                    out.set_exception(exc)
                    return
                sent.add_done_callback(settle)

            def settle(sent: Future[Any]) -> None:
                error = sent.exception()
                if error is not None:
                    out.set_exception(error)
                else:
                    out.set_result(sent.result())

            threading.Timer(max(0.2 - 0.004 * next(calls), 0.0), go).start()
            return out

        monkeypatch.setattr(producer, "send_async", overtaken)
        keys = [f"user-{i}" for i in range(6)]
        per_key = 8
        batch = [
            mqkit.OutgoingMessage(str(s).encode(), key=k) for s in range(per_key) for k in keys
        ]
        receipts = mq.producer().send_many(topic, batch)
        assert len(receipts) == len(batch)
        assert all(r.confirmed for r in receipts)
        seen: dict[str, list[int]] = {}
        c = mq.consumer(topic, group="g", policy=Policy(ordering="per_key"))
        try:
            c.run(
                lambda m: seen.setdefault(m.key or "", []).append(int(m.value)),
                idle_timeout=10,
                max_messages=len(batch),
            )
        finally:
            c.close()
        assert {k: seen.get(k) for k in keys} == {k: list(range(per_key)) for k in keys}
