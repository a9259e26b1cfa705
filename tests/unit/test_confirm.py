"""Confirm: a batch never fails half-way in silence."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator

import pytest

import mqkit
from mqkit.adapter import PublishOutcome
from mqkit.backends.memory import reset
from mqkit.errors import PublishError
from mqkit.message import Receipt
from mqkit.policies.confirm import receipts_or_raise
from mqkit.producer import OutgoingMessage
from tests.helpers.flaky_adapter import FlakyAdapter


def _receipt(i: int) -> Receipt:
    return Receipt(f"id{i}", "t", True, 0, i)


def test_all_confirmed_returns_receipts_in_order() -> None:
    ids = ["id0", "id1", "id2"]
    outcomes: list[PublishOutcome] = [_receipt(0), _receipt(1), _receipt(2)]
    assert receipts_or_raise("t", ids, outcomes) == outcomes


def test_mixed_outcomes_list_exactly_the_failed_ones() -> None:
    ids = [f"id{i}" for i in range(6)]
    boom1, boom4 = TimeoutError("no ack"), ConnectionError("gone")
    outcomes: list[PublishOutcome] = [
        _receipt(0),
        boom1,
        _receipt(2),
        _receipt(3),
        boom4,
        _receipt(5),
    ]
    with pytest.raises(PublishError) as info:
        receipts_or_raise("t", ids, outcomes)
    err = info.value
    assert [(i, mid) for i, mid, _ in err.failed] == [(1, "id1"), (4, "id4")]
    assert [cause for _, _, cause in err.failed] == [boom1, boom4]
    assert [r.id for r in err.receipts] == ["id0", "id2", "id3", "id5"]
    assert "2 of 6" in str(err)
    assert "re-send" in str(err)
    assert err.__cause__ is boom1


def test_wrong_number_of_outcomes_fails_everything() -> None:
    with pytest.raises(PublishError) as info:
        receipts_or_raise("t", ["a", "b"], [_receipt(0)])
    assert [(i, mid) for i, mid, _ in info.value.failed] == [(0, "a"), (1, "b")]
    assert info.value.receipts == []


def test_single_failure_is_an_mqerror() -> None:
    with pytest.raises(mqkit.MQError):
        receipts_or_raise("t", ["a"], [OSError("disk full")])


@pytest.fixture
def flaky() -> Iterator[mqkit.Client]:
    name = uuid.uuid4().hex
    warnings.simplefilter("ignore")
    client = mqkit.connect(
        {
            "url": f"memory://{name}",
            "options": {"adapter": "tests.helpers.flaky_adapter:FlakyAdapter"},
        }
    )
    try:
        yield client
    finally:
        client.close()
        reset(name)


def test_send_many_reports_failed_indexes_and_ids_and_keeps_the_others(
    flaky: mqkit.Client,
) -> None:
    assert isinstance(flaky.adapter, FlakyAdapter)
    flaky.declare("t", groups=["g"])
    batch = [
        OutgoingMessage(b"ok-0", id="m0"),
        OutgoingMessage(b"fail-1", id="m1"),
        OutgoingMessage(b"ok-2", id="m2"),
        OutgoingMessage(b"fail-3", id="m3"),
    ]
    with pytest.raises(PublishError) as info:
        flaky.producer().send_many("t", batch)
    err = info.value
    assert [(i, mid) for i, mid, _ in err.failed] == [(1, "m1"), (3, "m3")]
    assert all(isinstance(c, ConnectionError) for _, _, c in err.failed)
    assert [(r.id, r.confirmed) for r in err.receipts] == [("m0", True), ("m2", True)]
    got = [d.message.id for d in flaky.consumer("t", group="g").iter(timeout=0.3)]
    assert got == ["m0", "m2"]


def test_send_raises_publish_error_when_not_confirmed(flaky: mqkit.Client) -> None:
    flaky.declare("t")
    with pytest.raises(PublishError) as info:
        flaky.producer().send("t", b"fail now", id="x")
    assert [(i, mid) for i, mid, _ in info.value.failed] == [(0, "x")]
    assert info.value.receipts == []


def test_confirmed_send_returns_a_confirmed_receipt(flaky: mqkit.Client) -> None:
    receipt = flaky.producer().send("t", b"fine", id="y")
    assert receipt.confirmed
    assert receipt.id == "y"
    assert receipt.topic == "t"
    assert receipt.offset == 0


def test_receipts_compare_and_hash_by_value() -> None:
    a = Receipt("m1", "t", True, 0, 5, 1.5)
    b = Receipt("m1", "t", True, 0, 5, 1.5)
    assert a == b
    assert {a, b} == {a}
    assert a != Receipt("m1", "t", True, 0, 6, 1.5)
