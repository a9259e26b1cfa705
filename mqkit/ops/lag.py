"""Lag: how far behind a group is, per partition (lane), with its dead letters.

The first question of every backlog incident -- how many, how old, is it
moving, is anything dead-lettering -- answered from :meth:`Adapter.stats`
the same way on every backend.  A backend without statistics raises
:class:`~mqkit.errors.Unsupported` naming itself (never a table of zeros).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mqkit.adapter import TopicStats
from mqkit.client import Client
from mqkit.errors import ConfigError, Unsupported
from mqkit.policies.deadletter import DLQ_SUFFIX, dlq_topic

__all__ = ["LagReport", "LagRow", "lag"]


@dataclass(frozen=True)
class LagRow:
    """One partition (lane): messages not yet acked, of which ``in_flight`` are leased."""

    partition: int | None
    backlog: int | None
    in_flight: int | None
    oldest_age: float | None


@dataclass
class LagReport:
    """``group``'s lag on ``topic``; ``dlq`` is None where ``<topic>.dlq`` cannot be read."""

    topic: str
    group: str
    rows: list[LagRow] = field(default_factory=list)
    dlq: int | None = None

    @property
    def backlog(self) -> int | None:
        known = [r.backlog for r in self.rows if r.backlog is not None]
        return sum(known) if known or not self.rows else None

    @property
    def in_flight(self) -> int | None:
        known = [r.in_flight for r in self.rows if r.in_flight is not None]
        return sum(known) if known or not self.rows else None

    @property
    def oldest_age(self) -> float | None:
        known = [r.oldest_age for r in self.rows if r.oldest_age is not None]
        return max(known) if known else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for ``mqkit lag --json`` and monitoring scripts."""
        return {
            "topic": self.topic,
            "group": self.group,
            "backlog": self.backlog,
            "in_flight": self.in_flight,
            "oldest_age": self.oldest_age,
            "dlq": self.dlq,
            "partitions": [asdict(r) for r in self.rows],
        }


def _rows(stats: Sequence[TopicStats]) -> list[LagRow]:
    return [LagRow(s.partition, s.backlog, s.in_flight, s.oldest_age) for s in stats]


def lag(mq: Client, topic: str, group: str = "default", *, dlq: bool = True) -> LagReport:
    """Per-partition backlog, in-flight and oldest age of ``group`` on ``topic``,
    and the number of dead letters waiting in ``<topic>.dlq`` (its ``default`` group)."""
    try:
        stats = mq.stats(topic, group)
    except Unsupported as exc:
        raise Unsupported(
            mq.scheme,
            "lag statistics",
            "use the broker's own tools (e.g. kafka-consumer-groups, rabbitmqctl list_queues)",
        ) from exc
    report = LagReport(topic, group, _rows(stats))
    if dlq and not topic.endswith(DLQ_SUFFIX):
        try:
            dead = mq.stats(dlq_topic(topic), "default")
        except (ConfigError, Unsupported):
            report.dlq = None  # never declared through mqkit, or unknowable
        else:
            report.dlq = LagReport(dlq_topic(topic), "default", _rows(dead)).backlog
    return report
