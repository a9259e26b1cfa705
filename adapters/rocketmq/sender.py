"""Pipelined sends that keep the order of every FIFO message group.

Why: the SDK's ``send_async`` puts each message on the wire at once, and two messages of
one message group that are in flight together may be stored either way round (a retry of
the first also lands after the second): a ``send_many`` over a few keys stored some keys
out of order.  RocketMQ keeps a group's order only for sends that are sequential, the next
leaving after the previous one's receipt.

So a call is sent as lanes: records without a group all go at once, as before; the records
of one group form one lane and go one after the other, each after the previous one's
outcome; lanes are in flight together.  The caller's thread drives the
lanes: a finished send only wakes it (a queue), so no SDK callback sends anything and a long
lane costs no recursion.

The order also holds across calls and threads: a call takes over, per group, the tail of that
group's chain, and its lane starts once the previous holder (an unconfirmed send still in
flight, another thread's batch) has its outcome.  With ``confirm=False`` a call returns once
every record is sent: only the last record of each lane may still be in flight.

A record whose predecessor of the same group in the same call failed is not sent -- it would
be stored ahead of the failed one, and re-sending that could never restore the order.  It
fails with a PublishError saying so; re-sending the failed records, in order, does.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from mqkit.errors import PublishError

__all__ = ["ChainKey", "Item", "OrderedSender", "SendResult"]

ChainKey = tuple[str, str]
"""(RocketMQ topic, message group): the unit whose order RocketMQ keeps."""

SendResult = Future[Any] | BaseException
"""Per record: the SDK's send future (done unless ``confirm=False``), or why it was not stored."""


@dataclass(slots=True)
class Item:
    """One record to send: its chain (None: no message group) and the driver message, or the
    exception that stopped building it."""

    chain: ChainKey | None
    message: Any


@dataclass(eq=False, slots=True)
class _Lane:
    chain: ChainKey
    todo: deque[int]
    tail: Future[None] = field(default_factory=Future)  # settled when this lane has settled
    blocker: Future[None] | None = None  # the previous holder's tail
    current: Future[Any] | None = None  # the send in flight
    index: int = -1  # the record of ``current``
    failed: int | None = None  # the first record of this lane that was not stored
    since: float = 0.0  # when the lane began waiting for ``blocker`` or ``current``
    watching: Future[Any] | None = None  # what the driver waits on; None: nothing
    released: bool = False  # ``tail`` settled


