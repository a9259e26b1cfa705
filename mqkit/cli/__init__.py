"""The ``mqkit`` command line (typer + rich).

    mqkit send orders '{"id": 1}' --json --key user-42
    mqkit tail orders --group billing --timeout 5
    mqkit declare orders --partitions 4 --group billing
    mqkit capabilities --url kafka://127.0.0.1:9092
    mqkit lag orders --group billing
    mqkit replay orders.dlq --reason expired --since 6h
    mqkit fanout orders --group billing [--finish]
    mqkit bridge --from native:///old --to kafka://127.0.0.1:9092 orders --group billing
    mqkit demo
    mqkit broker serve --data-dir /var/lib/mqkit --port 7600

Every command takes the broker from ``mqkit --url URL``, else ``MQKIT_URL``,
else the embedded native broker in ``./.mqkit``.  mqkit errors print one red
line and exit with status 2.
"""

from __future__ import annotations

import typer

from mqkit.cli import commands, ops
from mqkit.cli.common import State, UrlOption
from mqkit.cli.demo import default_demo_url, demo_command

__all__ = ["app", "default_demo_url", "main"]

app = typer.Typer(
    name="mqkit",
    help="One producer/consumer interface over Kafka, RabbitMQ, ActiveMQ, RocketMQ and "
    "mqkit's native broker, with reliability policies built in.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(ctx: typer.Context, url: UrlOption = None) -> None:
    ctx.obj = State(url=url)


app.command()(commands.send)
app.command()(commands.tail)
app.command()(commands.declare)
app.command()(commands.capabilities)
app.command()(ops.lag)
app.command()(ops.replay)
app.command()(ops.fanout)
app.command()(ops.bridge)
app.command("demo")(demo_command)

broker = typer.Typer(help="The native broker.", no_args_is_help=True)
app.add_typer(broker, name="broker")


@broker.command(
    "serve",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def _broker_serve(ctx: typer.Context) -> None:
    """Run the native broker as a server for mqkit:// clients (see: serve --help)."""
    from mqkit.broker.server import main as serve

    raise typer.Exit(serve(list(ctx.args)))


def main() -> None:
    """Entry point of the ``mqkit`` script."""
    app()
