"""Payload codecs: bytes, text, JSON values and pydantic models, both ways."""

from __future__ import annotations

import datetime
import decimal
from typing import Any

import pytest
from pydantic import BaseModel, Field

from mqkit.codecs import BYTES, JSON, TEXT, decode, encode, validate
from mqkit.errors import PayloadError
from mqkit.message import Message


class Order(BaseModel):
    id: int
    item: str
    qty: int = Field(ge=1)


@pytest.mark.parametrize(
    ("value", "content_type"),
    [
        (b"\x00\x01raw\xff", BYTES),
        (b"", BYTES),
        ("héllo wörld ✓", TEXT),
        ("", TEXT),
        ({"id": 1, "tags": ["a", "b"], "nested": {"x": None}}, JSON),
        ([1, 2.5, "three", True, None], JSON),
        (42, JSON),
        (0.5, JSON),
        (True, JSON),
        (None, JSON),
    ],
)
def test_round_trip(value: Any, content_type: str) -> None:
    raw, ct = encode(value)
    assert isinstance(raw, bytes)
    assert ct == content_type
    assert decode(raw, ct) == value


def test_bytearray_and_memoryview_become_bytes() -> None:
    assert encode(bytearray(b"ab")) == (b"ab", BYTES)
    assert encode(memoryview(b"cd")) == (b"cd", BYTES)


def test_model_round_trip_via_json() -> None:
    raw, ct = encode(Order(id=7, item="pen", qty=2))
    assert ct == JSON
    assert decode(raw, ct) == {"id": 7, "item": "pen", "qty": 2}
    assert validate(Order, raw, ct) == Order(id=7, item="pen", qty=2)


def test_message_payload_decodes_by_content_type() -> None:
    raw, ct = encode({"a": 1})
    assert Message(id="1", topic="t", value=raw, content_type=ct).payload == {"a": 1}
    assert Message(id="1", topic="t", value=b"\x00").payload == b"\x00"


def test_unknown_content_type_stays_bytes() -> None:
    assert decode(b'{"a":1}', "application/x-something") == b'{"a":1}'


@pytest.mark.parametrize(
    "value",
    [
        object(),
        {1, 2},
        float("nan"),
        float("inf"),
        {"t": datetime.datetime(2024, 1, 1)},
        decimal.Decimal("1.5"),
        {("tuple", "key"): 1},
    ],
)
def test_unencodable_raises_payload_error(value: Any) -> None:
    with pytest.raises(PayloadError) as info:
        encode(value)
    assert "send bytes, str, a JSON-compatible value" in str(info.value)
    assert type(value).__name__ in str(info.value)


def test_bad_text_and_bad_json_raise_payload_error() -> None:
    with pytest.raises(PayloadError, match="UTF-8"):
        decode(b"\xff\xfe", TEXT)
    with pytest.raises(PayloadError, match="JSON"):
        decode(b"{not json", JSON)


@pytest.mark.parametrize(
    ("raw", "ct", "fragment"),
    [
        (b'{"id": 1, "item": "pen", "qty": 0}', JSON, "qty"),
        (b'{"id": "x", "item": "pen", "qty": 1}', JSON, "id"),
        (b'{"item": "pen"}', JSON, "id"),
        (b"not json at all", TEXT, "Order"),
        (b"\x00\x01", BYTES, "Order"),
    ],
)
def test_model_validation_failure_raises_payload_error(raw: bytes, ct: str, fragment: str) -> None:
    with pytest.raises(PayloadError) as info:
        validate(Order, raw, ct)
    assert "does not validate as Order" in str(info.value)
    assert fragment in str(info.value)
