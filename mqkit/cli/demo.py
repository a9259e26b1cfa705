"""``mqkit demo``: the main job in one process, shown step by step.

A producer sends orders with confirms; a consumer group handles them with the
default reliability policy plus dedupe: a payment call that times out once is
retried with backoff, a poison order ends in ``orders.dlq`` with its reason,
and a producer's re-send of an order (same id) is absorbed by dedupe.
"""

from __future__ import annotations

import importlib
import json
import logging
import tempfile
import threading
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import mqkit
from mqkit.cli.common import UrlOption, fail, out_console, url_of
from mqkit.errors import ConnectionLost, MQError
from mqkit.message import DLQ_HEADERS
from mqkit.policies.deadletter import dlq_topic
from mqkit.policies.dedupe import open_store

__all__ = ["DemoResult", "default_demo_url", "demo_command", "run_demo"]

TOPIC = "orders"
GROUP = "fulfilment"
ITEMS = ("book", "lamp", "mug", "desk", "pen")
MAX_ATTEMPTS = 3


def default_demo_url(data_dir: Path | None = None) -> str:
    """The embedded native broker in ``data_dir`` (a new temp dir if None) if it
    works here, else ``memory://``."""
    try:
        importlib.import_module("mqkit.backends.native")
    except ImportError:
        return "memory://"
    directory = data_dir if data_dir is not None else Path(tempfile.mkdtemp(prefix="mqkit-"))
    url = f"native://{directory.resolve()}"
    try:
        mqkit.connect(url).close()
    except Exception:  # not written yet or broken here: the demo still runs
        return "memory://"
    return url


@dataclass
class DemoResult:
    """What the demo observed, for its summary and for tests."""

    url: str
    sent: int = 0
    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    effects: dict[str, int] = field(default_factory=dict)  # order id -> successful runs
    dead_letter: dict[str, str] = field(default_factory=dict)  # headers of ours in the DLQ


