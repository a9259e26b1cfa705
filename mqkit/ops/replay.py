"""Replay: move messages from a dead-letter queue back to where they came from.

Each message is re-published with its original id, key, value and headers
(confirmed) before it is acked in the DLQ, so a crash mid-way re-sends at
most the message in hand -- and its unchanged id lets dedupe absorb that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mqkit.client import Client
from mqkit.message import DLQ_REASON, Message
from mqkit.policies.confirm import receipts_or_raise
from mqkit.policies.deadletter import DLQ_SUFFIX, restore_record
from mqkit.policy import Policy

__all__ = ["ReplayResult", "replay"]


@dataclass
class ReplayResult:
    moved: int = 0
    skipped: int = 0
    by_target: dict[str, int] = field(default_factory=dict)


def replay(
    mq: Client,
    source: str,
    *,
    target: str | None = None,
    group: str = "default",
    reason: str | None = None,
    where: Callable[[Message], bool] | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    idle_timeout: float = 2.0,
) -> ReplayResult:
    """Move messages of ``source`` (a ``<topic>.dlq``) back to their original topic.

    ``target`` overrides the destination; ``reason`` and ``where`` select which
    messages move (the others stay in the DLQ, untouched); ``dry_run`` counts
    without moving anything.
    """
    result = ReplayResult()
    policy = Policy(prefetch=10_000, max_attempts=1)
    consumer = mq.consumer(source, group=group, policy=policy)
    try:
        # Messages left in place stay leased (unsettled) until close, so this run
        # does not see them again; close gives them back to the DLQ untouched.
        for d in consumer.iter(timeout=idle_timeout):
            m = d.message
            chosen = (reason is None or m.headers.get(DLQ_REASON) == reason) and (
                where is None or where(m)
            )
            if not chosen:
                result.skipped += 1
                continue
            original, record = restore_record(d.inbound.record)
            dest = target or original or source.removesuffix(DLQ_SUFFIX)
            if not dry_run:
                mq.ensure_topic(dest)
                outcomes = mq.adapter.publish(dest, [record], confirm=True, persistent=True)
                receipts_or_raise(dest, [record.id], outcomes)
                d.ack()
            result.moved += 1
            result.by_target[dest] = result.by_target.get(dest, 0) + 1
            if limit is not None and result.moved >= limit:
                break
    finally:
        consumer.close()
    return result
