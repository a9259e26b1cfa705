"""A consumer group member on RabbitMQ: one channel consuming the group's queue(s).

Deliveries arrive on the I/O thread and wait in a buffer (at most ``prefetch``
per queue: basic.qos); :meth:`fetch` converts them on the caller's thread so
the I/O thread only moves frames.  Acks and nacks are handed to the I/O thread.
A delivery carries the generation of the channel it came on: after a
reconnect the broker has already given it back, so settling it is a no-op
(logged) -- it will be delivered again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mqkit.adapter import Inbound, Subscription
from mqkit.codecs import BYTES, JSON, TEXT
from mqkit.errors import Closed, MQError
from mqkit.message import H_CONTENT_TYPE, H_ID, Record

if TYPE_CHECKING:
    from ._link import Link

OUTSTANDING, ACKING, SETTLED = 0, 1, 2

__all__ = [
    "ACKING",
    "KEY_HEADER",
    "MOVED_TO_PROPERTIES",
    "OUTSTANDING",
    "SETTLED",
    "RabbitSubscription",
    "amqp_content_type",
    "to_record",
]

KEY_HEADER = "x-mqkit-key"
"""Carries the record key (the routing key holds its slot, and cannot say None)."""

MOVED_TO_PROPERTIES = frozenset({H_ID, H_CONTENT_TYPE})
"""Reserved headers sent as AMQP properties instead (message_id, content_type):
what other AMQP clients read, and fewer header-table bytes to encode per message."""

_TO_MIME = {
    BYTES: "application/octet-stream",
    TEXT: "text/plain; charset=utf-8",
    JSON: "application/json",
}
_FROM_MIME = {mime: ct for ct, mime in _TO_MIME.items()}


def amqp_content_type(content_type: str | None) -> str | None:
    """mqkit's content type as a MIME type (unknown ones pass through)."""
    if content_type is None:
        return None
    return _TO_MIME.get(content_type, content_type)


# Headers RabbitMQ adds on its own: not part of the message.
_BROKER_HEADERS = frozenset(
    {
        "x-delivery-count",
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-received-from",
    }
)


def to_record(properties: Any, body: bytes, redelivered: bool) -> tuple[Record, int]:
    """The record and its attempt number (quorum: x-delivery-count + 1)."""
    headers: dict[str, str] = {}
    key: str | None = None
    count: int | None = None
    for k, v in (properties.headers or {}).items():
        if k == KEY_HEADER:
            key = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        elif k == "x-delivery-count":
            count = int(v)
        elif k in _BROKER_HEADERS:
            continue
        elif isinstance(v, str):
            headers[k] = v
        elif isinstance(v, bytes):
            headers[k] = v.decode("utf-8", "replace")
        elif isinstance(v, (int, float)):  # from producers other than mqkit
            headers[k] = str(v)
    if H_ID not in headers and properties.message_id:
        headers[H_ID] = properties.message_id
    ct = properties.content_type
    if ct and H_CONTENT_TYPE not in headers:
        headers[H_CONTENT_TYPE] = _FROM_MIME.get(ct, ct)
    attempt = count + 1 if count is not None else (2 if redelivered else 1)
    return Record(key, bytes(body), headers), attempt


class RabbitSubscription(Subscription):
    """See the module docstring.  Loop-side fields are touched by the I/O thread only."""

    def __init__(
        self, link: Link, topic: str, queues: list[tuple[str, int | None]], prefetch: int
    ) -> None:
        self._link = link
        self.topic = topic
        self.queues = queues
        self.prefetch = prefetch
        self._cond = threading.Condition()
        self._buf: deque[tuple[int, int | None, Any, Any, bytes]] = deque()
        self._ready = False
        self._closed = False
        self._waiting = 0  # fetchers blocked on the buffer
        self.error: MQError | None = None
        # acks from the consumer's thread, handed to the I/O thread in bursts
        self._acks: list[tuple[int, int]] = []
        self._acks_lock = threading.Lock()
        # I/O-thread state
        self.gen = 0
        self.channel: Any = None
        self.opening = False
        self.closing = False
        self.closed_event = threading.Event()
        self.timers: dict[object, Any] = {}  # delayed requeues, by token
        # delivery tag -> OUTSTANDING / ACKING / SETTLED, in delivery order: acks of a
        # contiguous run of tags leave as ONE basic.ack(multiple=True)
        self.outstanding: OrderedDict[int, int] = OrderedDict()
        self.acking: list[int] = []

    # -- I/O thread ------------------------------------------------------------------

    def new_generation(self) -> int:
        with self._cond:
            self.gen += 1
            self._buf.clear()
            self._ready = False
            self.outstanding.clear()
            self.acking.clear()
            return self.gen

    def lost(self) -> None:
        """The channel is gone: what it delivered is back in the queue."""
        with self._cond:
            self._buf.clear()
            self._ready = False

    def set_ready(self) -> None:
        with self._cond:
            self._ready = True
            self._cond.notify_all()

    def deliver(
        self, gen: int, lane: int | None, method: Any, properties: Any, body: bytes
    ) -> None:
        with self._cond:
            if gen == self.gen:
                self.outstanding[method.delivery_tag] = OUTSTANDING
                self._buf.append((gen, lane, method, properties, body))
                if self._waiting:
                    self._cond.notify()

    def fail(self, error: MQError) -> None:
        with self._cond:
            self.error = error
            self._ready = False
            self._cond.notify_all()

    # -- the consumer's thread ---------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    def fetch(self, max_count: int, timeout: float) -> list[Inbound]:
        if self._closed:
            raise Closed("this subscription is closed")
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._buf and not self._closed and self.error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._waiting += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting -= 1
            if self.error is not None:
                raise self.error
            n = min(max_count, len(self._buf))
            raw = [self._buf.popleft() for _ in range(n)]
        out: list[Inbound] = []
        for gen, lane, method, properties, body in raw:
            record, attempt = to_record(properties, body, method.redelivered)
            out.append(Inbound(self.topic, record, attempt, lane, None, (gen, method.delivery_tag)))
        return out

    def ack(self, inbound: Inbound) -> None:
        """Queue the ack; the I/O thread sends a burst of them as one basic.ack(multiple)."""
        with self._acks_lock:
            self._acks.append(inbound.handle)
            first = len(self._acks) == 1
        if first:
            self._link.acks_pending(self)

    def ack_many(self, inbounds: Sequence[Inbound]) -> None:
        with self._acks_lock:
            first = not self._acks
            self._acks.extend(i.handle for i in inbounds)
            first = first and bool(self._acks)
        if first:
            self._link.acks_pending(self)

    def take_acks(self) -> list[tuple[int, int]]:
        """The acks queued since the last call (I/O thread)."""
        with self._acks_lock:
            acks = self._acks
            self._acks = []
        return acks

    def nack(self, inbound: Inbound, *, delay: float = 0.0) -> None:
        """Requeue; with ``delay`` the delivery is held here and requeued when it is due."""
        gen, tag = inbound.handle
        self._link.requeue(self, gen, tag, delay)

    def close(self) -> None:
        """Close the channel: every unacked delivery goes back to the queue at once."""
        if self._closed:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._link.detach(self)