class OrderedSender:
    """Sends a call's records pipelined across message groups, in order within each group."""

    def __init__(self, producer: Any, guard: float) -> None:
        self._producer = producer
        self._guard = guard  # longest wait for one outcome (the SDK's retries included)
        self._lock = threading.Lock()
        self._tails: dict[ChainKey, Future[None]] = {}

    def send(self, items: Sequence[Item], *, confirm: bool) -> list[SendResult]:
        """One result per item, in order; with ``confirm`` every future is done."""
        if confirm and len(items) == 1:
            return [self._send_one(items[0])]
        results: list[SendResult | None] = [None] * len(items)
        lanes: dict[ChainKey, _Lane] = {}
        free: list[int] = []  # records without a group: all sent at once
        for i, item in enumerate(items):
            if item.chain is None:
                free.append(i)
                results[i] = self._start(item.message)
                continue
            lane = lanes.get(item.chain)
            if lane is None:
                lane = lanes[item.chain] = _Lane(item.chain, deque())
            lane.todo.append(i)
        if lanes:
            self._take_tails(lanes.values())
            try:
                self._drive(items, list(lanes.values()), results, confirm)
            finally:
                for lane in lanes.values():
                    self._release(lane)
        if confirm:
            for i in free:
                f = results[i]
                if isinstance(f, Future):
                    try:
                        f.exception(timeout=self._guard)
                    except TimeoutError:
                        results[i] = _no_receipt(self._guard)
        missing = PublishError("not sent: the batch was abandoned (internal error)")
        return [missing if r is None else r for r in results]

    def _start(self, msg: Any) -> SendResult:
        """``send_async`` of one driver message (or the error that stopped building it)."""
        if isinstance(msg, BaseException):
            return msg
        try:
            sent: Future[Any] = self._producer.send_async(msg)
        except Exception as exc:
            return exc
        return sent

    # -- one record with a receipt: the SDK's blocking send --------------------------------

    def _send_one(self, item: Item) -> SendResult:
        """A confirmed single record: ``send`` waits on the RPC itself, without the hop
        through the SDK's callback threads that ``send_async`` takes."""
        if isinstance(item.message, BaseException):
            return item.message
        lane: _Lane | None = None
        if item.chain is not None:
            lane = _Lane(item.chain, deque((0,)))
            self._take_tails((lane,))
        try:
            if lane is not None and lane.blocker is not None:
                try:
                    lane.blocker.exception(timeout=self._guard)
                except TimeoutError:
                    return _stuck(lane.chain, self._guard)
            done: Future[Any] = Future()
            try:
                done.set_result(self._producer.send(item.message))
            except Exception as exc:
                return exc
            return done
        finally:
            if lane is not None:
                self._release(lane)

    # -- chains across calls ---------------------------------------------------------------

    def _take_tails(self, lanes: Iterable[_Lane]) -> None:
        """Become the tail of each lane's chain; the previous tail, if unsettled, blocks it."""
        with self._lock:
            for lane in lanes:
                prev = self._tails.get(lane.chain)
                if prev is not None and not prev.done():
                    lane.blocker = prev
                self._tails[lane.chain] = lane.tail

    def _release(self, lane: _Lane) -> None:
        """Hand the chain on once nothing of this lane (or before it) can still be stored."""
        for f in (lane.blocker, lane.current):
            if f is not None and not f.done():
                f.add_done_callback(lambda _f: self._release(lane))
                return
        with self._lock:
            if lane.released:  # released from two threads (the caller, a send's callback)
                return
            lane.released = True
            if self._tails.get(lane.chain) is lane.tail:
                del self._tails[lane.chain]
        lane.tail.set_result(None)  # outside the lock: it runs the next holders' callbacks

    # -- the driver ------------------------------------------------------------------------

    def _drive(
        self, items: Sequence[Item], lanes: list[_Lane], results: list[SendResult | None],
        confirm: bool,
    ) -> None:  # fmt: skip
        woken: queue.SimpleQueue[_Lane] = queue.SimpleQueue()
        waiting: set[_Lane] = set()
        now = time.monotonic()

        def advance(lane: _Lane) -> None:
            f = self._step(lane, items, results, confirm)
            lane.watching = f
            if f is not None:
                waiting.add(lane)
                f.add_done_callback(lambda _f: woken.put(lane))
            else:
                self._release(lane)  # the next call of this group need not wait for the rest

        for lane in lanes:
            lane.since = now
            advance(lane)
        scan_every = max(self._guard / 8, 0.5)
        next_scan = time.monotonic() + scan_every
        while waiting:
            try:
                ready: _Lane | None = woken.get(timeout=max(next_scan - time.monotonic(), 0.0))
            except queue.Empty:
                ready = None
            # a wake-up of a lane given up on (expired) is stale: ignored
            if ready in waiting and ready.watching is not None and ready.watching.done():
                waiting.discard(ready)
                advance(ready)
            now = time.monotonic()
            if now >= next_scan:
                next_scan = now + scan_every
                for stuck in [x for x in waiting if now - x.since >= self._guard]:
                    waiting.discard(stuck)
                    self._expire(stuck, results)

    def _step(
        self, lane: _Lane, items: Sequence[Item], results: list[SendResult | None],
        confirm: bool,
    ) -> Future[Any] | None:  # fmt: skip
        """Advance ``lane`` as far as it can go; what it waits on next, or None when done."""
        if lane.blocker is not None:
            if not lane.blocker.done():
                return lane.blocker
            lane.blocker = None
        if lane.current is not None:
            if not lane.current.done():
                return lane.current
            if lane.current.exception() is not None and lane.failed is None:
                lane.failed = lane.index
            lane.current = None
        while lane.todo:
            i = lane.todo.popleft()
            if lane.failed is not None:
                results[i] = _not_sent(lane, i)
                continue
            sent = self._start(items[i].message)
            results[i] = sent
            if isinstance(sent, BaseException):
                lane.failed = i
                continue
            lane.current, lane.index, lane.since = sent, i, time.monotonic()
            if not confirm and not lane.todo:
                return None  # unconfirmed: the last one may stay in flight
            return sent
        return None

    def _expire(self, lane: _Lane, results: list[SendResult | None]) -> None:
        """No outcome within the guard: report it, send nothing more of the lane."""
        if lane.blocker is not None and not lane.blocker.done():
            err = _stuck(lane.chain, self._guard)
            while lane.todo:
                results[lane.todo.popleft()] = err
            return
        if lane.current is not None and not lane.current.done():
            results[lane.index] = _no_receipt(self._guard)
            lane.failed = lane.index
        while lane.todo:
            i = lane.todo.popleft()
            results[i] = _not_sent(lane, i)


def _not_sent(lane: _Lane, i: int) -> PublishError:
    return PublishError(
        f"not sent: message {lane.failed} of this batch, of the same message group "
        f"{lane.chain[1]!r}, was not stored first; sending message {i} would put the key out "
        "of order -- re-send the failed messages in order"
    )


def _no_receipt(guard: float) -> PublishError:
    return PublishError(
        f"no SendReceipt from the RocketMQ proxy within {guard:.0f}s; the message may or may "
        "not be stored"
    )


def _stuck(chain: ChainKey, guard: float) -> PublishError:
    return PublishError(
        f"not sent: an earlier message of message group {chain[1]!r} on {chain[0]} (another "
        f"call or thread) has had no outcome for {guard:.0f}s; sending this one could put the "
        "key out of order"
    )
