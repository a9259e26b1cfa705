"""What every ``mqkit`` command shares: the URL, consoles, and one-line errors."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

import mqkit
from mqkit.errors import MQError

__all__ = [
    "URL_HELP",
    "State",
    "UrlOption",
    "err_console",
    "fail",
    "out_console",
    "producer_policy",
    "session",
    "url_of",
]

URL_HELP = "broker URL (default: $MQKIT_URL, else the embedded native broker in ./.mqkit)"
UrlOption = Annotated[str | None, typer.Option("--url", help=URL_HELP, metavar="URL")]


@dataclass
class State:
    """Options of ``mqkit`` itself, handed to every command."""

    url: str | None = None


def url_of(ctx: typer.Context, local: str | None = None) -> str | None:
    """The command's own ``--url``, else the global one, else None (environment)."""
    if local:
        return local
    state = ctx.find_object(State)
    return state.url if state is not None else None


def out_console() -> Console:
    return Console(highlight=False)


def err_console() -> Console:
    return Console(stderr=True, highlight=False)


def fail(exc: BaseException | str) -> NoReturn:
    """One red line on stderr, exit status 2; no traceback."""
    text = " ".join(str(exc).split())
    err_console().print(f"[bold red]error:[/] {escape(text)}", soft_wrap=True)
    raise typer.Exit(2)


@contextmanager
def session(url: str | None) -> Iterator[mqkit.Client]:
    """A connected client; any MQError inside becomes :func:`fail`."""
    with warnings.catch_warnings():
        # memory:// warns that it cannot persist; commands say so where it matters.
        warnings.filterwarnings("ignore", message="memory:// keeps messages")
        try:
            with mqkit.connect(url) as mq:
                yield mq
        except MQError as exc:
            fail(exc)


def producer_policy(mq: mqkit.Client) -> mqkit.Policy:
    """The client's policy, without asking a backend for persistence it cannot give."""
    policy = mq.default_policy
    if policy.persistent and not mq.capabilities.supports("persistent"):
        return policy.model_copy(update={"persistent": False})
    return policy
