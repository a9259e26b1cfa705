"""The ``mqkit`` command line, in-process with typer's CliRunner, on memory://."""

from __future__ import annotations

import importlib.util
import io
import re
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

import mqkit
from mqkit.backends.memory import reset
from mqkit.cli import app, default_demo_url
from mqkit.cli.demo import run_demo
from mqkit.message import DLQ_ATTEMPTS, DLQ_REASON

pytestmark = [pytest.mark.memory, pytest.mark.timeout(60)]

ENV = {"COLUMNS": "200", "MQKIT_URL": ""}


@pytest.fixture
def url() -> Iterator[str]:
    name = "cli" + uuid.uuid4().hex
    yield f"memory://{name}"
    reset(name)


def mqkit_cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={**ENV, **(env or {})})


def ok(*args: str) -> Result:
    result = mqkit_cli(*args)
    assert result.exit_code == 0, result.output
    return result


def rows(result: Result) -> list[list[str]]:
    """tail's rows: id, key=, attempt=, headers=, payload."""
    return [line.split("  ", 4) for line in result.stdout.splitlines() if line.strip()]


def test_help_lists_the_commands() -> None:
    result = ok("--help")
    for command in ("send", "tail", "declare", "capabilities", "lag", "replay", "demo"):
        assert command in result.stdout
    assert "MQKIT_URL" in result.stdout


def test_send_then_tail_round_trip(url: str) -> None:
    ok("--url", url, "declare", "orders", "--group", "billing")
    sent = ok(
        "--url", url, "send", "orders", '{"n": 1}', "--json", "--key", "user-1",
        "-H", "a=b", "--header", "c=d=e", "--id", "order-1",
    )  # fmt: skip
    assert sent.stdout.startswith("confirmed topic=orders id=order-1 partition=")
    ok("--url", url, "send", "orders", "plain text")

    tailed = ok("--url", url, "tail", "orders", "--group", "billing", "--timeout", "0.3")
    first, second = rows(tailed)
    assert first == [
        "order-1",
        "key=user-1",
        "attempt=1",
        'headers={"a": "b", "c": "d=e"}',
        '{"n":1}',
    ]
    assert second[1:] == ["key=None", "attempt=1", "headers={}", "plain text"]
    assert "2 message(s)" in tailed.stderr
    again = ok("--url", url, "tail", "orders", "--group", "billing", "--timeout", "0.3")
    assert rows(again) == []  # they were acked
    assert "mqkit declare orders --group billing" in again.stderr


def test_tail_no_ack_gives_messages_back_and_max_stops(url: str) -> None:
    ok("--url", url, "declare", "jobs", "--group", "g")
    for v in ("a", "b", "c"):
        ok("--url", url, "send", "jobs", v)
    look = ok("--url", url, "tail", "jobs", "--group", "g", "--timeout", "0.3", "--no-ack")
    assert [r[-1] for r in rows(look)] == ["a", "b", "c"]
    assert "given back" in look.stderr
    one = ok("--url", url, "tail", "jobs", "--group", "g", "--timeout", "0.3", "--max", "1")
    assert [r[2:] for r in rows(one)] == [["attempt=2", "headers={}", "a"]]
    rest = ok("--url", url, "tail", "jobs", "--group", "g", "--timeout", "0.3")
    assert [r[-1] for r in rows(rest)] == ["b", "c"]


def test_lag_counts_the_backlog(url: str) -> None:
    ok("--url", url, "declare", "t", "--group", "g", "--partitions", "2")
    for v in ("1", "2", "3"):
        ok("--url", url, "send", "t", v, "--key", f"k{v}")
    result = ok("--url", url, "lag", "t", "--group", "g")
    total = next(line for line in result.stdout.splitlines() if "total" in line)
    assert re.search(r"total\W+3\W", total)


def test_capabilities_shows_support_and_the_adapters_notes() -> None:
    result = ok("capabilities", "--url", "memory://")
    persistent = next(line for line in result.stdout.splitlines() if "persistent " in line)
    assert "unsupported" in persistent
    assert "process memory" in persistent  # the adapter's note


