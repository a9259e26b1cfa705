"""The consumer: policy-driven handling of one group's messages.

``run(handler)`` is the loop most applications want: TTL check, dedupe, the
handler, ack after success, retry with backoff, dead letter at the end.
``iter()`` hands deliveries to the caller, who settles them.

Retries happen in the consumer (the message stays leased) rather than through
the broker, so they work the same on every backend and a key's later messages
simply wait in its lane: per-key order holds through retries without blocking
other keys.  Held messages are given back to the group on close.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import logging
import sys
import threading
import time
import typing
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from mqkit.adapter import Inbound, Subscription
from mqkit.codecs import validate
from mqkit.delivery import Delivery, Reject, Settled
from mqkit.errors import Closed, PayloadError, PublishError
from mqkit.message import Message
from mqkit.policies.deadletter import Reason, dead_letter_record, dlq_topic
from mqkit.policies.dedupe import Claim, DedupeStore, dedupe_key, new_owner, open_store
from mqkit.policies.retry import backoff_delay, should_retry
from mqkit.policies.serial_lock import (
    LockHandle,
    SerialBusy,
    SerialLock,
    holding,
    open_serial_lock,
    take,
)
from mqkit.policy import Policy

if TYPE_CHECKING:
    from mqkit.client import Client

__all__ = ["Consumer", "RunStats"]

log = logging.getLogger("mqkit.consumer")
Handler = Callable[..., Any]


@dataclass
class RunStats:
    """What one ``run`` did, for logs and tests."""

    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    duplicates: int = 0


def bind_handler(handler: Handler) -> Callable[[Message], Any]:
    """Call ``handler`` with the Message, or a validated model if its first parameter asks."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return handler
    if not params:
        raise TypeError("a handler takes the message (or a pydantic model) as first argument")
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # unresolvable annotations: treat as untyped
        hints = {}
    ann = hints.get(params[0].name)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        model = ann

        def call_model(message: Message) -> Any:
            return handler(validate(model, message.value, message.content_type))

        return call_model
    return handler


