"""The wire protocol under garbage: the decoder only ever raises ProtocolError.

Offline, hypothesis feeds random bytes and mutated valid frames to the frame
decoder and the payload decoders.  Online, a live server gets garbage on one
connection while another client keeps working: its messages all arrive and
only the garbage connection is closed.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mqkit
from mqkit.broker import protocol as wire
from mqkit.message import Record
from mqkit.policy import Policy
from tests.fuzz.broker_process import BrokerProcess

pytestmark = pytest.mark.server

SMALL_FRAME = 64 * 1024

names = st.text(min_size=0, max_size=20)
records = st.builds(
    Record,
    st.none() | st.text(max_size=30),
    st.binary(max_size=200),
    st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=4),
)
u32 = st.integers(0, 2**32 - 1)
items = st.lists(st.tuples(u32, st.integers(0, 2**64 - 1)), max_size=5).map(tuple)
finite = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
requests: st.SearchStrategy[wire.Request] = st.one_of(
    st.builds(wire.Hello, st.integers(0, 65535), names, names),
    st.builds(
        wire.Declare,
        names,
        st.none() | st.integers(1, 2**32 - 1),
        st.lists(names, max_size=4).map(tuple),
        st.booleans(),
    ),
    st.builds(wire.Publish, names, st.lists(records, max_size=5), st.booleans()),
    st.builds(wire.Join, names, names, st.booleans(), u32),
    st.builds(wire.Fetch, names, u32, finite),
    st.builds(wire.Ack, names, items),
    st.builds(wire.Nack, names, items, finite),
    st.builds(wire.Heartbeat, names),
    st.builds(wire.Leave, names),
    st.builds(wire.Stats, names, names),
    st.builds(wire.DeleteTopic, names),
)


def _frame(req: wire.Request, rid: int = 7) -> bytes:
    op, payload = wire.encode_request(req)
    return wire.encode_frame(op, rid, payload)


def _decode_all(data: bytes, chunk: int) -> list[wire.Request]:
    """Everything a server would do with these bytes, up to the first ProtocolError."""
    dec = wire.FrameDecoder(SMALL_FRAME)
    out: list[wire.Request] = []
    for i in range(0, max(len(data), 1), chunk):
        for f in dec.feed(data[i : i + chunk]):
            out.append(wire.decode_request(f.op, f.payload))
        dec.check()
        # never more than one partial frame (bounded by the cap) is held
        assert dec.buffered <= SMALL_FRAME + 4 + chunk
    return out


# -- offline: the decoder ---------------------------------------------------------------


@given(requests)
def test_round_trip(req: wire.Request) -> None:
    [back] = _decode_all(_frame(req), chunk=3)
    if isinstance(req, wire.Publish):
        assert isinstance(back, wire.Publish)
        assert list(back.records) == list(req.records)
        assert (back.topic, back.durable) == (req.topic, req.durable)
    else:
        assert back == req


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.integers(1, 64))
def test_random_bytes_only_raise_protocol_error(data: bytes, chunk: int) -> None:
    with contextlib.suppress(wire.ProtocolError):
        _decode_all(data, chunk)


@settings(max_examples=300)
@given(st.integers(0, 255), st.binary(max_size=512))
def test_random_payloads_only_raise_protocol_error(op: int, payload: bytes) -> None:
    for decode in (
        lambda: wire.decode_request(op, payload),
        lambda: wire.decode_deliveries(payload),
        lambda: wire.decode_stats(payload),
        lambda: wire.decode_placed(payload),
        lambda: wire.decode_error(payload),
        lambda: wire.decode_hello_reply(payload),
        lambda: wire.decode_member(payload),
    ):
        with contextlib.suppress(wire.ProtocolError):
            decode()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(
        b"".join(
            _frame(r, i) for i, r in enumerate(draw(st.lists(requests, min_size=1, max_size=3)))
        )
    )
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "len"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == "len" and len(data) >= 4:
            # a length field claiming anything, including far more than the cap
            data[0:4] = struct.pack(">I", draw(st.integers(0, 2**32 - 1)))
    return bytes(data)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.integers(1, 97))
def test_mutated_frames_only_raise_protocol_error(data: bytes, chunk: int) -> None:
    with contextlib.suppress(wire.ProtocolError):
        _decode_all(data, chunk)


def test_oversized_length_is_refused_from_its_four_bytes() -> None:
    dec = wire.FrameDecoder(SMALL_FRAME)
    with pytest.raises(wire.ProtocolError, match="outside"):
        dec.feed(struct.pack(">I", 2**31))
    with pytest.raises(wire.ProtocolError, match="outside"):
        dec.feed(b"more")
    assert dec.buffered == 0


def test_huge_counts_do_not_allocate() -> None:
    # a PUBLISH claiming 4 billion records in a few bytes
    payload = struct.pack(">H", 1) + b"t" + b"\x01" + struct.pack(">I", 2**32 - 1)
    with pytest.raises(wire.ProtocolError, match="count"):
        wire.decode_request(wire.Op.PUBLISH, payload)


def test_non_finite_numbers_are_refused() -> None:
    payload = struct.pack(">H", 1) + b"m" + struct.pack(">Id", 10, float("nan"))
    with pytest.raises(wire.ProtocolError, match="finite"):
        wire.decode_request(wire.Op.FETCH, payload)


# -- online: garbage never harms other clients ------------------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProcess]:
    with BrokerProcess() as b:
        yield b


def _hello() -> bytes:
    return _frame(wire.Hello(wire.VERSION, "", "fuzz"), 0)


def _garbage_connection(port: int, rng: random.Random) -> bool:
    """Send one kind of garbage; True if the server closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        kind = rng.randrange(4)
        if kind == 0:
            s.sendall(rng.randbytes(rng.randrange(1, 4096)))
        elif kind == 1:
            s.sendall(_hello() + rng.randbytes(rng.randrange(1, 4096)))
        elif kind == 2:
            s.sendall(_hello() + struct.pack(">IBI", 2**31, 3, 1))  # a 2 GiB frame
        else:
            frame = bytearray(_frame(wire.Publish("t", [Record("k", b"v" * 50, {})]), 1))
            for _ in range(3):
                frame[rng.randrange(9, len(frame))] = rng.randrange(256)
            s.sendall(_hello() + bytes(frame) + rng.randbytes(64))
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return True
            if not chunk:
                return True
            got += chunk


