"""Record bodies: what a PUBLISH carries is checked before the log stores it as is."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqkit.broker import protocol as wire
from mqkit.broker.body import EncodedRecords, check_body, decode_body, encode_body
from mqkit.message import Record

records = st.builds(
    Record,
    st.none() | st.text(max_size=30),
    st.binary(max_size=200),
    st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=4),
)


@given(records)
def test_body_round_trip(r: Record) -> None:
    b = encode_body(r)
    key = check_body(b, 0, len(b))
    assert key == (None if r.key is None else r.key.encode())
    assert decode_body(b, 0, len(b)) == r


def _body(key: bytes | None, headers: list[tuple[bytes, bytes]], value: bytes) -> bytes:
    out = struct.pack(">i", -1 if key is None else len(key)) + (key or b"")
    out += struct.pack(">I", len(headers))
    for n, v in headers:
        out += struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v
    return out + value


@pytest.mark.parametrize(
    "body",
    [
        _body(b"\xff\xfe", [], b"v"),  # key not UTF-8
        _body(None, [(b"name", b"\xc3")], b"v"),  # header value cut inside a character
        _body(None, [(b"\x80", b"v")], b"v"),  # header name not UTF-8
        struct.pack(">iI", 50, 0) + b"short",  # key runs past the record
        struct.pack(">iI", -7, 0),  # impossible key length
        struct.pack(">iI", -1, 1000) + b"x" * 20,  # more headers than bytes
        _body(None, [(b"n", b"v")], b"")[:-1],  # header value runs past the record
        b"\x00\x00\x00",  # shorter than any body
    ],
)
def test_bodies_a_reader_could_not_decode_are_refused(body: bytes) -> None:
    with pytest.raises(ValueError, match=r"utf-8|invalid|past|exceeds|shorter"):
        check_body(body, 0, len(body))
    payload = struct.pack(">H", 1) + b"t" + b"\x01" + struct.pack(">I", 1)
    payload += struct.pack(">I", len(body)) + body
    with pytest.raises(wire.ProtocolError):
        wire.decode_request(wire.Op.PUBLISH, payload)


def test_a_publish_arrives_as_the_bodies_it_carried() -> None:
    recs = [Record("k", b"v1", {"a": "b"}), Record(None, b"v2", {})]
    op, payload = wire.encode_request(wire.Publish("t", recs, True))
    req = wire.decode_request(op, payload)
    assert isinstance(req, wire.Publish)
    assert isinstance(req.records, EncodedRecords)
    assert req.records.bodies == [encode_body(r) for r in recs]
    assert req.records.keys == [b"k", None]
    assert list(req.records) == recs
    assert req.records.take([1]).bodies == [encode_body(recs[1])]