class Consumer:
    """One member of ``group`` on ``topic``; see the module docstring."""

    def __init__(self, client: Client, topic: str, group: str, policy: Policy) -> None:
        self._client = client
        self.topic = topic
        self.group = group
        self.policy = policy
        self._store: DedupeStore | None = open_store(policy.dedupe)
        self._serial: SerialLock | None = open_serial_lock(policy.serial_lock)
        self._owner = new_owner()
        self._tokens = itertools.count()
        self._sub: Subscription = client.adapter.subscribe(
            topic, group, prefetch=policy.prefetch, ordered=policy.ordering == "per_key"
        )
        self._closing = threading.Event()
        self._closed = False
        self._running = threading.Lock()
        self._unsettled = 0
        self._state_lock = threading.Lock()
        self.stats = RunStats()
        self._on_handled: Callable[[Delivery], None] | None = None  # test hook: crash points

    # -- settling (called by Delivery) -------------------------------------------

    def _release_claim(self, d: Delivery) -> None:
        if self._store is not None and d.claimed is not None:
            self._store.release(self._dedupe_key(d), d.claimed)
            d.claimed = None

    def _done(self) -> None:
        with self._state_lock:
            self._unsettled -= 1

    def _settle_ack(self, d: Delivery) -> None:
        """The broker side of ``Delivery.ack`` (which has counted the delivery settled)."""
        if self._store is not None and d.claimed is not None:
            self._store.complete(self._dedupe_key(d), d.claimed, self.policy.dedupe_ttl)
        self._sub.ack(d.inbound)

    def _settle_nack(self, d: Delivery, delay: float) -> None:
        self._release_claim(d)
        self._sub.nack(d.inbound, delay=delay)
        self._done()

    def _dead_letter(self, d: Delivery, reason: Reason, error: BaseException | str | None) -> None:
        """Publish to ``<topic>.dlq`` (confirmed), then ack; on failure nothing is acked."""
        rec = dead_letter_record(
            d.inbound.record,
            topic=self.topic,
            group=self.group,
            reason=reason,
            error=error,
            attempts=d.attempt,
        )
        target = dlq_topic(self.topic)
        self._client.ensure_topic(self.topic)
        outcome = self._client.adapter.publish(target, [rec], confirm=True, persistent=True)
        if isinstance(outcome[0], BaseException):
            raise PublishError(
                f"could not dead-letter message {d.message.id} to {target!r}: {outcome[0]}; "
                "it stays unacked and will be redelivered"
            ) from outcome[0]
        # A dead-lettered message may be replayed with the same id: forget it was seen.
        self._release_claim(d)
        self._sub.ack(d.inbound)
        self._done()
        self.stats.dead_lettered += 1

    def _dedupe_key(self, d: Delivery) -> str:
        return dedupe_key(self.topic, self.group, d.message.id)

    # -- admission: TTL, dedupe, auto-ack ----------------------------------------

    def _admit(self, inbound: Inbound, *, claim: bool, counted: bool = False) -> Delivery | None:
        """``counted``: the caller added it to ``_unsettled`` already (a whole fetch at once)."""
        if not counted:
            with self._state_lock:
                self._unsettled += 1
        d = Delivery(self, inbound, inbound.attempt)
        if d.message.expired():
            self._dead_letter_safely(d, Reason.EXPIRED, "message expired before it was handled")
            return None
        if claim and self._store is not None:
            busy = self._claim(d)
            if busy is not None:
                # Someone is handling this id right now (or crashed mid-way): the
                # caller of iter() cannot wait for it, so the group gets it back.
                d.nack(delay=busy)
                return None
            if d.claimed is None:
                return None  # a duplicate, already acked
        if self.policy.ack == "auto":
            d.ack()
        return d

    def _claim(self, d: Delivery) -> float | None:
        """Take the dedupe marker.

        Returns None when claimed (``d.claimed`` set) or when the id was already
        handled (then ``d`` is acked here); else seconds to wait before trying
        again, because another delivery of the id holds the marker.
        """
        assert self._store is not None
        # One token per delivery: a second copy of the id in this same consumer
        # must see the first as busy, not as its own claim.
        token = d.claimed or f"{self._owner}:{next(self._tokens)}"
        result = self._store.claim(self._dedupe_key(d), token, self.policy.processing_timeout)
        if result.state is Claim.CLAIMED:
            d.claimed = token
            return None
        if result.state is Claim.DUPLICATE:
            self.stats.duplicates += 1
            d.ack()
            return None
        # Poll again soon rather than at lease end: the holder usually finishes fast.
        return min(max(result.retry_after, 0.05), 1.0)

    # -- iter --------------------------------------------------------------------

    def iter(self, timeout: float | None = None) -> Iterator[Delivery]:
        """Yield deliveries until none arrives for ``timeout`` seconds (None: until close)."""
        idle_since = time.monotonic()
        while not self._closing.is_set():
            now = time.monotonic()
            room = self.policy.prefetch - self._unsettled
            if room > 0 and not self._sub.ready:
                # Rejoining is not idleness -- unless the caller holds the whole window
                # and waits for more: then nothing can come, and the timeout must end it.
                idle_since = now
            remaining = None if timeout is None else timeout - (now - idle_since)
            if remaining is not None and remaining <= 0:
                return
            wait = 0.5 if remaining is None else min(remaining, 0.5)
            if room <= 0:
                self._closing.wait(min(wait, 0.05))
                continue
            got = self._sub.fetch(room, wait)
            for i, inbound in enumerate(got):
                idle_since = time.monotonic()
                d = self._admit(inbound, claim=True)
                if d is not None:
                    try:
                        yield d
                    except GeneratorExit:
                        # The caller stopped iterating (break): give back what was
                        # fetched but never handed out, or it stays leased until close.
                        if not self._closing.is_set():
                            for rest in got[i + 1 :]:
                                self._sub.nack(rest, delay=0.0)
                        raise

    def __iter__(self) -> Iterator[Delivery]:
        return self.iter()

    # -- run ---------------------------------------------------------------------

    def run(
        self,
        handler: Handler,
        *,
        idle_timeout: float | None = None,
        max_messages: int | None = None,
    ) -> RunStats:
        """Handle messages until idle, a message limit, or ``close()`` from another thread."""
        if self._closed:
            raise Closed("this consumer is closed; create a new one with mq.consumer()")
        invoke = bind_handler(handler)
        per_key = self.policy.ordering == "per_key"
        # per_key: a lane (deque) per key, and ``ready``/``timers`` hold keys whose lane
        # head may go next.  Otherwise no lanes: they hold the deliveries themselves.
        lanes: dict[Any, deque[Delivery]] = {}
        ready: deque[Any] = deque()
        timers: list[tuple[float, int, Any]] = []
        seq = itertools.count()
        held = 0  # admitted, not finished: in ready, in a lane or waiting for a retry
        prefetch = self.policy.prefetch
        refill_at = max(1, prefetch // 4)
        closing = self._closing
        sub = self._sub
        limit = max_messages if max_messages is not None else sys.maxsize
        settled = 0  # handled, dead-lettered or recognised as duplicates: for max_messages
        # A top-up with work in hand found nothing: no more of those until the work in hand
        # is done (else every message would ask again -- most of the fetches, all empty,
        # when the handler is faster than the broker delivers).
        topped_up_empty = False
        last_activity = time.monotonic()
        with self._running:
            try:
                while not closing.is_set():
                    now = time.monotonic()
                    if not sub.ready:
                        last_activity = now
                    while timers and timers[0][0] <= now:
                        ready.append(heapq.heappop(timers)[2])
                    if settled >= limit:
                        break
                    if (
                        idle_timeout is not None
                        and not held
                        and now - last_activity >= idle_timeout
                    ):
                        break
                    room = min(prefetch - held, limit - settled - held)
                    # With work in hand, refill only once a quarter of the window is
                    # free: one fetch per slot would cost a broker call per message.
                    if room > 0 and (not ready or (room >= refill_at and not topped_up_empty)):
                        if ready:
                            wait = 0.0
                        else:
                            wait = 0.5
                            if timers:
                                wait = min(wait, max(0.0, timers[0][0] - now))
                            if idle_timeout is not None and not held:
                                wait = min(wait, max(0.0, idle_timeout - (now - last_activity)))
                        got = sub.fetch(room, wait)
                        topped_up_empty = bool(ready) and not got
                        if got:
                            # Counted as unsettled in one step (the window's bookkeeping).
                            with self._state_lock:
                                self._unsettled += len(got)
                        for inbound in got:
                            d = self._admit(inbound, claim=False, counted=True)
                            if d is None:
                                continue
                            held += 1
                            if not per_key:
                                ready.append(d)
                                continue
                            key: Any = d.message.key
                            if key is None:
                                key = next(seq)
                            lane = lanes.get(key)
                            if lane is None:
                                lanes[key] = deque([d])
                                ready.append(key)
                            else:
                                lane.append(d)
                        if got:
                            last_activity = time.monotonic()
                    elif not ready:
                        self._sub_heartbeat()
                        closing.wait(max(0.0, min(0.5, timers[0][0] - now)) if timers else 0.05)
                    if not ready:
                        continue
                    # Work off what is ready in a tight loop, until the window wants a
                    # refill, a retry falls due, the limit is reached or close() is asked.
                    # A delivery leaves ready/its lane only once processed: if _process
                    # raises, the finally below still gives it back.
                    while ready:
                        if per_key:
                            key = ready[0]
                            lane = lanes[key]
                            retry_in = self._process(lane[0], invoke)
                            ready.popleft()
                            if retry_in is None:
                                lane.popleft()
                                if lane:
                                    ready.append(key)
                                else:
                                    del lanes[key]
                        else:
                            retry_in = self._process(ready[0], invoke)
                            key = ready.popleft()
                        if retry_in is None:
                            held -= 1
                            settled += 1
                        else:
                            heapq.heappush(timers, (time.monotonic() + retry_in, next(seq), key))
                        if (
                            prefetch - held >= refill_at
                            or settled >= limit
                            or closing.is_set()
                            or (timers and timers[0][0] <= time.monotonic())
                        ):
                            break
                    last_activity = time.monotonic()
            finally:
                # Give back what we hold but did not finish: redelivered, never lost.
                # Best effort: if the broker already took them back (this member was
                # evicted, or the connection is gone) the error must not hide why run()
                # ended, nor stop the others from being given back.
                if per_key:
                    leftover = [d for lane in lanes.values() for d in lane]
                else:
                    leftover = [*ready, *(t[2] for t in timers)]
                for d in leftover:
                    if d.state is Settled.PENDING:
                        try:
                            d.nack(delay=0.0)
                        except Exception as exc:
                            log.warning("could not give back %s: %r", d.message.id, exc)
        return self.stats

    def _sub_heartbeat(self) -> None:
        beat = getattr(self._sub, "heartbeat", None)
        if beat is not None:
            beat()

    def _process(self, d: Delivery, invoke: Callable[[Message], Any]) -> float | None:
        """Handle one delivery; None when settled, else seconds until the retry."""
        if d.message.expired():
            self._dead_letter_safely(
                d, Reason.EXPIRED, "message expired while waiting to be handled"
            )
            return None
        # Claim (again) right before the handler: a claim taken at admission may have
        # run out while the message waited in its lane; re-claiming renews it, or finds
        # the id done (or taken) by someone else meanwhile.
        if self._store is not None:
            busy = self._claim(d)
            if busy is not None:
                return busy  # held here, its lane waits; no attempt is used up
            if d.claimed is None:
                return None  # a duplicate: acked without running the handler
        try:
            lock = (
                None
                if self._serial is None
                else take(self._serial, self.topic, self.group, d.message.key)
            )
        except SerialBusy as exc:  # another instance handles this key now: wait, keep attempts
            return exc.retry_after
        try:
            if self._serial is None:
                invoke(d.message)  # the common case, without _invoke's extra call
            else:
                self._invoke(invoke, d, lock)
        except Reject as exc:
            return self._give_up(d, Reason.REJECTED, exc)
        except PayloadError as exc:
            return self._give_up(d, Reason.INVALID, exc)
        except Exception as exc:
            if should_retry(d.attempt, self.policy.max_attempts):
                delay = backoff_delay(d.attempt, self.policy.backoff)
                log.info(
                    "retrying %s (attempt %d) in %.2fs: %r", d.message.id, d.attempt, delay, exc
                )
                d.attempt += 1
                self.stats.retried += 1
                return delay
            if not self.policy.dead_letter:
                log.warning("giving %s back after %d attempts: %r", d.message.id, d.attempt, exc)
                d.nack(delay=self.policy.backoff[2])
                self.stats.handled += 1
                return None
            return self._give_up(d, Reason.FAILED, exc)
        if self._store is not None and d.claimed is not None:
            self._store.complete(self._dedupe_key(d), d.claimed, self.policy.dedupe_ttl)
            d.claimed = None  # done is recorded; the ack below must not redo it
        if self._on_handled is not None:
            self._on_handled(d)
        d.ack()
        self.stats.handled += 1
        return None

    def _invoke(
        self, invoke: Callable[[Message], Any], d: Delivery, lock: LockHandle | None
    ) -> None:
        if self._serial is None:
            invoke(d.message)
            return
        with holding(self._serial, lock):
            invoke(d.message)

    def _give_up(self, d: Delivery, reason: Reason, exc: BaseException) -> float | None:
        self._dead_letter_safely(d, reason, exc)
        self.stats.handled += 1
        return None

    def _dead_letter_safely(self, d: Delivery, reason: Reason, exc: BaseException | str) -> None:
        """Dead-letter; if the DLQ cannot be written, give the message back instead."""
        try:
            d.state = Settled.REJECTED
            self._dead_letter(d, reason, exc)
        except PublishError:
            d.state = Settled.PENDING
            log.exception("dead-lettering %s failed; it goes back to the group", d.message.id)
            d.nack(delay=self.policy.backoff[2])

    # -- closing -----------------------------------------------------------------

    def close(self) -> None:
        """Finish the handler in progress, give back held messages, leave the group."""
        if self._closed:
            return
        self._closing.set()
        with self._running:  # waits for run() to finish its current message
            self._closed = True
            self._sub.close()
            if self._serial is not None and isinstance(self.policy.serial_lock, str):
                self._serial.close()  # opened from a URL here: ours to close

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
