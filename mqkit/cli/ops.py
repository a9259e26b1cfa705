"""The incident playbooks as commands: fanout, replay, lag, bridge.

    mqkit fanout orders --group billing             # backlog -> orders.fanout (10x lanes)
    mqkit fanout orders --group billing --finish    # drained? back to normal
    mqkit replay orders.dlq --reason expired --since 6h
    mqkit lag orders payments --group billing --json
    mqkit bridge --from native:///old --to kafka://k:9092 orders --group billing

Thin wrappers over :mod:`mqkit.ops`: the functions do the work, these parse
options, show a progress bar on stderr and print one summary line on
stdout.  Errors are one red line and exit status 2; a fanout that is not
drained yet (``--finish``) exits 1.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from mqkit.cli.common import fail, out_console, session, url_of
from mqkit.cli.progress import graceful_stop, move_progress
from mqkit.errors import ConfigError, MQError
from mqkit.ops.bridge import DEFAULT_BRIDGE_GROUP
from mqkit.ops.bridge import bridge as run_bridge
from mqkit.ops.fanout import (
    DEFAULT_FACTOR,
    FanoutPlan,
    backlog_of,
    fanout_topic,
    finish_fanout,
    stats_or_none,
)
from mqkit.ops.fanout import fanout as run_fanout
from mqkit.ops.lag import LagReport
from mqkit.ops.lag import lag as lag_of
from mqkit.ops.replay import replay as run_replay
from mqkit.ops.select import Selection, parse_header_match, parse_when
from mqkit.policies.deadletter import DLQ_SUFFIX

__all__ = ["bridge", "fanout", "lag", "replay"]

QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]
BatchOption = Annotated[int, typer.Option("--batch", min=1, help="messages per confirmed batch")]
IdleOption = Annotated[
    float, typer.Option("--idle", min=0.1, help="stop after this many seconds with no message")
]


def fanout(
    ctx: typer.Context,
    topic: Annotated[str, typer.Argument(help="the topic with the backlog")],
    factor: Annotated[
        int, typer.Option(min=1, help="lanes of TOPIC.fanout = factor x TOPIC's partitions")
    ] = DEFAULT_FACTOR,
    group: Annotated[str, typer.Option(help="the consumer group whose backlog it is")] = "default",
    partitions: Annotated[
        int | None, typer.Option(min=1, help="exact lanes of TOPIC.fanout (overrides --factor)")
    ] = None,
    finish: Annotated[
        bool,
        typer.Option("--finish", help="TOPIC.fanout drained? keep dead letters, delete it"),
    ] = False,
    workers_stopped: Annotated[
        bool,
        typer.Option(
            "--workers-stopped",
            help="with --finish: no worker of TOPIC.fanout runs (needed where the broker "
            "cannot count unacked messages, e.g. RabbitMQ)",
        ),
    ] = False,
    batch: BatchOption = 1000,
    idle: IdleOption = 2.0,
    limit: Annotated[int | None, typer.Option(min=1, help="move at most N")] = None,
    quiet: QuietOption = False,
) -> None:
    """Move GROUP's backlog of TOPIC to TOPIC.fanout (K x the lanes) for K x the consumers.

    Stop TOPIC's consumers first; then run K x consumers of TOPIC.fanout (same group,
    same handler, ordering per_key).  Safe to kill and re-run: it resumes, and ids are
    kept, so dedupe on the workers absorbs the one batch a crash may move twice.  Where a
    crashed run's messages come back only when their lease ends (RocketMQ: 15 s), resume
    with --idle longer than the lease, or the resumed run may stop before they are back.
    """
    out = out_console()
    with session(url_of(ctx)) as mq:
        if finish:
            done = finish_fanout(mq, topic, group=group, workers_stopped=workers_stopped)
            if not done.drained:
                out.print(f"[yellow]not finished:[/] {escape(done.note)}", soft_wrap=True)
                raise typer.Exit(1)
            parts = [f"finished: {escape(fanout_topic(topic))} is drained"]
            if done.dead_letters_moved:
                parts.append(f"moved {done.dead_letters_moved} dead letter(s) to {topic}.dlq")
            if done.deleted:
                parts.append("deleted " + ", ".join(done.deleted))
            if done.note:
                parts.append(done.note)
            out.print("; ".join(parts), soft_wrap=True)
            return
        plans: list[FanoutPlan] = []
        rows = stats_or_none(mq, topic, group)
        with (
            graceful_stop() as stop,
            move_progress(
                f"{topic} -> {fanout_topic(topic)}", backlog_of(rows), enabled=not quiet
            ) as progress,
        ):
            result = run_fanout(
                mq,
                topic,
                group=group,
                factor=factor,
                partitions=partitions,
                batch_size=batch,
                idle_timeout=idle,
                limit=limit,
                on_start=plans.append,
                on_progress=progress,
                stop=stop,
            )
    plan, moved = result.plan, result.move
    lanes = "?" if plan.lanes is None else str(plan.lanes)
    out.print(
        f"moved {moved.moved} from {escape(topic)} to {escape(plan.target)} ({lanes} lanes) "
        f"in {moved.seconds:.1f}s ({moved.rate:,.0f} msg/s); now run {lanes} consumers of "
        f"{escape(plan.target)} in group {escape(group)} (ordering per_key), then: "
        f"mqkit fanout {escape(topic)} --group {escape(group)} --finish",
        soft_wrap=True,
    )


def replay(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(help="dead-letter queue, e.g. orders.dlq (orders means orders.dlq)")
    ],
    reason: Annotated[
        str | None, typer.Option(help="only this reason: failed, expired, invalid, rejected")
    ] = None,
    target: Annotated[str | None, typer.Option(help="send here instead of the origin")] = None,
    group: Annotated[str, typer.Option(help="group SOURCE is read as")] = "default",
    since: Annotated[
        str | None, typer.Option(help="from this time: 2h (ago), ISO 8601, or epoch seconds")
    ] = None,
    until: Annotated[str | None, typer.Option(help="before this time (same forms)")] = None,
    sent: Annotated[
        bool,
        typer.Option("--sent-time", help="--since/--until on the send time (default: dead-letter)"),
    ] = False,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", help="name=pattern that must match (repeatable)"),
    ] = None,
    key: Annotated[str | None, typer.Option(help="key pattern, e.g. 'user-4*'")] = None,
    plain_topic: Annotated[
        bool, typer.Option("--topic", help="SOURCE is a plain topic, not a DLQ (needs --target)")
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="move at most N")] = None,
    dry_run: Annotated[bool, typer.Option(help="count, move nothing")] = False,
    timeout: Annotated[float, typer.Option(help="stop after this many idle seconds")] = 2.0,
    batch: BatchOption = 500,
    quiet: QuietOption = False,
) -> None:
    """Move dead letters (or a topic's messages) back to the topic they came from."""
    dlq = source if plain_topic or source.endswith(DLQ_SUFFIX) else source + DLQ_SUFFIX
    try:
        select = Selection(
            reason=reason,
            since=None if since is None else parse_when(since, field_name="since"),
            until=None if until is None else parse_when(until, field_name="until"),
            time_field="sent" if sent else "dead_lettered",
            headers=parse_header_match(header or []),
            key=key,
        )
    except MQError as exc:
        fail(exc)
    with session(url_of(ctx)) as mq:
        total = backlog_of(stats_or_none(mq, dlq, group))
        with (
            graceful_stop() as stop,
            move_progress(f"replay {dlq}", total, enabled=not quiet) as progress,
        ):
            result = run_replay(
                mq,
                dlq,
                target=target,
                group=group,
                select=select,
                limit=limit,
                dry_run=dry_run,
                idle_timeout=timeout,
                batch_size=batch,
                on_progress=progress,
                stop=stop,
            )
    verb = "would move" if dry_run else "moved"
    where = ", ".join(f"{n} to {t}" for t, n in result.by_target.items()) or "nothing"
    out_console().print(
        f"{verb} {result.moved} ({escape(where)}); left {result.skipped} in {escape(dlq)}",
        soft_wrap=True,
    )
    if result.window_full:
        out_console().print(
            f"[yellow]stopped after examining {result.moved + result.skipped}: the messages "
            "left in place fill the scan window; move or purge them, then run again[/]",
            soft_wrap=True,
        )


def _cell(v: float | None) -> str:
    if v is None:
        return "?"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def _table(report: LagReport) -> Table:
    table = Table(title=f"{report.topic} / {report.group}", title_justify="left")
    for name in ("partition", "backlog", "in flight", "oldest (s)"):
        table.add_column(name, justify="right")
    for r in report.rows:
        table.add_row(_cell(r.partition), _cell(r.backlog), _cell(r.in_flight), _cell(r.oldest_age))
    table.add_row(
        "total",
        _cell(report.backlog),
        _cell(report.in_flight),
        _cell(report.oldest_age),
        style="bold",
    )
    table.caption = f"dead letters in {report.topic}{DLQ_SUFFIX}: {_cell(report.dlq)}"
    table.caption_justify = "left"
    return table


def lag(
    ctx: typer.Context,
    topics: Annotated[list[str], typer.Argument(help="topics (e.g. orders orders.fanout)")],
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="consumer group (repeatable)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Backlog, in flight, oldest age per partition (lane), and dead letters waiting."""
    groups = group or ["default"]
    out = out_console()
    with session(url_of(ctx)) as mq:
        reports = [lag_of(mq, t, g) for t in topics for g in groups]
    for report in reports:
        if as_json:
            print(json.dumps(report.as_dict()))
        else:
            out.print(_table(report))


def bridge(
    ctx: typer.Context,
    topic: Annotated[str, typer.Argument(help="topic to copy")],
    to_url: Annotated[str, typer.Option("--to", help="target broker URL", metavar="URL")],
    from_url: Annotated[
        str | None,
        typer.Option(
            "--from", help="source broker URL (default: --url / MQKIT_URL)", metavar="URL"
        ),
    ] = None,
    group: Annotated[str, typer.Option(help="group the source is read as")] = DEFAULT_BRIDGE_GROUP,
    target_topic: Annotated[str | None, typer.Option(help="name on the target")] = None,
    target_group: Annotated[
        list[str] | None,
        typer.Option("--target-group", help="group to create on the target first (repeatable)"),
    ] = None,
    move: Annotated[
        bool, typer.Option("--move", help="delete the source topic once the copy is drained")
    ] = False,
    batch: BatchOption = 1000,
    idle: IdleOption = 2.0,
    limit: Annotated[int | None, typer.Option(min=1, help="copy at most N")] = None,
    quiet: QuietOption = False,
) -> None:
    """Copy (or --move) TOPIC from one broker to another: confirmed on the target, then
    acked on the source -- kill it any time and run it again to resume."""
    out = out_console()
    source_url = url_of(ctx, from_url)
    with session(source_url) as src, session(to_url) as dst:
        try:
            total = backlog_of(stats_or_none(src, topic, group))
        except ConfigError:
            total = None  # the group does not exist yet: the bridge creates it
        with (
            graceful_stop() as stop,
            move_progress(f"{topic} -> {to_url}", total, enabled=not quiet) as progress,
        ):
            result = run_bridge(
                src,
                dst,
                topic,
                group=group,
                target_topic=target_topic,
                target_groups=target_group or ["default"],
                move_source=move,
                batch_size=batch,
                idle_timeout=idle,
                limit=limit,
                on_progress=progress,
                stop=stop,
            )
    m = result.move
    out.print(
        f"copied {m.moved} from {escape(topic)} to {escape(result.target_topic)} at "
        f"{escape(to_url)} in {m.seconds:.1f}s ({m.rate:,.0f} msg/s)"
        + ("; deleted the source topic" if result.deleted_source else ""),
        soft_wrap=True,
    )
    if result.group_was_new:
        out.print(
            f"[yellow]note:[/] group {escape(group)} was new on the source: it sees messages "
            "sent from its creation on; to copy a backlog that already waits, use the group "
            "that holds it (--group)",
            soft_wrap=True,
        )
    if result.note:
        out.print(f"[yellow]note:[/] {escape(result.note)}", soft_wrap=True)