def test_replay_moves_dead_letters_back(url: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mqkit.connect(url) as mq:
            mq.declare("orders", groups=["g"])
            mq.producer().send("orders", "poison", id="p-1")
            consumer = mq.consumer("orders", group="g")
            for d in consumer.iter(timeout=0.3):
                d.reject("bad")
            consumer.close()
    dry = ok("--url", url, "replay", "orders", "--dry-run", "--timeout", "0.3")
    assert dry.stdout.startswith("would move 1 (1 to orders)")
    moved = ok("--url", url, "replay", "orders.dlq", "--timeout", "0.3")
    assert moved.stdout.startswith("moved 1 (1 to orders)")
    back = ok("--url", url, "tail", "orders", "--group", "g", "--timeout", "0.3")
    assert [r[0] for r in rows(back)] == ["p-1"]


@pytest.mark.parametrize(
    ("bad_url", "says"),
    [
        ("nope", "is neither a URL"),
        ("kafak://127.0.0.1:9092", "Did you mean 'kafka'"),
        ("memory://x?session_timeout=soon", "session_timeout"),
    ],
)
def test_mqkit_errors_are_one_red_line_and_exit_2(bad_url: str, says: str) -> None:
    result = mqkit_cli("--url", bad_url, "send", "orders", "x")
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    assert says in line


def test_mqkit_error_in_a_command_exits_2(url: str) -> None:
    result = mqkit_cli("--url", url, "send", "bad topic!", "x")
    assert result.exit_code == 2
    assert "error: topic:" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("send", "t", "{not json", "--json"),
        ("send", "t", "x", "--header", "no-equals-sign"),
    ],
)
def test_bad_arguments_are_usage_errors(url: str, args: tuple[str, ...]) -> None:
    result = mqkit_cli("--url", url, *args)
    assert result.exit_code == 2
    assert "Invalid value" in result.stderr


def test_demo_reports_one_dead_letter_and_one_duplicate(url: str) -> None:
    result = ok("demo", "--url", url, "--messages", "7")
    out = result.stdout
    assert re.search(r"dead-lettered\W+1\W", out)
    assert re.search(r"duplicates\W+1\W", out)
    assert re.search(r"sent\W+8\W", out)
    assert re.search(r"mqkit_dlq_reason\W+failed\W", out)
    assert re.search(r"mqkit_dlq_attempts\W+3\W", out)
    assert "took effect exactly once" in out


def test_demo_with_an_unreachable_dedupe_store_fails_cleanly(url: str) -> None:
    result = mqkit_cli("demo", "--url", url, "--dedupe", "redis://127.0.0.1:1/0")
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    assert "redis" in line


def test_run_demo_outcomes(url: str) -> None:
    console = Console(file=io.StringIO(), width=200)
    result = run_demo(url, messages=9, console=console)
    # orders 1..9: 5 is poison (3 attempts), 3, 6 and 9 fail once then succeed
    assert result.sent == 10
    assert result.handled == 8
    assert result.retried == 3 + 2
    assert (result.dead_lettered, result.duplicates) == (1, 1)
    assert sorted(result.effects.values()) == [1] * 8
    assert result.dead_letter[DLQ_REASON] == "failed"
    assert result.dead_letter[DLQ_ATTEMPTS] == "3"
    assert "ValueError" in console.file.getvalue()  # type: ignore[attr-defined]


def test_demo_runs_again_in_the_same_process(url: str) -> None:
    """Ids are unique per run: dedupe markers of the first run do not swallow the second."""
    console = Console(file=io.StringIO())
    first = run_demo(url, messages=3, console=console)
    second = run_demo(url, messages=3, console=console)
    assert (first.handled, first.duplicates) == (second.handled, second.duplicates) == (2, 1)


def test_demo_ignores_mqkit_url_and_uses_the_default(tmp_path: Path) -> None:
    result = mqkit_cli("demo", "-n", "3", env={"MQKIT_URL": "kafak://not-this-one"})
    assert result.exit_code == 0, result.output
    backend = "native" if importlib.util.find_spec("mqkit.backends.native") else "memory"
    assert f"backend {backend} at {backend}://" in result.stdout


def test_default_demo_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = default_demo_url(tmp_path)
    if importlib.util.find_spec("mqkit.backends.native") is not None:
        assert url == f"native://{tmp_path.resolve()}"
    else:
        assert url == "memory://"

    def missing(name: str) -> None:
        raise ImportError(name)

    monkeypatch.setattr("mqkit.cli.demo.importlib.import_module", missing)
    assert default_demo_url(tmp_path) == "memory://"


def test_broker_serve_help_is_the_servers() -> None:
    result = ok("broker", "serve", "--help")
    assert "--data-dir" in result.stdout


@pytest.mark.server
def test_broker_serve_then_send_and_tail_over_mqkit_url(tmp_path: Path) -> None:
    log = (tmp_path / "server.log").open("w")
    cmd = [sys.executable, "-m", "mqkit.cli", "broker", "serve", "--port", "0"]
    proc = subprocess.Popen(
        [*cmd, "--data-dir", str(tmp_path / "data"), "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"listening on [^ ]+:(\d+)", line)
        assert found, line + (tmp_path / "server.log").read_text()
        url = f"mqkit://127.0.0.1:{found.group(1)}"
        ok("--url", url, "declare", "t", "--group", "g")
        ok("--url", url, "send", "t", "over the wire", "--id", "w-1")
        tailed = ok("--url", url, "tail", "t", "--group", "g", "--timeout", "0.5")
        assert [(r[0], r[-1]) for r in rows(tailed)] == [("w-1", "over the wire")]
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
        log.close()
    assert code == 0  # SIGTERM is a graceful stop
