"""The adapter interface: the few primitives a backend implements.

Policies (confirm handling, retry, dead letters, TTL, ordering lanes, dedupe)
live above this interface, written once in :mod:`mqkit.policies`; an adapter
only declares topics, publishes records, and hands out subscriptions that
fetch and settle deliveries.  A backend that cannot do something raises
:class:`~mqkit.errors.Unsupported` -- never ignores it.

Threading: the client serialises nothing.  ``publish`` may be called from
several threads at once; a :class:`Subscription` is used by one thread at a
time (its consumer), but ``close`` may come from another thread.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from mqkit.capabilities import Capabilities
from mqkit.errors import Unsupported
from mqkit.message import Receipt, Record
from mqkit.settings import Settings

__all__ = ["Adapter", "Inbound", "PublishOutcome", "Subscription", "TopicStats"]

PublishOutcome = Receipt | BaseException
"""Per-record result of a batch publish: a receipt, or why that record failed."""


@dataclass(slots=True)
class Inbound:
    """One delivery as an adapter hands it up; ``handle`` is the adapter's own token."""

    topic: str
    record: Record
    attempt: int = 1
    partition: int | None = None
    offset: int | None = None
    handle: Any = None


@dataclass(slots=True)
class TopicStats:
    """Backlog figures for ``mqkit lag``; None where the backend cannot tell."""

    topic: str
    group: str
    partition: int | None
    backlog: int | None
    in_flight: int | None
    oldest_age: float | None = None


class Subscription(abc.ABC):
    """A member of a consumer group on one topic."""

    @property
    def ready(self) -> bool:
        """True once the member has joined its group and can receive."""
        return True

    @abc.abstractmethod
    def fetch(self, max_count: int, timeout: float) -> list[Inbound]:
        """Up to ``max_count`` deliveries, waiting at most ``timeout`` seconds for the first."""

    @abc.abstractmethod
    def ack(self, inbound: Inbound) -> None:
        """Settle a delivery as done: it is never delivered to this group again."""

    def ack_many(self, inbounds: Sequence[Inbound]) -> None:
        """Ack several deliveries; adapters with a batch ack override this (ops tools)."""
        for inbound in inbounds:
            self.ack(inbound)

    @abc.abstractmethod
    def nack(self, inbound: Inbound, *, delay: float = 0.0) -> None:
        """Give a delivery back: redelivered (attempt + 1) after ``delay`` seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """Leave the group; deliveries not settled are redelivered to other members."""


class Adapter(abc.ABC):
    """One connection to one backend.  Subclasses set ``scheme`` and ``capabilities``."""

    scheme: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def open(self) -> None:
        """Connect; raise ConnectionLost with the address and a hint when unreachable."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every resource; idempotent."""

    @abc.abstractmethod
    def declare(
        self, topic: str, *, partitions: int | None, groups: Sequence[str], ordered: bool
    ) -> None:
        """Create the topic and the groups' subscriptions if missing; idempotent.

        ``partitions`` None means: what the topic has, or the backend's default
        (1) when it is created.
        """

    @abc.abstractmethod
    def publish(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        confirm: bool,
        persistent: bool,
        delay: float | None = None,
    ) -> list[PublishOutcome]:
        """Send records; one outcome per record, in order (never stop half-way silently)."""

    @abc.abstractmethod
    def subscribe(self, topic: str, group: str, *, prefetch: int, ordered: bool) -> Subscription:
        """Join ``group`` on ``topic``; the group is created if it does not exist yet."""

    def stats(self, topic: str, group: str) -> list[TopicStats]:
        """Backlog per partition/lane; backends with an admin API override this."""
        raise Unsupported(self.scheme, "lag statistics")

    def delete_topic(self, topic: str) -> None:
        """Remove a topic and its groups (tests, fanout --finish)."""
        raise Unsupported(self.scheme, "deleting topics")
