"""Bridge: copy (or move) a topic from one backend to another -- a migration tool.

``bridge(old, new, "orders", group="billing")`` reads ``orders`` as group
``billing`` on ``old`` and publishes each batch to ``orders`` on ``new``,
acking on ``old`` only after ``new`` confirmed it (:mod:`mqkit.ops.move`).
That order is what makes it resumable: kill it at any moment, run it again,
and it continues where the acks stopped; at most the batch in flight is sent
twice, with the same ids, so dedupe on ``new``'s consumers absorbs it.  Keys
are kept and the source is read as one ordered member, so per-key order holds
across the bridge.

Which messages: a group receives what was published after it existed.  The
default group ``mqkit-bridge`` is new the first time, so it mirrors from now
on; to migrate a backlog that already waits, bridge with the group that holds
it (``group="billing"``: that group's unhandled messages move to ``new``).
The target's groups (``target_groups``, default ``default``) are created
before anything is sent, so they receive every bridged message.

``move=True`` deletes the source topic once the bridge group has drained it
(and only if that group existed before the bridge started: a new group may
have missed older messages).  Deleting a topic drops all its groups' state:
stop the producers (or point them at the new URL) first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mqkit.client import Client
from mqkit.errors import ConfigError, Unsupported
from mqkit.message import Record
from mqkit.ops.fanout import backlog_of, stats_or_none
from mqkit.ops.move import MoveResult, move

__all__ = ["DEFAULT_BRIDGE_GROUP", "BridgeResult", "bridge"]

DEFAULT_BRIDGE_GROUP = "mqkit-bridge"


@dataclass
class BridgeResult:
    move: MoveResult
    source_topic: str
    target_topic: str
    group_was_new: bool
    backlog_before: int | None
    deleted_source: bool = False
    note: str = ""

    @property
    def moved(self) -> int:
        return self.move.moved


def _declare_target(
    target: Client, topic: str, partitions: int | None, groups: Sequence[str]
) -> None:
    try:
        target.declare(topic, partitions=partitions, groups=list(groups))
    except ConfigError as exc:
        if exc.field != "partitions":
            raise
        target.declare(topic, groups=list(groups))  # it exists: keep its partitions


def bridge(
    source: Client,
    target: Client,
    topic: str,
    *,
    group: str = DEFAULT_BRIDGE_GROUP,
    target_topic: str | None = None,
    target_groups: Sequence[str] = ("default",),
    move_source: bool = False,
    batch_size: int = 1000,
    idle_timeout: float = 2.0,
    limit: int | None = None,
    on_start: Callable[[int | None, bool], None] | None = None,
    on_progress: Callable[[MoveResult], None] | None = None,
    stop: threading.Event | None = None,
) -> BridgeResult:
    """Copy ``topic`` as seen by ``group`` on ``source`` to ``target``; see the module doc.

    ``on_start(backlog, group_was_new)`` is called before the first message.
    """
    if source is target and (target_topic or topic) == topic:
        raise ConfigError("source and target are the same topic", field="target")
    dest = target_topic or topic
    try:
        rows = stats_or_none(source, topic, group)
        group_was_new = False
    except ConfigError:
        rows, group_was_new = None, True  # no such group yet: subscribing creates it
    partitions = len(rows) if rows else None
    _declare_target(target, dest, partitions, target_groups)
    backlog = backlog_of(rows)
    if on_start is not None:
        on_start(backlog, group_was_new)

    def route(record: Record) -> tuple[str, Record]:
        return dest, record  # byte for byte: id, key, value, headers, expiry

    result = move(
        source,
        topic,
        group=group,
        route=route,
        target=target,
        batch_size=batch_size,
        limit=limit,
        idle_timeout=idle_timeout,
        window=0,
        on_progress=on_progress,
        stop=stop,
    )
    out = BridgeResult(result, topic, dest, group_was_new, backlog)
    if move_source:
        _delete_source(source, topic, group, out, stopped=stop is not None and stop.is_set())
    return out


def _delete_source(
    source: Client, topic: str, group: str, out: BridgeResult, *, stopped: bool
) -> None:
    if out.group_was_new:
        out.note = (
            f"{topic} was copied but NOT deleted: group {group!r} did not exist before this "
            "bridge, so older messages may not have been copied (use the group that holds them)"
        )
        return
    left = backlog_of(stats_or_none(source, topic, group))
    if stopped or left:
        out.note = f"{topic} was NOT deleted: {left} message(s) still wait for {group!r}"
        return
    try:
        source.adapter.delete_topic(topic)
    except Unsupported:
        out.note = (
            f"the {source.scheme} backend cannot delete topics: {topic} is drained for "
            f"{group!r}; remove it with the broker's own tools"
        )
    else:
        out.deleted_source = True