def test_garbage_on_one_connection_does_not_harm_another(broker: BrokerProcess) -> None:
    mq = mqkit.connect(broker.url())
    topic = "fuzz-victim"
    mq.declare(topic, partitions=2, groups=["g"])
    n = 300
    stop = threading.Event()
    closed: list[bool] = []

    def attack() -> None:
        rng = random.Random(1234)
        while not stop.is_set():
            closed.append(_garbage_connection(broker.port, rng))

    attackers = [threading.Thread(target=attack) for _ in range(3)]
    for t in attackers:
        t.start()
    try:
        p = mq.producer(Policy(persistent=False))
        for i in range(n):
            p.send(topic, str(i).encode(), key=f"k{i % 7}")
        got: list[int] = []
        c = mq.consumer(topic, group="g")
        deadline = time.monotonic() + 60
        for d in c.iter(timeout=5):
            got.append(int(d.message.value))
            d.ack()
            if len(got) == n or time.monotonic() > deadline:
                break
        c.close()
    finally:
        stop.set()
        for t in attackers:
            t.join(30)
        mq.close()
    assert sorted(got) == list(range(n))
    assert closed
    assert all(closed), "a garbage connection was left open"
    assert broker.alive(), broker.log_tail()


def test_protocol_error_is_answered_with_an_error_frame(broker: BrokerProcess) -> None:
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as s:
        s.sendall(_hello())
        s.sendall(struct.pack(">IBI", 6, 200, 5) + b"x")  # unknown op 200
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    dec = wire.FrameDecoder()
    frames = dec.feed(data)
    dec.check()
    assert frames[0].op == wire.Op.RESULT  # the HELLO reply
    assert frames[-1].op == wire.Op.ERROR
    err = wire.decode_error(frames[-1].payload)
    assert err.kind == wire.ErrorKind.PROTOCOL
    assert "unknown op" in err.message
