"""The everyday commands: send, tail, declare, capabilities, lag, replay."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

import mqkit
from mqkit.capabilities import FEATURES, Support
from mqkit.cli.common import (
    UrlOption,
    err_console,
    fail,
    out_console,
    producer_policy,
    session,
    url_of,
)
from mqkit.errors import MQError, PayloadError
from mqkit.policies.deadletter import DLQ_SUFFIX
from mqkit.registry import resolve
from mqkit.settings import Settings

__all__ = ["capabilities", "declare", "send", "tail"]

SUPPORT_STYLE = {Support.NATIVE: "green", Support.EMULATED: "yellow", Support.UNSUPPORTED: "red"}


def _headers(pairs: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r} is not name=value", param_hint="--header")
        headers[name] = value
    return headers


def send(
    ctx: typer.Context,
    topic: Annotated[str, typer.Argument(help="topic to send to")],
    value: Annotated[str, typer.Argument(help="the payload (text; JSON with --json)")],
    key: Annotated[str | None, typer.Option(help="routing / ordering key")] = None,
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="name=value (repeatable)")
    ] = None,
    id: Annotated[  # mirrors Producer.send
        str | None, typer.Option("--id", help="message id (a re-send with it is deduped)")
    ] = None,
    ttl: Annotated[float | None, typer.Option(help="seconds until it expires (then: DLQ)")] = None,
    delay: Annotated[float | None, typer.Option(help="seconds before it is delivered")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="parse VALUE as JSON and send a JSON payload")
    ] = False,
) -> None:
    """Send one message (confirmed) and print its receipt."""
    payload: Any = value
    if as_json:
        try:
            payload = json.loads(value)
        except ValueError as exc:
            raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="VALUE") from None
    headers = _headers(header or [])
    with session(url_of(ctx)) as mq:
        receipt = mq.producer(producer_policy(mq)).send(
            topic, payload, key=key, headers=headers, id=id, ttl=ttl, delay=delay
        )
    state = "[green]confirmed[/]" if receipt.confirmed else "[yellow]sent, not confirmed[/]"
    out_console().print(
        f"{state} topic={escape(receipt.topic)} id={escape(receipt.id)} "
        f"partition={receipt.partition} offset={receipt.offset}",
        soft_wrap=True,
    )


def _show(payload_of: mqkit.Message) -> str:
    try:
        payload = payload_of.payload
    except PayloadError:
        payload = payload_of.value
    if isinstance(payload, str):
        return payload
    if isinstance(payload, bytes):
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return repr(payload)
    return json.dumps(payload, separators=(",", ":"))


def tail(
    ctx: typer.Context,
    topic: Annotated[str, typer.Argument(help="topic to read")],
    group: Annotated[str, typer.Option(help="consumer group")] = "default",
    timeout: Annotated[
        float | None, typer.Option(help="stop after this many idle seconds (default: follow)")
    ] = None,
    max_messages: Annotated[int | None, typer.Option("--max", min=1, help="stop after N")] = None,
    ack: Annotated[
        bool, typer.Option("--ack/--no-ack", help="consume, or only look and give back at exit")
    ] = True,
) -> None:
    """Consume TOPIC as a member of GROUP and print id, key, attempt, headers, payload."""
    out = out_console()
    prefetch = min(max(100, max_messages or 0), 100_000)
    held: list[mqkit.Delivery] = []
    count = 0
    with session(url_of(ctx)) as mq:
        consumer = mq.consumer(topic, group=group, policy=mqkit.Policy(prefetch=prefetch))
        try:
            for d in consumer.iter(timeout=timeout):
                m = d.message
                out.print(
                    f"[cyan]{escape(m.id)}[/]  key={escape(str(m.key))}  attempt={d.attempt}  "
                    f"headers={escape(json.dumps(m.headers))}  {escape(_show(m))}",
                    soft_wrap=True,
                )
                count += 1
                if ack:
                    d.ack()
                else:
                    held.append(d)
                if max_messages is not None and count >= max_messages:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            for d in held:
                d.nack()
            consumer.close()
    note = "" if ack else " (given back to the group)"
    err_console().print(f"{count} message(s){note}", soft_wrap=True)
    if count == 0:
        err_console().print(
            f"a group receives the messages sent after it exists; create it before sending "
            f"with: mqkit declare {escape(topic)} --group {escape(group)}",
            soft_wrap=True,
        )


def declare(
    ctx: typer.Context,
    topic: Annotated[str, typer.Argument(help="topic to create")],
    partitions: Annotated[int | None, typer.Option(min=1, help="partitions / lanes")] = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="group to create (repeatable)")
    ] = None,
    ordered: Annotated[bool, typer.Option(help="per-key ordered topic")] = False,
) -> None:
    """Create TOPIC, its groups and TOPIC.dlq (idempotent)."""
    groups = group or []
    with session(url_of(ctx)) as mq:
        mq.declare(topic, partitions=partitions, groups=groups, ordered=ordered)
    names = ", ".join(groups) or "none"
    out_console().print(
        f"[green]declared[/] {escape(topic)} (and {escape(topic)}{DLQ_SUFFIX}); "
        f"groups: {escape(names)}",
        soft_wrap=True,
    )


def capabilities(ctx: typer.Context, url: UrlOption = None) -> None:
    """What the backend of URL does natively, emulates, or does not support."""
    try:
        settings = Settings.load(url_of(ctx, url))
        override = settings.all_options().get("adapter")
        cls = resolve(settings.parsed().scheme, override if isinstance(override, str) else None)
    except MQError as exc:
        fail(exc)
    caps = cls.capabilities
    table = Table(title=f"{caps.backend}: {settings.effective_url()}", title_justify="left")
    for name in ("feature", "support", "meaning", "note"):
        table.add_column(name, overflow="fold")
    for feature, meaning in FEATURES.items():
        level = caps.level(feature)
        table.add_row(
            feature,
            f"[{SUPPORT_STYLE[level]}]{level.value}[/]",
            escape(meaning),
            escape(caps.notes.get(feature, "")),
        )
    size = caps.max_message_size
    shown = f"{size // 2**20} MiB" if size % 2**20 == 0 else f"{size} bytes"
    table.add_row("max_message_size", shown, "largest message accepted", "")
    out_console().print(table)
