"""A member of a RocketMQ consumer group: a SimpleConsumer (pop/ack) with leases.

RocketMQ 5 hands a received message out for an *invisible duration* (a lease);
unacked, it comes back to the group with ``delivery_attempt`` + 1 when the
lease ends.  This subscription:

- keeps one ``receive_async`` in flight (long polling, ``long_polling`` s) and
  waits for it at most the ``fetch`` timeout, so a zero-wait fetch never blocks;
  it asks for at most the room the consumer has, so prefetch bounds what is held;
- renews the lease of every message it holds (``change_invisible_duration``)
  from a background thread while the handler works, so a slow handler does not
  lose its message to another member;
- ``nack(delay)`` = ``change_invisible_duration(delay)`` (whole seconds, rounded
  up): the message comes back after ``delay`` with attempt + 1 (about 3 s later
  on a non-FIFO group: the broker's revive service runs that far behind);
- sends acks in batches (AckMessage with up to 64 entries, one request in
  flight; ``ack`` waits when 256 are queued) -- the SDK acks one message per
  request, which caps a consumer at one round trip per message;
- an ack that cannot reach the proxy (restarting) is retried from that thread
  while the message's lease lasts, and logged if it never gets through (the
  message then comes back: at-least-once, dedupe absorbs it) -- the handler's
  work is not failed for it; an ack the proxy refuses (lease already over) is
  logged the same way;
- ``close`` waits for the acks and the receive in flight and gives back everything not
  settled (lease ended now), so other members get it promptly;
- after repeated receive errors (the proxy restarted and forgot this client's
  settings) it replaces its SimpleConsumer; held messages stay ackable, since
  an ack needs only the group and the message's receipt handle.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from mqkit.adapter import Inbound, Subscription
from mqkit.errors import Closed, ConnectionLost

from .codec import to_record

if TYPE_CHECKING:
    from .adapter import RocketMQAdapter

__all__ = ["RocketMQSubscription"]

log = logging.getLogger("mqkit.adapters.rocketmq")
OK, MULTIPLE_RESULTS = 20000, 30000  # apache.rocketmq.v2.Code
ACK_BATCH = 64  # entries per AckMessage request
MAX_QUEUED_ACKS = 4 * ACK_BATCH
_tokens = itertools.count(1)


class _Held:
    """One received message not yet settled: its lease and its settle lock."""

    __slots__ = ("ack_failed", "gave_back", "lease_end", "lock", "msg", "settled", "token")

    def __init__(self, msg: Any, lease_end: float) -> None:
        self.msg = msg
        self.lease_end = lease_end
        self.lock = threading.Lock()
        self.settled = False
        self.ack_failed = False
        self.gave_back = False
        self.token = next(_tokens)


class RocketMQSubscription(Subscription):
    def __init__(
        self,
        adapter: RocketMQAdapter,
        topic: str,
        rocket_topic: str,
        group_id: str,
    ) -> None:
        self._adapter = adapter
        self._opts = adapter.options
        self.topic = topic
        self.rocket_topic = rocket_topic
        self.group_id = group_id
        self._lock = threading.Lock()
        self._buffer: deque[_Held] = deque()
        self._held: dict[int, _Held] = {}
        self._pending: Future[Any] | None = None
        self._acks: list[_Held] = []
        self._acking = False
        self._acks_idle = threading.Condition(self._lock)
        self._pending_since = 0.0
        self._closed = threading.Event()
        self._failures = 0
        self._last_warning = 0.0
        self._consumer: Any = adapter.start_consumer(group_id, rocket_topic)
        self._renewer = threading.Thread(
            target=self._renew_loop, name=f"mqkit-rocketmq-renew-{group_id}", daemon=True
        )
        self._renewer.start()

    # -- receiving -------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        event = getattr(self._consumer, "_init_settings_event", None)
        return event is None or event.is_set()

    def fetch(self, max_count: int, timeout: float) -> list[Inbound]:
        if self._closed.is_set():
            raise Closed("this RocketMQ subscription is closed")
        out: list[_Held] = []
        deadline = time.monotonic() + max(0.0, timeout)
        while len(out) < max_count and not self._closed.is_set():
            with self._lock:
                while self._buffer and len(out) < max_count:
                    out.append(self._buffer.popleft())
                room = max_count - len(out)
                pending = self._pending
            if room <= 0:
                break
            if pending is None:
                pending = self._start_receive(min(room, self._opts.max_batch))
                if pending is None:  # could not even ask: back off a little
                    self._closed.wait(min(0.2, max(0.0, deadline - time.monotonic())))
                    break
            wait = 0.0 if out else deadline - time.monotonic()
            try:
                pending.result(timeout=max(0.0, wait))
            except FutureTimeout:
                break
            except Exception:  # collected (and logged) below
                pass
            got = self._collect(pending)
            if got == 0 and time.monotonic() >= deadline:
                break
        return [self._inbound(h) for h in out]

    def _inbound(self, h: _Held) -> Inbound:
        attempt = int(h.msg.delivery_attempt or 1)
        return Inbound(self.topic, to_record(h.msg), attempt, None, None, h)

    def _start_receive(self, count: int) -> Future[Any] | None:
        consumer = self._consumer
        try:
            fut: Future[Any] = consumer.receive_async(count, self._opts.invisible_time)
        except Exception as exc:
            self._receive_failed(exc)
            return None
        with self._lock:
            self._pending = fut
            self._pending_since = time.monotonic()
        return fut

    def _collect(self, fut: Future[Any]) -> int:
        """Take the result of a finished receive (once, whoever comes first)."""
        with self._lock:
            if self._pending is not fut:
                return 0
            self._pending = None
            since = self._pending_since
        try:
            msgs = fut.result(timeout=0)
        except Exception as exc:
            self._receive_failed(exc)
            return 0
        self._failures = 0
        lease_end = since + self._opts.invisible_time
        with self._lock:
            for msg in msgs or ():
                h = _Held(msg, lease_end)
                self._held[h.token] = h
                self._buffer.append(h)
        return len(msgs or ())

    def _receive_failed(self, exc: BaseException) -> None:
        if self._closed.is_set():
            return
        self._failures += 1
        now = time.monotonic()
        if now - self._last_warning > 5.0:
            self._last_warning = now
            log.warning(
                "receive from %s (group %s) failed (%d in a row): %r",
                self.rocket_topic,
                self.group_id,
                self._failures,
                exc,
            )
        if "settings" in str(exc).lower() or self._failures >= 3:
            self._replace_consumer()
        self._closed.wait(min(2.0, 0.05 * 2 ** min(self._failures, 6)))

    def _replace_consumer(self) -> None:
        """Start a fresh SimpleConsumer (the proxy may have forgotten this one)."""
        try:
            fresh = self._adapter.start_consumer(self.group_id, self.rocket_topic)
        except Exception as exc:
            log.warning("could not restart the consumer of group %s: %r", self.group_id, exc)
            return
        old, self._consumer = self._consumer, fresh
        self._failures = 0
        threading.Thread(target=_shutdown_quietly, args=(old,), daemon=True).start()

    # -- settling ------------------------------------------------------------------

    def ack(self, inbound: Inbound) -> None:
        """Queue the ack; acks go out in batches (up to 64), one AckMessage request in flight.

        The handler's work is done when this returns; the broker forgets the message
        when the batch is answered (``close`` waits for that).  A batch that cannot
        reach the proxy is retried from the renewal thread while the leases last.
        """
        h: _Held = inbound.handle
        with h.lock:
            if h.settled:
                if h.gave_back:
                    raise Closed(
                        f"cannot ack {h.msg.message_id}: the subscription was closed and gave "
                        "it back to the group (it will be redelivered)"
                    )
                return
            h.settled = True
        with self._lock:
            self._held.pop(h.token, None)
            self._acks.append(h)
            if self._acking:
                # Backpressure: a consumer that acks faster than the proxy answers waits
                # here rather than piling up acks (a huge batch would miss its deadline).
                if len(self._acks) >= MAX_QUEUED_ACKS:
                    self._acks_idle.wait_for(
                        lambda: len(self._acks) < MAX_QUEUED_ACKS or not self._acking,
                        timeout=2 * self._opts.request_timeout,
                    )
                return
            self._acking = True
            batch = self._take_acks()
        self._send_acks(batch)

    def _take_acks(self) -> list[_Held]:
        """The next batch of queued acks (caller holds ``_lock``)."""
        batch, self._acks = self._acks[:ACK_BATCH], self._acks[ACK_BATCH:]
        self._acks_idle.notify_all()
        return batch

    def _send_acks(self, batch: list[_Held]) -> None:
        """One AckMessage request for ``batch`` (same topic, group and proxy)."""
        from rocketmq.grpc_protocol import AckMessageEntry, AckMessageRequest

        endpoints = batch[0].msg.endpoints
        other = [h for h in batch if h.msg.endpoints != endpoints]
        if other:  # one request per proxy: the rest goes out next
            batch = [h for h in batch if h.msg.endpoints == endpoints]
            with self._lock:
                self._acks[:0] = other
        consumer = self._consumer
        req = AckMessageRequest()
        req.group.name = self.group_id
        req.topic.name = self.rocket_topic
        for h in batch:
            entry = AckMessageEntry()
            entry.message_id = h.msg.message_id
            entry.receipt_handle = h.msg.receipt_handle
            req.entries.append(entry)
        try:
            fut = consumer.rpc_client.ack_message_async(
                endpoints,
                req,
                metadata=consumer.sign(),
                timeout=self._opts.request_timeout,
            )
        except Exception as exc:
            self._acks_done(batch, None, exc)
            return
        fut.add_done_callback(lambda f: self._acks_done(batch, f, None))

    def _acks_done(
        self, batch: list[_Held], fut: Future[Any] | None, error: BaseException | None
    ) -> None:
        failed: dict[str, tuple[str, bool]] = {}  # message id -> (why, worth retrying)
        if error is None and fut is not None:
            try:
                res = fut.result()
            except Exception as exc:
                error = exc
            else:
                for entry in res.entries:
                    code = entry.status.code
                    if code != OK:
                        failed[entry.message_id] = (f"{code} {entry.status.message}", code >= 50000)
                code = res.status.code
                if code not in (OK, MULTIPLE_RESULTS) and not failed:
                    why = f"{code} {res.status.message}"
                    failed = {h.msg.message_id: (why, code >= 50000) for h in batch}
        if error is not None:
            failed = {h.msg.message_id: (repr(error), not _rejected(error)) for h in batch}
        retry: list[_Held] = []
        for h in batch:
            why, transient = failed.get(h.msg.message_id, ("", False))
            if not why:
                continue
            if transient and time.monotonic() < h.lease_end:
                h.ack_failed = True
                retry.append(h)
            else:
                log.warning(
                    "ack of %s on %s (group %s) failed: it will be delivered again (dedupe "
                    "absorbs that): %s",
                    h.msg.message_id,
                    self.rocket_topic,
                    self.group_id,
                    why,
                )
        with self._lock:
            for h in retry:  # the renewal thread retries them
                self._held[h.token] = h
            if self._acks:
                nxt: list[_Held] | None = self._take_acks()
            else:
                nxt = None
                self._acking = False
                self._acks_idle.notify_all()
        if retry:
            log.warning(
                "%d ack(s) on %s did not reach the proxy; retrying while their leases last: %s",
                len(retry),
                self.rocket_topic,
                next(iter(failed.values()))[0],
            )
        if nxt:
            self._send_acks(nxt)

    def nack(self, inbound: Inbound, *, delay: float = 0.0) -> None:
        h: _Held = inbound.handle
        with h.lock:
            if h.settled:
                return
            h.settled = True
            try:
                self._change_invisible(h, math.ceil(delay) if delay > 0 else 0, what="nack")
            except ConnectionLost as exc:
                # Giving back early failed; the lease is no longer renewed, so it comes
                # back anyway when it ends.
                log.warning("%s", exc)
        with self._lock:
            self._held.pop(h.token, None)

    def _change_invisible(self, h: _Held, seconds: int, *, what: str) -> None:
        """change_invisible_duration; on failure keep the old receipt handle (still valid)."""
        handle = h.msg.receipt_handle
        try:
            self._consumer.change_invisible_duration(h.msg, seconds)
        except Exception as exc:
            h.msg.receipt_handle = handle
            raise ConnectionLost(
                f"{what} of RocketMQ message {h.msg.message_id} on {self.rocket_topic} "
                f"(group {self.group_id}) failed: {exc}; it comes back when its lease ends"
            ) from exc

    def _renew_loop(self) -> None:
        lease = self._opts.invisible_time
        period = min(1.0, lease / 5)
        while not self._closed.wait(period):
            now = time.monotonic()
            with self._lock:
                due = [
                    h for h in self._held.values() if h.ack_failed or h.lease_end - now < lease / 2
                ]
            for h in due:
                if self._closed.is_set():
                    return
                if h.ack_failed:
                    self._retry_ack(h)
                    continue
                with h.lock:
                    if h.settled:
                        continue
                    started = time.monotonic()
                    try:
                        self._change_invisible(h, lease, what="lease renewal")
                    except ConnectionLost as exc:
                        log.warning("%s", exc)
                        continue
                    h.lease_end = started + lease

    def _retry_ack(self, h: _Held, *, last: bool = False) -> None:
        """Ack one message whose batch failed (renewal thread, or ``close``)."""
        with h.lock:
            try:
                self._consumer.ack(h.msg)
            except Exception as exc:
                if not last and not _rejected(exc) and time.monotonic() < h.lease_end:
                    return  # try again on the next round
                log.warning(
                    "ack of %s on %s (group %s) did not get through before its lease ended: "
                    "it will be delivered again (dedupe absorbs that): %r",
                    h.msg.message_id,
                    self.rocket_topic,
                    self.group_id,
                    exc,
                )
            h.ack_failed = False
        with self._lock:
            self._held.pop(h.token, None)

    # -- closing ---------------------------------------------------------------------

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._renewer.join(timeout=self._opts.request_timeout + 1)
        with self._lock:  # acks in flight: the broker must have them before we leave
            self._acks_idle.wait_for(
                lambda: not self._acking, timeout=2 * self._opts.request_timeout + 1
            )
        with self._lock:
            pending = self._pending
        if pending is not None:
            # nothing received, or failed: nothing to give back
            with contextlib.suppress(Exception):
                pending.result(timeout=self._opts.long_polling + self._opts.request_timeout + 1)
            self._collect(pending)
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
            self._buffer.clear()
        for h in held:
            if h.ack_failed:
                self._retry_ack(h, last=True)
                continue
            with h.lock:
                if h.settled:
                    continue
                h.settled = h.gave_back = True
                try:
                    self._change_invisible(h, 0, what="give back on close")
                except ConnectionLost as exc:
                    log.warning("%s", exc)
        self._adapter.forget(self)
        _shutdown_quietly(self._consumer)


def _rejected(exc: BaseException) -> bool:
    """The proxy answered and refused (a 4xx status, e.g. an expired receipt handle)."""
    code = getattr(exc, "code", None)
    return isinstance(code, int) and 40000 <= code < 50000


def _shutdown_quietly(consumer: Any) -> None:
    try:
        consumer.shutdown()
    except Exception as exc:
        log.warning("shutting down a RocketMQ consumer failed: %r", exc)
