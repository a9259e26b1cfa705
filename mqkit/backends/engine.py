"""The adapter over an in-process :class:`~mqkit.broker.engine.Engine`.

Shared by ``memory://`` (records in lists) and ``native://`` (records in
segment files): both are the same queue semantics over different logs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from mqkit.adapter import Adapter, Inbound, PublishOutcome, Subscription, TopicStats
from mqkit.broker.engine import Engine
from mqkit.errors import Closed, MQError, PublishError
from mqkit.message import H_DELIVER_AT, Receipt, Record

__all__ = ["EngineAdapter", "EngineSubscription"]


class EngineSubscription(Subscription):
    def __init__(self, engine: Engine, topic: str, member: str) -> None:
        self._engine = engine
        self._topic = topic
        self._member = member
        self._closed = False

    def fetch(self, max_count: int, timeout: float) -> list[Inbound]:
        if self._closed:
            raise Closed("this subscription is closed")
        got = self._engine.fetch(self._member, max_count, timeout)
        return [
            Inbound(d.topic, d.record, d.attempt, d.partition, d.offset, (d.partition, d.offset))
            for d in got
        ]

    def ack(self, inbound: Inbound) -> None:
        p, o = inbound.handle
        self._engine.ack(self._member, p, o)

    def nack(self, inbound: Inbound, *, delay: float = 0.0) -> None:
        p, o = inbound.handle
        self._engine.nack(self._member, p, o, delay=delay)

    def heartbeat(self) -> None:
        self._engine.heartbeat(self._member)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.leave(self._member)


class EngineAdapter(Adapter):
    """Subclasses provide ``_engine`` in ``open`` and release it in ``close``."""

    _engine: Engine

    def declare(
        self, topic: str, *, partitions: int | None, groups: Sequence[str], ordered: bool
    ) -> None:
        self._engine.declare(topic, partitions=partitions, groups=groups)

    def publish(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        confirm: bool,
        persistent: bool,
        delay: float | None = None,
    ) -> list[PublishOutcome]:
        if delay:
            at = repr(time.time() + delay)
            records = [Record(r.key, r.value, {**r.headers, H_DELIVER_AT: at}) for r in records]
        try:
            placed = self._engine.publish(topic, records, durable=confirm and persistent)
        except MQError as exc:
            return [exc] * len(records)
        except OSError as exc:
            err = PublishError(f"the broker could not store the messages: {exc}")
            return [err] * len(records)
        now = time.time()
        return [
            Receipt(r.id, topic, True, p, o, now) for r, (p, o) in zip(records, placed, strict=True)
        ]

    def subscribe(self, topic: str, group: str, *, prefetch: int, ordered: bool) -> Subscription:
        member = self._engine.join(topic, group, ordered=ordered, prefetch=prefetch)
        return EngineSubscription(self._engine, topic, member)

    def stats(self, topic: str, group: str) -> list[TopicStats]:
        now = time.time()
        return [
            TopicStats(
                topic,
                group,
                s.partition,
                s.backlog,
                s.in_flight,
                None if s.oldest_timestamp is None else max(0.0, now - s.oldest_timestamp),
            )
            for s in self._engine.stats(topic, group)
        ]

    def delete_topic(self, topic: str) -> None:
        self._engine.delete_topic(topic)
