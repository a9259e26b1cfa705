"""A consumer group member on ActiveMQ: its own STOMP connection on the group's queue.

stomp.py's receiver thread appends MESSAGE frames to a buffer that is bounded
by the broker: ``activemq.prefetchSize`` = the consumer's prefetch, and
``client-individual`` acks, so ActiveMQ never has more than ``prefetch``
unacked messages out to this member (the receiver thread never blocks on it:
that would stall receipts and heart-beats too).  :meth:`fetch` converts frames
on the consumer's thread.  ACK frames are queued and written in batches from the
consumer's thread (every ``prefetch / 4`` acks, at most 32, after 50 ms, and
before a nack re-send or close): one write per batch instead of one per
message, through stomp.py's transport lock.

``nack(delay)`` holds the delivery here (still unacked at the broker, so it is
safe if this process dies) until it is due; then, on the next ``fetch`` or
``heartbeat``, ONE STOMP transaction sends a copy to the group's queue (same
record, key and group, attempt + 1) and acks the original -- atomic: either
the copy exists and the original is gone, or neither happened.  A STOMP NACK
is never sent: in ActiveMQ 5 it is a poison ack (the broker's DLQ, or the
redeliveryPlugin's fixed back-off and its own DLQ after N tries), while the
SDK owns retries and ``<topic>.dlq``.  On ``close`` held deliveries are not
re-sent: UNSUBSCRIBE gives every unacked delivery back to the group in queue
order (flagged ``redelivered``), which keeps a key's messages in order.

After a lost connection, ``fetch`` reconnects with backoff and subscribes
again; ActiveMQ has already given back what the old connection had not acked,
so deliveries of the old connection are dropped here and acks for them are
skipped (logged): they will be delivered again.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from functools import partial
from typing import Any

from mqkit.adapter import Inbound, Subscription
from mqkit.errors import Closed, ConnectionLost, MQError

from ._frames import decode_record, encode_headers
from ._link import Link, LinkConfig
from ._wire import ack_frame, frame, write

__all__ = ["ActiveMQSubscription"]

log = logging.getLogger("mqkit.adapters.activemq")

_SUB_ID = "mqkit"
_ACK_BATCH = 32  # ACKs written together at most
_ACK_DELAY = 0.05  # seconds an ACK may wait for others while messages keep coming


class ActiveMQSubscription(Subscription):
    """See the module docstring."""

    def __init__(
        self,
        config: LinkConfig,
        *,
        topic: str,
        group: str,
        destination: str,
        prefetch: int,
        request_timeout: float,
        reconnect_timeout: float,
    ) -> None:
        self.topic = topic
        self.group = group
        self.destination = destination
        self.prefetch = prefetch
        self._request_timeout = request_timeout
        self._reconnect_timeout = reconnect_timeout
        self._link = Link(
            config, name=f"sub-{group}", on_message=self._on_message, on_lost=self._on_lost
        )
        self._cond = threading.Condition()
        self._buf: deque[tuple[int, Any]] = deque()
        self._held: list[tuple[float, int, Inbound]] = []  # heap: (due, seq, delivery)
        self._acks: list[tuple[int, str, str]] = []  # (generation, ack id, message id)
        self._acks_since = 0.0
        # below the prefetch, so queued acks never stall the broker's window
        self._ack_batch = max(1, min(_ACK_BATCH, prefetch // 4))
        self._seq = itertools.count()
        self._ready = False
        self._closed = False
        self._lost_at: float | None = None
        self._next_try = 0.0
        self._backoff = 0.05

    # -- joining -------------------------------------------------------------------------

    def start(self, connect_timeout: float) -> None:
        """Connect and subscribe (raises ConnectionLost when the broker is unreachable)."""
        try:
            gen = self._link.ensure(time.monotonic() + connect_timeout)
            self._subscribe(gen)
        except BaseException:
            self._closed = True
            self._link.close()
            raise

    def _subscribe(self, gen: int) -> None:
        headers = {"activemq.prefetchSize": str(self.prefetch)}

        def send(conn: Any, receipt: str) -> None:
            conn.subscribe(
                self.destination,
                id=_SUB_ID,
                ack="client-individual",
                headers={**headers, "receipt": receipt},
            )

        try:
            self._link.request(gen, send, self._request_timeout)
        except MQError as exc:
            # a half-made subscription must not linger: start over on a new connection
            self._link.reset(gen, f"SUBSCRIBE failed: {exc}")
            raise
        with self._cond:
            if gen == self._link.gen and not self._closed:
                self._ready = True
                self._cond.notify_all()

    def _reconnect_step(self) -> None:
        """One reconnect attempt when due; ConnectionLost once reconnect_timeout has passed."""
        now = time.monotonic()
        if self._lost_at is None:
            self._lost_at = now
        if now < self._next_try:
            return
        try:
            gen = self._link.connect()
            self._subscribe(gen)
        except Closed:
            return
        except MQError as exc:
            self._next_try = now + self._backoff
            self._backoff = min(self._backoff * 2, self._link.config.reconnect_max_delay)
            if now - self._lost_at >= self._reconnect_timeout:
                raise ConnectionLost(
                    f"the consumer of {self.topic!r} (group {self.group!r}) could not reconnect "
                    f"to ActiveMQ for {self._reconnect_timeout:g} s: {exc}"
                ) from exc
            return
        log.info("consumer of %r (group %r) resumed after %.1f s", self.topic, self.group,
                 now - self._lost_at)  # fmt: skip
        self._lost_at = None
        self._backoff = 0.05

    # -- stomp.py's receiver thread ------------------------------------------------------

    def _on_message(self, gen: int, frame: Any) -> None:
        with self._cond:
            self._buf.append((gen, frame))
            self._cond.notify()

    def _on_lost(self, gen: int) -> None:
        with self._cond:
            self._ready = False
            self._buf.clear()  # ActiveMQ gives these back itself
            self._held = [h for h in self._held if h[2].handle[0] != gen]
            heapq.heapify(self._held)
            self._cond.notify_all()

    # -- the consumer's thread -----------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    def fetch(self, max_count: int, timeout: float) -> list[Inbound]:
        if self._closed:
            raise Closed("this subscription is closed")
        deadline = time.monotonic() + timeout
        while True:
            self._release_due()
            if self._acks and time.monotonic() - self._acks_since >= _ACK_DELAY:
                self._flush_acks()
            if not self._ready:
                self._reconnect_step()
            with self._cond:
                while not self._buf and not self._closed:
                    wake = deadline
                    if self._held:
                        wake = min(wake, self._held[0][0])
                    if not self._ready:
                        wake = min(wake, self._next_try)
                    if self._acks:
                        wake = min(wake, self._acks_since + _ACK_DELAY)
                    remaining = wake - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._closed:
                    return []
                if self._buf:
                    gen = self._link.gen
                    raw: list[Any] = []
                    while self._buf and len(raw) < max_count:
                        g, frame = self._buf.popleft()
                        if g == gen:
                            raw.append(frame)
                    break
            if time.monotonic() >= deadline:
                return []
            # woke early: queued acks, a held nack or a reconnect attempt are due
        out: list[Inbound] = []
        for frame in raw:
            headers = frame.headers
            record, attempt = decode_record(headers, frame.body)
            handle = (gen, headers.get("ack", ""), headers.get("persistent") == "true")
            out.append(Inbound(self.topic, record, attempt, None, None, handle))
        return out

    def ack(self, inbound: Inbound) -> None:
        """Queue the ACK; ACKs are written in batches (see ``_flush_acks``)."""
        gen, ack_id, _ = inbound.handle
        with self._cond:
            if self._closed:
                raise Closed("this subscription is closed")
            if not self._acks:
                self._acks_since = time.monotonic()
            self._acks.append((gen, ack_id, inbound.record.id))
            due = len(self._acks) >= self._ack_batch
        if due:
            self._flush_acks()

    def _flush_acks(self) -> None:
        """Write the queued ACKs in one piece.

        They are flushed every ``prefetch / 4`` acks (at most 32; so the broker's
        window never waits for them), once the oldest is ``_ACK_DELAY`` old (a
        waiting ``fetch`` wakes up for that), and before a nack re-send,
        ``heartbeat`` and ``close``: the broker's prefetch window is refilled
        without one write -- and one release of the GIL -- per message.
        """
        with self._cond:
            acks, self._acks = self._acks, []
        if not acks:
            return
        gen = self._link.gen
        frames = [ack_frame(ack_id) for g, ack_id, _ in acks if g == gen]
        stale = [mid for g, _, mid in acks if g != gen]
        if stale:
            log.warning("could not ack %d message(s) on %r (e.g. %s): their connection is gone; "
                        "ActiveMQ delivers them again (use dedupe)", len(stale), self.topic,
                        stale[0])  # fmt: skip
        if not frames:
            return
        try:
            self._link.call(gen, partial(write, frames=frames))
        except ConnectionLost as exc:
            log.warning("could not ack %d message(s) on %r: %s; ActiveMQ delivers them again "
                        "(use dedupe)", len(frames), self.topic, exc)  # fmt: skip

    def nack(self, inbound: Inbound, *, delay: float = 0.0) -> None:
        """Hold it until due, then re-send it to the group (see the module docstring)."""
        gen = inbound.handle[0]
        with self._cond:
            if self._closed:
                raise Closed("this subscription is closed")
            if gen != self._link.gen or not self._link.alive():
                log.info("nack of %s: its connection is gone, ActiveMQ delivers it again",
                         inbound.record.id)  # fmt: skip
                return
            due = time.monotonic() + max(0.0, delay)
            heapq.heappush(self._held, (due, next(self._seq), inbound))
            self._cond.notify_all()

    def heartbeat(self) -> None:
        """Called by a busy consumer that is not fetching: send acks, re-send due nacks."""
        self._flush_acks()
        self._release_due()

    def _release_due(self) -> None:
        now = time.monotonic()
        gen = self._link.gen
        with self._cond:
            due: list[Inbound] = []
            while self._held and self._held[0][0] <= now:
                d = heapq.heappop(self._held)[2]
                if d.handle[0] == gen:  # older connections' deliveries went back already
                    due.append(d)
        if not due:
            return
        self._flush_acks()
        tx = self._link.next_id("tx")

        def resend(conn: Any, receipt: str) -> None:
            frames = [frame("BEGIN", {"transaction": tx})]
            for d in due:
                _, ack_id, persistent = d.handle
                headers = encode_headers(d.record, persistent=persistent, attempt=d.attempt + 1)
                headers = {"destination": self.destination, **headers, "transaction": tx}
                frames.append(frame("SEND", headers, d.record.value))
                frames.append(ack_frame(ack_id, transaction=tx))
            frames.append(frame("COMMIT", {"transaction": tx, "receipt": receipt}))
            write(conn, frames)

        try:
            self._link.request(gen, resend, self._request_timeout)
        except ConnectionLost as exc:
            # the transaction died with the connection: ActiveMQ gives the originals back
            log.info("re-sending %d nacked message(s) failed (%s); ActiveMQ delivers them "
                     "again", len(due), exc)  # fmt: skip
        except MQError as exc:
            # committed or not is unknown: dropping the connection makes it one or the other
            # (a committed copy, or the originals given back), never both nor neither
            self._link.reset(gen, f"re-sending nacked messages failed: {exc}")

    def close(self) -> None:
        """UNSUBSCRIBE, then DISCONNECT: every unacked delivery goes back to the group."""
        if self._closed:
            return
        self._flush_acks()
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._held.clear()
            self._buf.clear()
            self._ready = False
            self._cond.notify_all()
        if self._link.alive():
            gen = self._link.gen

            def unsubscribe(conn: Any, receipt: str) -> None:
                conn.unsubscribe(id=_SUB_ID, headers={"receipt": receipt})

            try:
                self._link.request(gen, unsubscribe, min(self._request_timeout, 5.0))
            except MQError as exc:
                log.info("UNSUBSCRIBE on close failed (%s); DISCONNECT follows", exc)
        self._link.close()
