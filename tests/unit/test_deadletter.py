"""Dead-letter records: the original kept byte for byte, the reason added, replay restores."""

from __future__ import annotations

import pytest

from mqkit.message import (
    DLQ_ATTEMPTS,
    DLQ_ERROR,
    DLQ_GROUP,
    DLQ_HEADERS,
    DLQ_REASON,
    DLQ_TOPIC,
    H_CONTENT_TYPE,
    H_DELIVER_AT,
    H_EXPIRES,
    H_ID,
    H_TS,
    Record,
)
from mqkit.policies.deadletter import (
    MAX_ERROR_TEXT,
    Reason,
    dead_letter_record,
    dlq_topic,
    restore_record,
)


def _original() -> Record:
    return Record(
        key="user-42",
        value=b"\x00\xffpayload",
        headers={
            "trace": "abc",
            "h": "v",
            H_ID: "order-1",
            H_TS: "1700000000.5",
            H_CONTENT_TYPE: "bytes",
            H_EXPIRES: "1700000060.5",
            H_DELIVER_AT: "1700000001.0",
        },
    )


def test_dlq_topic_name() -> None:
    assert dlq_topic("orders") == "orders.dlq"


def test_headers_name_topic_group_reason_error_attempts() -> None:
    rec = dead_letter_record(
        _original(),
        topic="orders",
        group="billing",
        reason=Reason.FAILED,
        error=ValueError("card declined"),
        attempts=5,
    )
    assert rec.headers[DLQ_TOPIC] == "orders"
    assert rec.headers[DLQ_GROUP] == "billing"
    assert rec.headers[DLQ_REASON] == "failed"
    assert rec.headers[DLQ_ERROR] == "ValueError: card declined"
    assert rec.headers[DLQ_ATTEMPTS] == "5"
    assert set(DLQ_HEADERS) == {
        "mqkit_dlq_topic",
        "mqkit_dlq_group",
        "mqkit_dlq_reason",
        "mqkit_dlq_error",
        "mqkit_dlq_attempts",
    }


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        (Reason.FAILED, "failed"),
        (Reason.EXPIRED, "expired"),
        (Reason.INVALID, "invalid"),
        (Reason.REJECTED, "rejected"),
        ("custom", "custom"),
    ],
)
def test_reason_values(reason: Reason | str, text: str) -> None:
    rec = dead_letter_record(
        _original(), topic="t", group="g", reason=reason, error=None, attempts=1
    )
    assert rec.headers[DLQ_REASON] == text
    assert rec.headers[DLQ_ERROR] == ""


def test_original_value_key_id_and_headers_preserved() -> None:
    orig = _original()
    rec = dead_letter_record(
        orig, topic="orders", group="g", reason="rejected", error="no", attempts=1
    )
    assert rec.value == orig.value
    assert rec.key == orig.key
    assert rec.id == "order-1"
    for k in ("trace", "h", H_ID, H_TS, H_CONTENT_TYPE):
        assert rec.headers[k] == orig.headers[k]
    # the input record is not modified
    assert DLQ_REASON not in orig.headers
    assert H_EXPIRES in orig.headers


def test_expiry_and_deliver_at_removed() -> None:
    rec = dead_letter_record(
        _original(), topic="t", group="g", reason=Reason.EXPIRED, error="x", attempts=1
    )
    assert H_EXPIRES not in rec.headers
    assert H_DELIVER_AT not in rec.headers
    assert rec.expires_at is None
    assert rec.deliver_at is None


def test_error_text_is_bounded() -> None:
    rec = dead_letter_record(
        _original(),
        topic="t",
        group="g",
        reason="failed",
        error=RuntimeError("x" * 10_000),
        attempts=3,
    )
    assert len(rec.headers[DLQ_ERROR]) == MAX_ERROR_TEXT
    assert rec.headers[DLQ_ERROR].startswith("RuntimeError: xxx")


def test_dead_lettering_a_dead_letter_keeps_the_first_topic() -> None:
    first = dead_letter_record(
        _original(), topic="orders", group="g", reason="failed", error="a", attempts=5
    )
    second = dead_letter_record(
        first, topic="orders.dlq", group="default", reason="failed", error="b", attempts=1
    )
    assert second.headers[DLQ_TOPIC] == "orders"
    assert second.headers[DLQ_GROUP] == "default"
    assert second.headers[DLQ_ERROR] == "b"


def test_restore_record_strips_dlq_headers() -> None:
    orig = _original()
    rec = dead_letter_record(
        orig, topic="orders", group="g", reason="failed", error="e", attempts=2
    )
    topic, restored = restore_record(rec)
    assert topic == "orders"
    assert not set(DLQ_HEADERS) & set(restored.headers)
    assert restored.value == orig.value
    assert restored.key == orig.key
    expected = {k: v for k, v in orig.headers.items() if k not in (H_EXPIRES, H_DELIVER_AT)}
    assert restored.headers == expected


def test_restore_record_without_dlq_headers() -> None:
    topic, restored = restore_record(Record(None, b"x", {"a": "b"}))
    assert topic is None
    assert restored.headers == {"a": "b"}
