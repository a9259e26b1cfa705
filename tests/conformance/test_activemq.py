"""The conformance suite over a real ActiveMQ Classic 5.17 (``docker/brokers up activemq``).

The broker hooks kill -9 and restart the real broker process through the
project's runner (``broker_control`` of tests/brokers_plugin.py), so C2 and C3
are proved against it.  The plugin fails these tests under CI when ActiveMQ is
not running, with the command that starts it.  After a restart the hook waits
until the broker has delivered a probe message: "ready" for the runner means
the STOMP connector answers CONNECTED, and a restarted JVM on a loaded machine
may take longer than the suite's 1 s idle drain to dispatch its first message
(C3 would then read "all 50 lost" from a broker that has them).

After the suite, ActiveMQ-specific checks: what the adapter does where STOMP
on ActiveMQ 5 differs from the contract (NACK is a poison ack, reserved
header names, receipts), and the wire encoding (no broker needed).
"""

from __future__ import annotations

import importlib
import queue
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import mqkit
from mqkit.errors import ConfigError, PublishError, Unsupported
from mqkit.message import Record
from mqkit.policy import Policy
from mqkit.producer import OutgoingMessage
from mqkit.testing.conformance import ConformanceSuite
from tests.brokers_plugin import BrokerControl

activemq = pytest.mark.activemq


@activemq
class TestActiveMQ(ConformanceSuite):
    settle = 1.0
    recover_settle = 15.0

    @pytest.fixture(autouse=True)
    def _broker(self, broker_urls: dict[str, str], broker_control: BrokerControl) -> None:
        self._url = broker_urls["activemq"]
        self._control = broker_control

    def make_url(self) -> str:
        return self._url

    def stop_broker(self) -> None:
        self._control.kill9("activemq")

    def kill_broker(self) -> None:
        self._control.kill9("activemq")

    def restart_broker(self) -> None:
        self._control.restart("activemq")
        _wait_dispatching(self._url, timeout=60.0)


def _wait_dispatching(url: str, timeout: float) -> None:
    """Until the broker delivers a freshly sent message (it is serving, not just listening)."""
    with mqkit.connect(url) as mq:
        t = f"probe-{uuid.uuid4().hex[:10]}"
        mq.declare(t, groups=["probe"])
        mq.producer().send(t, b"probe", id="probe")
        consumer = mq.consumer(t, group="probe")
        try:
            for d in consumer.iter(timeout=timeout):
                d.ack()
                return
        finally:
            consumer.close()
    pytest.fail(f"ActiveMQ delivered nothing within {timeout:g} s of its restart")


# -- ActiveMQ specifics (real broker) ------------------------------------------------------


@pytest.fixture
def amq(broker_urls: dict[str, str]) -> Iterator[mqkit.Client]:
    client = mqkit.connect(broker_urls["activemq"])
    yield client
    client.close()


def _topic() -> str:
    return f"amq-{uuid.uuid4().hex[:10]}"


def _raw_queue_messages(url: str, destination: str, wait: float) -> list[Any]:
    """Every message on ``destination`` within ``wait`` seconds, read with raw stomp.py."""
    import stomp

    host, port = url.split("://", 1)[1].rsplit(":", 1)
    got: queue.Queue[Any] = queue.Queue()

    class Listener:
        def on_message(self, frame: Any) -> None:
            got.put(frame)

    conn = stomp.Connection12([(host, int(port))], heartbeats=(0, 0), auto_decode=False)
    conn.set_listener("l", Listener())
    conn.connect(wait=True)
    try:
        conn.subscribe(destination, id="probe", ack="auto")
        out: list[Any] = []
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                out.append(got.get(timeout=remaining))
            except queue.Empty:
                break
        return out
    finally:
        conn.disconnect()


