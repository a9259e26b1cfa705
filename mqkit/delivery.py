"""A delivery: one message handed to a consumer, settled exactly once.

Settling the same way twice is a no-op (handlers and frameworks may both ack);
settling a different way after that raises, because it is always a bug.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from mqkit.adapter import Inbound
from mqkit.errors import DeliveryStateError
from mqkit.message import Message
from mqkit.policies.deadletter import Reason

if TYPE_CHECKING:
    from mqkit.consumer import Consumer

__all__ = ["Delivery", "Reject", "Settled"]


class Settled(str, Enum):
    PENDING = "pending"
    ACKED = "acked"
    NACKED = "nacked"
    REJECTED = "rejected"


# Module constants for the per-message paths: an Enum member lookup on the class
# costs ~70 ns on Python 3.11, a global ~5 ns.
_PENDING = Settled.PENDING
_ACKED = Settled.ACKED


class Reject(Exception):
    """Raise from a handler to dead-letter the message at once (reason ``rejected``)."""


class Delivery:
    """``message``, ``attempt`` (1 = first delivery) and the three ways to settle."""

    __slots__ = ("_consumer", "attempt", "claimed", "inbound", "message", "state")

    def __init__(self, consumer: Consumer, inbound: Inbound, attempt: int) -> None:
        self._consumer = consumer
        self.inbound = inbound
        self.message = Message.from_record(
            inbound.topic, inbound.record, partition=inbound.partition, offset=inbound.offset
        )
        self.attempt = attempt
        self.claimed: str | None = None  # token of the dedupe 'processing' marker held
        self.state = _PENDING

    def _transition(self, to: Settled) -> bool:
        # The consumer's lock, not one per delivery: settling is rare to race and a
        # lock per message costs more than the contention of sharing one.
        with self._consumer._state_lock:
            if self.state is to:
                return False
            if self.state is not Settled.PENDING:
                raise self._conflict(to)
            self.state = to
            return True

    def _conflict(self, to: Settled) -> DeliveryStateError:
        return DeliveryStateError(
            f"message {self.message.id} was already {self.state.value}; it cannot also "
            f"be {to.value}"
        )

    def ack(self) -> None:
        """Done: the group never gets this message again."""
        consumer = self._consumer
        # The transition and the consumer's count of unsettled deliveries under one
        # lock round: this runs once per message.
        with consumer._state_lock:
            if self.state is _ACKED:
                return
            if self.state is not _PENDING:
                raise self._conflict(_ACKED)
            self.state = _ACKED
            consumer._unsettled -= 1
        try:
            consumer._settle_ack(self)
        except BaseException:
            with consumer._state_lock:
                self.state = Settled.PENDING
                consumer._unsettled += 1
            raise

    def nack(self, requeue: bool = True, *, delay: float = 0.0) -> None:
        """Give it back for redelivery (``requeue``), or dead-letter it (``requeue=False``)."""
        if not requeue:
            self.reject("nacked without requeue")
            return
        if self._transition(Settled.NACKED):
            try:
                self._consumer._settle_nack(self, delay)
            except BaseException:
                self.state = Settled.PENDING
                raise

    def reject(self, reason: str = "rejected") -> None:
        """Dead-letter it now with ``reason`` in its error header; it is not retried."""
        if self._transition(Settled.REJECTED):
            try:
                self._consumer._dead_letter(self, Reason.REJECTED, reason)
            except BaseException:
                self.state = Settled.PENDING
                raise

    def __repr__(self) -> str:
        m = self.message
        return (
            f"<Delivery {m.topic} id={m.id} key={m.key} attempt={self.attempt} {self.state.value}>"
        )
