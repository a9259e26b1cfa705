"""The RocketMQ adapter's ordered sender against a fake producer that reorders.

The fake stores whatever is in flight newest first (what the proxy may do with two
messages of one group sent together), so a key stays in order only if the sender never
has two of its records in flight at once.  No broker needed.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest

from mqkit.errors import PublishError

_sender = importlib.import_module("mqkit.adapters.rocketmq.sender")
Item: Any = _sender.Item
OrderedSender: Any = _sender.OrderedSender


@dataclass(frozen=True)
class Msg:
    group: str | None
    seq: int


class Boom(Exception):
    """The fake broker refused a message."""


class ReorderingProducer:
    """send_async/send like the SDK's Producer; stores what is in flight newest first."""

    def __init__(self, *, fail: frozenset[Msg] = frozenset(), hang: frozenset[Msg] = frozenset()):
        self.fail, self.hang = fail, hang
        self.stored: list[Msg] = []
        self.max_in_flight: dict[str | None, int] = {}
        self._in_flight: list[tuple[Msg, Future[Any]]] = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._broker, daemon=True)
        self._thread.start()

    def send_async(self, msg: Msg) -> Future[Any]:
        f: Future[Any] = Future()
        with self._cv:
            self._in_flight.append((msg, f))
            n = sum(1 for m, _ in self._in_flight if m.group == msg.group)
            self.max_in_flight[msg.group] = max(self.max_in_flight.get(msg.group, 0), n)
            self._cv.notify()
        return f

    def send(self, msg: Msg) -> Any:
        return self.send_async(msg).result(timeout=10)

    def _broker(self) -> None:
        while True:
            with self._cv:
                while not self._in_flight and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
            time.sleep(0.005)  # let more arrive, then store the newest first
            with self._cv:
                batch, self._in_flight = self._in_flight, []
            for msg, f in reversed(batch):
                if msg in self.hang:
                    continue
                if msg in self.fail:
                    f.set_exception(Boom(f"refused {msg}"))
                else:
                    self.stored.append(msg)
                    f.set_result(("receipt", msg))

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(5)

    def order_of(self, group: str) -> list[int]:
        return [m.seq for m in self.stored if m.group == group]


@pytest.fixture
def producer() -> Iterator[ReorderingProducer]:
    p = ReorderingProducer()
    yield p
    p.close()


def items(groups: list[str | None], per_group: int) -> list[Any]:
    """Interleaved: seq 0 of every group, then seq 1 ..."""
    return [
        Item(None if g is None else ("t", g), Msg(g, s)) for s in range(per_group) for g in groups
    ]


def test_each_group_is_stored_in_send_order_and_groups_stay_pipelined(
    producer: ReorderingProducer,
) -> None:
    groups: list[str | None] = [f"k{i}" for i in range(5)]
    batch = items([*groups, None], 6)
    results = OrderedSender(producer, guard=10).send(batch, confirm=True)
    assert all(isinstance(r, Future) and r.done() and r.exception() is None for r in results)
    assert [r.result()[1] for r in results] == [it.message for it in batch]
    for g in groups:
        assert g is not None
        assert producer.order_of(g) == list(range(6)), g
        assert producer.max_in_flight[g] == 1
    assert producer.max_in_flight[None] > 1  # records without a key all go at once
    assert len(producer.stored) == len(batch)


def test_a_failure_stops_its_group_only_and_every_outcome_is_reported() -> None:
    p = ReorderingProducer(fail=frozenset({Msg("a", 1)}))
    try:
        batch = items(["a", "b", None], 4)
        results = OrderedSender(p, guard=10).send(batch, confirm=True)
    finally:
        p.close()
    outcome = {it.message: r for it, r in zip(batch, results, strict=True)}
    assert isinstance(outcome[Msg("a", 0)], Future)
    err = outcome[Msg("a", 1)]
    assert isinstance(err, Future)
    assert isinstance(err.exception(), Boom)
    for s in (2, 3):  # never sent: they would be stored ahead of a-1
        not_sent = outcome[Msg("a", s)]
        assert isinstance(not_sent, PublishError)
        assert "not sent" in str(not_sent)
    assert p.order_of("a") == [0]
    assert p.order_of("b") == [0, 1, 2, 3]
    assert len([m for m in p.stored if m.group is None]) == 4


def test_order_holds_across_unconfirmed_and_confirmed_calls(producer: ReorderingProducer) -> None:
    sender = OrderedSender(producer, guard=10)
    for s in range(0, 9, 3):  # unconfirmed calls return with their last record in flight
        out = sender.send([Item(("t", "k"), Msg("k", s + j)) for j in range(3)], confirm=False)
        assert all(isinstance(r, Future) for r in out)
    last = sender.send([Item(("t", "k"), Msg("k", 9))], confirm=True)  # the blocking send
    assert isinstance(last[0], Future)
    assert last[0].exception() is None
    assert producer.order_of("k") == list(range(10))
    assert producer.max_in_flight["k"] == 1


def test_threads_sharing_a_key_never_have_two_of_it_in_flight(
    producer: ReorderingProducer,
) -> None:
    sender = OrderedSender(producer, guard=10)

    def worker(w: int) -> None:
        for s in range(5):
            sender.send([Item(("t", "k"), Msg("k", w * 100 + s))], confirm=w % 2 == 0)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    deadline = time.monotonic() + 5
    while len(producer.stored) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert producer.max_in_flight["k"] == 1
    for w in range(4):  # each thread's own sends keep their order
        mine = [s for s in producer.order_of("k") if s // 100 == w]
        assert mine == [w * 100 + s for s in range(5)]


def test_no_receipt_within_the_guard_is_an_error_and_stops_the_group() -> None:
    p = ReorderingProducer(hang=frozenset({Msg("a", 0)}))
    try:
        batch = items(["a", "b"], 2)
        results = OrderedSender(p, guard=0.3).send(batch, confirm=True)
    finally:
        p.close()
    outcome = {it.message: r for it, r in zip(batch, results, strict=True)}
    assert isinstance(outcome[Msg("a", 0)], PublishError)
    assert "may or may not be stored" in str(outcome[Msg("a", 0)])
    assert isinstance(outcome[Msg("a", 1)], PublishError)
    assert p.order_of("a") == []
    assert p.order_of("b") == [0, 1]