@activemq
def test_nack_redelivers_past_the_broker_limit_and_never_to_activemqs_dlq(
    amq: mqkit.Client, broker_urls: dict[str, str]
) -> None:
    """12 nacks (the broker's redeliveryPlugin would give up after 10): attempt 1..13."""
    t = _topic()
    amq.declare(t, groups=["g"])
    amq.producer().send(t, b"again", key="k", headers={"h": "v"}, id="n-1")
    c = amq.consumer(t, group="g", policy=Policy(prefetch=5))
    attempts: list[int] = []
    try:
        for d in c.iter(timeout=10):
            assert (d.message.id, d.message.value, d.message.key) == ("n-1", b"again", "k")
            assert d.message.headers == {"h": "v"}
            attempts.append(d.attempt)
            if len(attempts) <= 12:
                d.nack()
            else:
                d.ack()
                break
    finally:
        c.close()
    assert attempts == list(range(1, 14))
    queue_name = amq.adapter._names.group_queue_name(t, "g")  # type: ignore[attr-defined]
    for dlq in (f"/queue/DLQ.{queue_name}", "/queue/ActiveMQ.DLQ"):
        leaked = [f for f in _raw_queue_messages(broker_urls["activemq"], dlq, 1.0)
                  if f.headers.get("x-mqkit-id") == "n-1"]  # fmt: skip
        assert leaked == [], f"a nacked message reached {dlq}"
    assert ConformanceSuite().drain(amq, t, "g") == []


@activemq
def test_delayed_nack_comes_back_after_the_delay_with_the_next_attempt(amq: mqkit.Client) -> None:
    t = _topic()
    amq.declare(t, groups=["g"])
    amq.producer().send(t, b"later", id="d-1")
    c = amq.consumer(t, group="g")
    try:
        it = c.iter(timeout=10)
        first = next(it)
        nacked_at = time.monotonic()
        first.nack(delay=0.6)
        again = next(it)
        waited = time.monotonic() - nacked_at
        assert again.message.id == "d-1"
        assert again.attempt == 2
        assert waited >= 0.55
        again.ack()
    finally:
        c.close()


@activemq
def test_reserved_header_names_are_carried_not_obeyed(amq: mqkit.Client) -> None:
    """Names STOMP/ActiveMQ interpret reach the consumer unchanged and change nothing."""
    t = _topic()
    amq.declare(t, groups=["g"])
    headers = {
        "persistent": "false",
        "expires": "1",
        "priority": "9",
        "JMSXGroupID": "someone-else",
        "AMQ_SCHEDULED_DELAY": "600000",
        "destination": "/queue/elsewhere",
        "content-length": "3",
        "a:b": "c\nd\\e",
        "ключ": "значение",
        "": "empty name",
    }
    sent = time.monotonic()
    amq.producer().send(t, b"\x00payload\x00", headers=headers, id="r-1")
    got = ConformanceSuite().drain(amq, t, "g", expect=1)
    assert time.monotonic() - sent < 60, "AMQ_SCHEDULED_DELAY was obeyed"
    [m] = got
    assert m.headers == headers
    assert m.value == b"\x00payload\x00"


