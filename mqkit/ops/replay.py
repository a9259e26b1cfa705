"""Replay: move messages from a dead-letter queue (or any topic) back to a topic.

The seed's "messages lost to TTL" playbook without the throw-away program:
mqkit never drops an expired message, it dead-letters it with reason
``expired``, and ``replay(mq, "orders.dlq", reason="expired")`` puts that
batch back into ``orders`` -- with the original id, key, value and headers,
minus the dead-letter headers and the expiry, so it does not expire again.

It runs on :func:`mqkit.ops.move.move`: each batch is published to the
target (confirmed) before it is acked in the DLQ, so a crash mid-way loses
nothing and re-sends at most one batch, whose unchanged ids let dedupe absorb
it.  Messages the selection leaves out stay in the DLQ untouched.

Per-key order: a key's dead letters go back in the order the DLQ holds them.
One exception, on RocketMQ: what a filtered replay or a dry run held and gave
back returns through the broker's revive service in no particular order, so a
replay that follows a dry run (or repeats a filtered one) may not keep it, and
the messages a selection leaves out come back to the DLQ's readers only after
RocketMQ's retry back-off, which grows each time they are held and given back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from mqkit.client import Client
from mqkit.errors import ConfigError
from mqkit.message import Message, Record
from mqkit.ops.move import MoveResult, move
from mqkit.ops.select import Selection, TimeField
from mqkit.policies.deadletter import DLQ_SUFFIX, restore_record

__all__ = ["ReplayResult", "replay"]

ReplayResult = MoveResult
"""``moved``, ``skipped`` (left where they were), ``by_target``, ``seconds``."""


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
    since: float | None = None,
    until: float | None = None,
    time_field: TimeField = "dead_lettered",
    headers: Mapping[str, str] | None = None,
    key: str | None = None,
    select: Selection | None = None,
    batch_size: int = 500,
    window: int = 100_000,
    on_progress: Callable[[MoveResult], None] | None = None,
    stop: threading.Event | None = None,
) -> ReplayResult:
    """Move the selected messages of ``source`` (read as ``group``) to their topic.

    The destination is ``target`` if given, else the topic a dead letter came
    from (header ``mqkit_dlq_topic``), else ``source`` without ``.dlq``.  A
    source that is not a dead-letter queue needs ``target``.  ``reason``,
    ``since``/``until`` (epoch seconds, on ``time_field``), ``headers``
    (name -> pattern), ``key`` (pattern) and ``where`` select, or pass a
    ready :class:`Selection` as ``select``.  ``dry_run`` counts what would move.
    """
    if select is None:
        select = Selection(
            reason=reason,
            since=since,
            until=until,
            time_field=time_field,
            headers=dict(headers or {}),
            key=key,
            where=where,
        )
    elif any(x is not None for x in (reason, where, since, until, headers, key)):
        raise ConfigError("give either select= or the separate criteria, not both", field="select")
    is_dlq = source.endswith(DLQ_SUFFIX)
    if not is_dlq and target is None:
        raise ConfigError(
            f"{source!r} is not a dead-letter queue: say where its messages go with target=",
            field="target",
        )
    if target is not None and target == source:
        raise ConfigError("target is the source itself: that would loop forever", field="target")
    fallback = source.removesuffix(DLQ_SUFFIX)

    def route(record: Record) -> tuple[str, Record] | None:
        if not select.matches(source, record):
            return None
        if is_dlq:
            original, record = restore_record(record)
            dest = target or original or fallback
        else:
            dest = target or fallback
        if dest == source:
            return None  # a dead letter of the DLQ itself: it stays
        if not dry_run:
            mq.ensure_topic(dest)  # declared once per client (cached)
        return dest, record

    return move(
        mq,
        source,
        group=group,
        route=route,
        batch_size=batch_size,
        limit=limit,
        dry_run=dry_run,
        idle_timeout=idle_timeout,
        window=window,
        on_progress=on_progress,
        stop=stop,
    )