class _RetryEcho(logging.Handler):
    """Shows the consumer's own retry decisions (with the backoff it chose)."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(args, tuple) and len(args) == 4 and isinstance(args[2], float):
            text = f"retry #{args[1]} in {args[2]:.2f}s (exponential backoff with jitter)"
        else:
            text = record.getMessage()
        self.console.print(f"      [yellow]↻[/] {escape(text)}", soft_wrap=True)


def check_dedupe(spec: str) -> None:
    """Fail early, as an MQError, if a dedupe store cannot be reached."""
    store = open_store(spec)  # ConfigError / MissingDriver for a bad URL or no driver
    if store is None:
        return
    probe = f"mqkit:demo:probe:{uuid.uuid4().hex}"
    try:
        store.claim(probe, "demo", 1.0)
        store.release(probe, "demo")
    except Exception as exc:
        raise ConnectionLost(
            f"the dedupe store {spec} is not reachable ({type(exc).__name__}: {exc}); start "
            "Redis (docker/brokers up redis) or leave out --dedupe"
        ) from exc
    finally:
        store.close()


def run_demo(
    url: str, *, messages: int = 10, dedupe: str = "memory://", console: Console | None = None
) -> DemoResult:
    """Run the pipeline on ``url`` and print what happens; raises MQError on failure."""
    if messages < 3:
        raise mqkit.ConfigError("the demo needs at least 3 orders", field="messages")
    check_dedupe(dedupe)
    out = console or Console(highlight=False)
    result = DemoResult(url)
    run = uuid.uuid4().hex[:6]  # ids unique per run: dedupe markers outlive a run
    ids = {n: f"order-{n}-{run}" for n in range(1, messages + 1)}
    poison = messages // 2 + 1
    flaky = {n for n in ids if n % 3 == 0 and n != poison}

    def order(n: int) -> dict[str, Any]:
        amount = -5.0 if n == poison else round(7.5 + 2.5 * n, 2)
        return {"order": n, "customer": f"c-{n % 3 + 1}", "item": ITEMS[n % 5], "amount": amount}

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="memory:// keeps messages")
        with mqkit.connect(url) as mq:
            caps = mq.capabilities
            persistent = caps.supports("persistent")
            out.rule("[bold]mqkit demo[/]: an order pipeline")
            out.print(f"backend [bold]{escape(caps.backend)}[/] at {escape(url)}", soft_wrap=True)
            if not persistent:
                out.print(
                    f"[yellow]note:[/] {escape(caps.backend)} keeps messages in memory only; "
                    "use native:// or a real broker for persistence",
                    soft_wrap=True,
                )
            mq.declare(TOPIC, partitions=4, groups=[GROUP])

            out.rule(f"1. producer: confirmed sends to {TOPIC!r}")
            producer = mq.producer(mqkit.Policy(confirm=True, persistent=persistent))
            receipts = Table("id", "key", "partition", "offset", "confirmed")
            for n, mid in ids.items():
                r = producer.send(TOPIC, order(n), key=f"customer-{n % 3 + 1}", id=mid)
                receipts.add_row(
                    mid,
                    f"customer-{n % 3 + 1}",
                    str(r.partition),
                    str(r.offset),
                    "[green]yes[/]" if r.confirmed else "[red]no[/]",
                )
                result.sent += 1
            out.print(receipts)
            again = producer.send(TOPIC, order(1), key="customer-2", id=ids[1])
            result.sent += 1
            out.print(
                f"re-sent [cyan]{ids[1]}[/] with the same id, as a producer does after a lost "
                f"ack (confirmed: {again.confirmed})",
                soft_wrap=True,
            )

            out.rule(f"2. consumer group {GROUP!r}: ack after success, retries, dead letter")
            out.print(
                f"policy: max_attempts={MAX_ATTEMPTS}, backoff=(0.05, 2.0, 0.5), dedupe={dedupe}",
                soft_wrap=True,
            )
            policy = mqkit.Policy(
                dedupe=dedupe, max_attempts=MAX_ATTEMPTS, backoff=(0.05, 2.0, 0.5)
            )
            consumer = mq.consumer(TOPIC, group=GROUP, policy=policy)
            calls: dict[str, int] = {}

            def handle(m: mqkit.Message) -> None:
                o = m.payload
                calls[m.id] = attempt = calls.get(m.id, 0) + 1
                try:
                    if o["amount"] <= 0:
                        raise ValueError(f"amount must be positive, got {o['amount']}")
                    if o["order"] in flaky and attempt == 1:
                        raise TimeoutError("payment service timed out")
                except Exception as exc:
                    last = " -> dead letter" if attempt >= MAX_ATTEMPTS else ""
                    out.print(
                        f"  [red]✗[/] {m.id} attempt {attempt}: {type(exc).__name__}: {exc}{last}",
                        soft_wrap=True,
                    )
                    raise
                result.effects[m.id] = result.effects.get(m.id, 0) + 1
                out.print(
                    f"  [green]✓[/] {m.id} attempt {attempt}: charged {o['amount']:.2f} "
                    f"for a {o['item']} (customer {o['customer']})",
                    soft_wrap=True,
                )

            stop = threading.Event()

            def watch() -> None:
                """Close the consumer once every order is settled and the duplicate seen."""
                seen = 0
                while not stop.wait(0.02):
                    s = consumer.stats
                    if s.duplicates > seen:
                        seen = s.duplicates
                        out.print(
                            f"  [blue]≡[/] duplicate of {ids[1]} acked without running the "
                            "handler (dedupe)",
                            soft_wrap=True,
                        )
                    if len(result.effects) + s.dead_lettered >= messages and seen >= 1:
                        consumer.close()
                        return

            echo = _RetryEcho(out)
            log = logging.getLogger("mqkit.consumer")
            level = log.level
            log.addHandler(echo)
            log.setLevel(logging.INFO)
            watcher = threading.Thread(target=watch, name="mqkit-demo-watch", daemon=True)
            watcher.start()
            try:
                stats = consumer.run(handle, idle_timeout=10.0)
            finally:
                stop.set()
                watcher.join()
                log.removeHandler(echo)
                log.setLevel(level)
                consumer.close()
            result.handled = len(result.effects)
            result.retried = stats.retried
            result.dead_lettered = stats.dead_lettered
            result.duplicates = stats.duplicates

            out.rule(f"3. dead letters: {dlq_topic(TOPIC)}")
            dlq = mq.consumer(dlq_topic(TOPIC))
            try:
                for d in dlq.iter(timeout=5.0):
                    if d.message.id not in ids.values():
                        continue  # an earlier run's: stays there (given back on close)
                    d.ack()
                    result.dead_letter = dict(d.message.headers)
                    table = Table("header", "value", title=d.message.id, title_justify="left")
                    for h in DLQ_HEADERS:
                        table.add_row(h, escape(d.message.headers.get(h, "")))
                    table.add_row("payload", escape(json.dumps(d.message.payload)))
                    out.print(table)
                    break
                else:
                    out.print("[red]no dead letter arrived[/]")
            finally:
                dlq.close()

    out.rule("summary")
    summary = Table("", "count", "what it shows")
    summary.add_row("sent", str(result.sent), "every send returned a broker receipt")
    summary.add_row("handled", str(result.handled), "orders whose handler succeeded")
    summary.add_row("retried", str(result.retried), "failed attempts retried with backoff")
    summary.add_row(
        "dead-lettered", str(result.dead_lettered), f"orders moved to {dlq_topic(TOPIC)}"
    )
    summary.add_row("duplicates", str(result.duplicates), "same-id re-sends absorbed by dedupe")
    out.print(summary)
    once = result.effects and all(n == 1 for n in result.effects.values())
    out.print(
        "[green]every handled order took effect exactly once[/]"
        if once
        else "[red]some order took effect more than once[/]"
    )
    return result


def demo_command(
    ctx: typer.Context,
    url: UrlOption = None,
    messages: Annotated[int, typer.Option("--messages", "-n", min=3, help="orders to send")] = 10,
    dedupe: Annotated[
        str | None,
        typer.Option(help="dedupe store: a Redis URL (default: in-process memory://)"),
    ] = None,
) -> None:
    """The main job in one process: confirmed sends, retries, dead letters, dedupe.

    Runs on the embedded native broker in a temporary directory (memory:// where
    native is not available) unless --url is given; MQKIT_URL is ignored, so the
    demo never writes into a configured broker by accident.
    """
    chosen = url_of(ctx, url)
    with tempfile.TemporaryDirectory(prefix="mqkit-demo-") as tmp:
        target = chosen or default_demo_url(Path(tmp))
        try:
            run_demo(target, messages=messages, dedupe=dedupe or "memory://", console=out_console())
        except MQError as exc:
            fail(exc)
