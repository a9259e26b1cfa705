"""Fanout: work off a backlog of millions with K times the consumers.

The seed's "百万级别消息积压几小时" playbook, done by one command instead of a
throw-away program:

1. fix the consumer, stop the normal consumers of ``T`` (group ``G``);
2. ``fanout(mq, "T", group="G")`` creates ``T.fanout`` with K x the partitions
   of ``T`` (default 10 x), subscribes ``G`` to it, and moves G's backlog
   there as fast as the backend takes it -- no real work, just confirmed
   batches (:mod:`mqkit.ops.move`);
3. run K x the consumers on ``T.fanout`` (group ``G``, the same handler,
   ``ordering="per_key"``): :func:`drain` does it with threads;
4. ``finish_fanout(mq, "T", group="G")`` checks ``T.fanout`` is drained, moves
   its dead letters to ``T.dlq`` (so ``replay`` sends them back to ``T``) and
   deletes ``T.fanout`` where the backend can; restart the normal consumers.

Per-key order: ``T`` is read as one ordered member, records keep their key and
``T.fanout``'s partitioner sends a key to one lane, so a key's messages stay in
order and K consumers work on different lanes.  A crash (kill -9) of the mover
loses nothing: a batch is acked on ``T`` only after ``T.fanout`` confirmed it;
running the same call again resumes, re-moving at most the batch in flight,
with the SAME ids -- Redis dedupe on the workers (``Policy(dedupe="redis://...")``)
handles each id once.  Stop the mover before finishing: new messages of ``T``
then wait in ``T`` and are newer than everything in ``T.fanout``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mqkit.adapter import TopicStats
from mqkit.client import Client
from mqkit.consumer import Handler, RunStats
from mqkit.errors import ConfigError, Unsupported
from mqkit.message import DLQ_TOPIC, Record
from mqkit.ops.move import MoveResult, move
from mqkit.policies.deadletter import dlq_topic
from mqkit.policy import Policy

__all__ = [
    "FANOUT_SUFFIX",
    "FanoutPlan",
    "FanoutResult",
    "FinishResult",
    "drain",
    "fanout",
    "fanout_topic",
    "finish_fanout",
    "plan_fanout",
]

FANOUT_SUFFIX = ".fanout"
DEFAULT_FACTOR = 10


def fanout_topic(topic: str) -> str:
    return topic + FANOUT_SUFFIX


@dataclass(frozen=True)
class FanoutPlan:
    """What a fanout works with; ``backlog`` is None where the backend has no stats."""

    source: str
    target: str
    group: str
    source_partitions: int | None
    lanes: int | None
    backlog: int | None


@dataclass
class FanoutResult:
    plan: FanoutPlan
    move: MoveResult

    @property
    def moved(self) -> int:
        return self.move.moved


@dataclass
class FinishResult:
    """``drained`` False means nothing was changed: ``remaining`` messages still wait."""

    drained: bool
    remaining: int | None = None
    dead_letters_moved: int = 0
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    note: str = ""


def stats_or_none(mq: Client, topic: str, group: str) -> list[TopicStats] | None:
    """``mq.stats`` or None when the backend has no statistics."""
    try:
        return mq.stats(topic, group)
    except Unsupported:
        return None


def backlog_of(rows: Sequence[TopicStats] | None) -> int | None:
    if rows is None:
        return None
    known = [r.backlog for r in rows if r.backlog is not None]
    return sum(known) if known or not rows else None


def plan_fanout(
    mq: Client,
    topic: str,
    *,
    group: str = "default",
    factor: int = DEFAULT_FACTOR,
    partitions: int | None = None,
) -> FanoutPlan:
    """Create ``topic.fanout`` (K x the partitions, ``group`` subscribed); idempotent.

    An existing ``topic.fanout`` (a resumed run) keeps its lanes.
    """
    if topic.endswith(FANOUT_SUFFIX):
        raise ConfigError(f"{topic!r} is already a fanout topic", field="topic")
    if factor < 1:
        raise ConfigError(f"must be >= 1, got {factor}", field="factor")
    rows = stats_or_none(mq, topic, group)
    source_parts = len(rows) if rows else None
    lanes: int | None = partitions or factor * (source_parts or 1)
    target = fanout_topic(topic)
    try:
        # The group first exists here: it then receives every message moved below.
        mq.declare(target, partitions=lanes, groups=[group], ordered=True)
    except ConfigError as exc:
        if exc.field != "partitions":
            raise
        mq.declare(target, groups=[group], ordered=True)  # resuming: keep its lanes
        existing = stats_or_none(mq, target, group)
        lanes = len(existing) if existing else None
    return FanoutPlan(topic, target, group, source_parts, lanes, backlog_of(rows))


def fanout(
    mq: Client,
    topic: str,
    *,
    group: str = "default",
    factor: int = DEFAULT_FACTOR,
    partitions: int | None = None,
    batch_size: int = 1000,
    idle_timeout: float = 2.0,
    limit: int | None = None,
    on_start: Callable[[FanoutPlan], None] | None = None,
    on_progress: Callable[[MoveResult], None] | None = None,
    stop: threading.Event | None = None,
) -> FanoutResult:
    """Move ``group``'s backlog of ``topic`` to ``topic.fanout``; see the module doc.

    Runs until nothing arrived for ``idle_timeout`` seconds (new messages keep
    being moved while they come), ``limit`` messages, or ``stop``.
    """
    plan = plan_fanout(mq, topic, group=group, factor=factor, partitions=partitions)
    if on_start is not None:
        on_start(plan)
    target = plan.target

    def route(record: Record) -> tuple[str, Record]:
        return target, record  # byte for byte: key, value, id, headers, expiry

    result = move(
        mq,
        topic,
        group=group,
        route=route,
        batch_size=batch_size,
        limit=limit,
        idle_timeout=idle_timeout,
        window=0,
        on_progress=on_progress,
        stop=stop,
    )
    return FanoutResult(plan, result)


def finish_fanout(
    mq: Client,
    topic: str,
    *,
    group: str = "default",
    idle_timeout: float = 1.0,
    workers_stopped: bool = False,
) -> FinishResult:
    """Return to normal: check ``topic.fanout`` is drained, keep its dead letters, delete it.

    Where the backend counts only waiting messages, not those a worker holds
    unacked (RabbitMQ without its management API), an empty backlog does not
    mean drained: deleting then would drop what the workers still hold.  So it
    refuses unless ``workers_stopped`` says no worker runs (their unacked
    messages are then back in the backlog, which is counted).
    """
    target = fanout_topic(topic)
    try:
        rows = stats_or_none(mq, target, group)
    except ConfigError as exc:  # no such topic or group: nothing was fanned out
        return FinishResult(drained=True, remaining=0, note=f"nothing to finish: {exc}")
    if rows is None:
        return FinishResult(
            drained=False,
            note=f"the {mq.scheme} backend cannot tell whether {target} is drained; check it "
            "with the broker's own tools and delete it there",
        )
    remaining = sum(r.backlog or 0 for r in rows)
    in_flight = sum(r.in_flight or 0 for r in rows)
    if not remaining and not workers_stopped and any(r.in_flight is None for r in rows):
        return FinishResult(
            drained=False,
            remaining=0,
            note=f"{target} has no waiting message, but the {mq.scheme} backend cannot count "
            "the ones workers hold unacked: stop the workers of TOPIC.fanout, then run this "
            "again with workers_stopped (CLI: --workers-stopped)",
        )
    if remaining or in_flight:
        return FinishResult(
            drained=False,
            remaining=remaining,
            note=f"{target} still has {remaining} message(s) for group {group!r} "
            f"({in_flight} in flight): let the workers finish, then run this again",
        )
    result = FinishResult(drained=True, remaining=0)
    dead = dlq_topic(target)

    def to_origin(record: Record) -> tuple[str, Record]:
        # Replayed later, a dead letter must go back to the topic, not to the lanes.
        headers = dict(record.headers)
        if headers.get(DLQ_TOPIC) == target:
            headers[DLQ_TOPIC] = topic
        return dlq_topic(topic), Record(record.key, record.value, headers)

    try:
        dead_rows = stats_or_none(mq, dead, "default")
    except ConfigError:
        dead_rows = []  # no dead letters were ever written
    if dead_rows is None or backlog_of(dead_rows):
        mq.ensure_topic(topic)  # declares topic.dlq too
        moved = move(mq, dead, group="default", route=to_origin, idle_timeout=idle_timeout)
        result.dead_letters_moved = moved.moved
    for name in (target, dead):
        try:
            mq.adapter.delete_topic(name)
        except Unsupported:
            result.kept.append(name)
        else:
            result.deleted.append(name)
    if result.kept:
        result.note = (
            f"the {mq.scheme} backend cannot delete topics: {', '.join(result.kept)} "
            "are drained and can be removed with the broker's own tools"
        )
    return result


def drain(
    mq: Client,
    topic: str,
    handler: Handler,
    *,
    workers: int = DEFAULT_FACTOR,
    group: str = "default",
    policy: Policy | None = None,
    idle_timeout: float = 2.0,
) -> RunStats:
    """Work off ``topic.fanout`` with ``workers`` consumers (threads) running ``handler``.

    The in-process form of step 3; in production the workers are usually K x
    the application's own processes pointed at ``topic.fanout``.  The policy
    defaults to ``ordering="per_key"`` (each lane has one worker at a time).
    """
    if workers < 1:
        raise ConfigError(f"must be >= 1, got {workers}", field="workers")
    policy = policy or Policy(ordering="per_key")
    target = topic if topic.endswith(FANOUT_SUFFIX) else fanout_topic(topic)
    consumers = [mq.consumer(target, group=group, policy=policy) for _ in range(workers)]
    total = RunStats()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            stats = consumers[i].run(handler, idle_timeout=idle_timeout)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
            return
        with lock:
            total.handled += stats.handled
            total.retried += stats.retried
            total.dead_lettered += stats.dead_lettered
            total.duplicates += stats.duplicates

    threads = [
        threading.Thread(target=work, args=(i,), name=f"mqkit-drain-{i}") for i in range(workers)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for c in consumers:
            c.close()
    if errors:
        raise errors[0]
    return total