@activemq
def test_batches_are_transactions_by_default(
    broker_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """send_many: BEGIN, SENDs without receipts, COMMIT with one, per confirm_window."""
    adapter_module = importlib.import_module("mqkit.adapters.activemq")
    real_write = adapter_module.write
    written: list[list[bytes]] = []

    def spying_write(conn: Any, frames: list[bytes]) -> None:
        frames = list(frames)
        written.append(frames)
        real_write(conn, frames)

    monkeypatch.setattr(adapter_module, "write", spying_write)
    with mqkit.connect(broker_urls["activemq"] + "?confirm_window=100") as mq:
        t = _topic()
        mq.declare(t, groups=["g"])
        receipts = mq.producer().send_many(t, [str(i).encode() for i in range(250)])
        assert all(r.confirmed for r in receipts)
        got = ConformanceSuite().drain(mq, t, "g", expect=250)
    assert sorted(int(m.value) for m in got) == list(range(250))
    chunks = [w for w in written if w and w[0].startswith(b"BEGIN")]
    assert [len(c) - 2 for c in chunks] == [100, 100, 50]
    for chunk in chunks:
        assert chunk[-1].startswith(b"COMMIT")
        assert b"\nreceipt:" in chunk[-1]
        assert not any(b"\nreceipt:" in f for f in chunk[1:-1])


_DESTINATION = re.compile(rb"\ndestination:[^\n]*")


def _break_send(index: int, line: bytes) -> Any:
    """A ``write`` that replaces the destination header line of SEND ``index`` of its frames."""
    adapter_module = importlib.import_module("mqkit.adapters.activemq")
    real_write = adapter_module.write

    def write(conn: Any, frames: list[bytes]) -> None:
        frames = list(frames)
        sends = [i for i, f in enumerate(frames) if f.startswith(b"SEND")]
        if len(sends) > index:
            frames[sends[index]] = _DESTINATION.sub(lambda _: line, frames[sends[index]], count=1)
        real_write(conn, frames)

    return write


@activemq
@pytest.mark.parametrize(
    ("how", "line"),
    [
        # the broker refuses it (no such temporary queue): the transaction is marked
        # rollback-only and the COMMIT fails
        ("broker", b"\ndestination:/remote-temp-queue/ID\\cmqkit-none-1\\c1\\c1"),
        # ActiveMQ's STOMP layer refuses it (ERROR naming no receipt): the COMMIT succeeds
        # without it, so the adapter fails the transaction (the others are in doubt)
        ("stomp layer", b"\nx-no-destination:x"),
    ],
)
def test_refused_send_fails_its_whole_transaction(
    broker_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch, how: str, line: bytes
) -> None:
    adapter_module = importlib.import_module("mqkit.adapters.activemq")
    real_write = adapter_module.write
    monkeypatch.setattr(adapter_module, "write", _break_send(3, line))
    with mqkit.connect(broker_urls["activemq"] + "?confirm_window=100") as mq:
        t = _topic()
        mq.declare(t, groups=["g"])
        with pytest.raises(PublishError) as err:
            mq.producer().send_many(t, [OutgoingMessage(b"m", id=f"m{i}") for i in range(6)])
        assert [mid for _, mid, _ in err.value.failed] == [f"m{i}" for i in range(6)]
        assert err.value.receipts == []
        monkeypatch.setattr(adapter_module, "write", real_write)
        assert mq.producer().send(t, b"after", id="after").confirmed
        got = [m.id for m in ConformanceSuite().drain(mq, t, "g")]
    if how == "broker":
        assert got == ["after"]  # all or nothing: the refused transaction stored nothing
    else:
        assert "m3" not in got
        assert "after" in got


@activemq
def test_lost_connection_fails_only_the_unconfirmed_transaction(
    broker_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 3: the second chunk's SEND #1 is malformed and ActiveMQ closes the connection."""
    adapter_module = importlib.import_module("mqkit.adapters.activemq")
    real_write = adapter_module.write
    breaking = _break_send(1, b"\ndestination:/queue/")
    calls = [0]

    def second_chunk_breaks(conn: Any, frames: list[bytes]) -> None:
        frames = list(frames)
        if frames and frames[0].startswith(b"BEGIN"):
            calls[0] += 1
            if calls[0] == 2:
                breaking(conn, frames)
                return
        real_write(conn, frames)

    monkeypatch.setattr(adapter_module, "write", second_chunk_breaks)
    with mqkit.connect(broker_urls["activemq"] + "?confirm_window=3") as mq:
        t = _topic()
        mq.declare(t, groups=["g"])
        with pytest.raises(PublishError) as err:
            mq.producer().send_many(t, [OutgoingMessage(b"m", id=f"m{i}") for i in range(6)])
        monkeypatch.setattr(adapter_module, "write", real_write)
        got = sorted(m.id for m in ConformanceSuite().drain(mq, t, "g"))
    assert sorted(r.id for r in err.value.receipts) == ["m0", "m1", "m2"]
    assert [mid for _, mid, _ in err.value.failed] == ["m3", "m4", "m5"]
    assert got == ["m0", "m1", "m2"]


@activemq
def test_missing_receipt_fails_exactly_that_record(
    broker_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker never answers SEND #2 (its receipt header is renamed on the wire)."""
    adapter_module = importlib.import_module("mqkit.adapters.activemq")
    real_write = adapter_module.write

    def lossy_write(conn: Any, frames: list[bytes]) -> None:
        frames = list(frames)
        if len(frames) >= 3:
            frames[2] = frames[2].replace(b"\nreceipt:", b"\nnot-a-receipt:")
        real_write(conn, frames)

    monkeypatch.setattr(adapter_module, "write", lossy_write)
    url = broker_urls["activemq"] + "?confirm_mode=receipt&confirm_timeout=1"
    with mqkit.connect(url) as mq:
        t = _topic()
        mq.declare(t, groups=["g"])
        with pytest.raises(PublishError) as err:
            mq.producer().send_many(t, [OutgoingMessage(b"m", id=f"m{i}") for i in range(5)])
        assert [mid for _, mid, _ in err.value.failed] == ["m2"]
        assert sorted(r.id for r in err.value.receipts) == ["m0", "m1", "m3", "m4"]
        # the suspect connection was dropped; the next send reconnects and is confirmed
        monkeypatch.setattr(adapter_module, "write", real_write)
        assert mq.producer().send(t, b"after", id="m5").confirmed


@activemq
def test_lost_connection_fails_only_unconfirmed_records(
    broker_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SEND #3 is malformed: ActiveMQ closes the connection; #0-#2 were confirmed."""
    adapter_module = importlib.import_module("mqkit.adapters.activemq")
    real_write = adapter_module.write

    def breaking_write(conn: Any, frames: list[bytes]) -> None:
        frames = list(frames)
        if len(frames) >= 4:
            frames[3] = frames[3].replace(b"\ndestination:", b"\ndestination:/queue/\nx:")
        real_write(conn, frames)

    monkeypatch.setattr(adapter_module, "write", breaking_write)
    with mqkit.connect(broker_urls["activemq"] + "?confirm_mode=receipt") as mq:
        t = _topic()
        mq.declare(t, groups=["g"])
        with pytest.raises(PublishError) as err:
            mq.producer().send_many(t, [OutgoingMessage(b"m", id=f"m{i}") for i in range(6)])
        failed = [mid for _, mid, _ in err.value.failed]
        assert failed[0] == "m3"
        assert {r.id for r in err.value.receipts} | set(failed) == {f"m{i}" for i in range(6)}
        assert {"m0", "m1", "m2"} <= {r.id for r in err.value.receipts}
        monkeypatch.setattr(adapter_module, "write", real_write)
        got = {m.id for m in ConformanceSuite().drain(mq, t, "g")}
    assert {r.id for r in err.value.receipts} <= got


@activemq
def test_stats_and_delete_topic_are_unsupported(amq: mqkit.Client) -> None:
    with pytest.raises(Unsupported, match="lag statistics"):
        amq.stats("anything", "g")
    with pytest.raises(Unsupported):
        amq.adapter.delete_topic("anything")


# -- no broker needed ----------------------------------------------------------------------


def test_bad_option_names_the_option() -> None:
    with pytest.raises(ConfigError, match="confirm_window"):
        mqkit.connect("stomp://127.0.0.1:61613?confirm_window=0")
    with pytest.raises(ConfigError, match="confrim_mode"):
        mqkit.connect("stomp://127.0.0.1:61613?confrim_mode=receipt")


def test_capabilities_are_importable_without_connecting() -> None:
    from mqkit.capabilities import Support

    caps = importlib.import_module("mqkit.adapters.activemq").ActiveMQAdapter.capabilities
    assert caps.attempt_count is Support.EMULATED
    assert caps.delay is Support.NATIVE
    assert caps.per_key_ordering is Support.NATIVE


def test_group_names_map_one_to_one_onto_queues() -> None:
    names = importlib.import_module("mqkit.adapters.activemq._frames").Names()
    assert names.topic("orders") == "/topic/VirtualTopic.orders"
    assert names.group_queue("orders.dlq", "default") == (
        "/queue/Consumer.default.VirtualTopic.orders.dlq"
    )
    # a '.' would split ActiveMQ's Consumer.*. match; '~' is outside mqkit's alphabet
    assert names.group_queue("t", "a.b") == "/queue/Consumer.a~b.VirtualTopic.t"
    assert names.group_queue("t", "a.b") != names.group_queue("t", "a_b")


def test_headers_survive_the_wire_encoding() -> None:
    """encode_headers -> STOMP 1.2 frame -> stomp.py's parser -> decode_record."""
    import stomp.utils

    frames = importlib.import_module("mqkit.adapters.activemq._frames")
    decode_record, encode_headers = frames.decode_record, frames.encode_headers
    frame = importlib.import_module("mqkit.adapters.activemq._wire").frame

    headers = {"persistent": "x", "JMSType": "t", "a:b": "c\nd\r\\", "": "e", "ok": "v"}
    record = Record("user-1", b"\x00\x01body\x00", headers)
    wire_headers = {"destination": "/topic/VirtualTopic.t", **encode_headers(
        record, persistent=True, delay=1.5, attempt=3)}  # fmt: skip
    raw = frame("SEND", wire_headers, record.value)
    parsed = stomp.utils.parse_frame(raw[:-1])
    assert parsed.headers["persistent"] == "true"
    assert parsed.headers["AMQ_SCHEDULED_DELAY"] == "1500"
    assert parsed.headers["JMSXGroupID"] == "user-1"
    assert parsed.body == record.value
    back, attempt = decode_record(parsed.headers, parsed.body)
    assert back == record
    assert attempt == 3
    _, attempt = decode_record({**parsed.headers, "redelivered": "true"}, parsed.body)
    assert attempt == 4
