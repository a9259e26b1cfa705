"""The fanout and replay commands in-process (CliRunner) on memory://."""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner, Result

import mqkit
from mqkit import ops
from mqkit.backends.memory import reset
from mqkit.cli import app
from tests.ops.helpers import fill, read_all

pytestmark = [
    pytest.mark.memory,
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:memory.// keeps messages"),
]

ENV = {"COLUMNS": "200", "MQKIT_URL": ""}


@pytest.fixture
def url() -> Iterator[str]:
    name = "opscli" + uuid.uuid4().hex
    yield f"memory://{name}"
    reset(name)


def run(url: str, *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(app, ["--url", url, *args], env=ENV)
    assert result.exit_code == code, result.output
    return result


def client(url: str) -> mqkit.Client:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mqkit.connect(url)


def test_help_lists_the_playbooks() -> None:
    out = CliRunner().invoke(app, ["--help"], env=ENV).stdout
    for command in ("fanout", "replay", "lag", "bridge"):
        assert command in out


def test_fanout_then_finish(url: str) -> None:
    with client(url) as mq:
        mq.declare("orders", partitions=2, groups=["billing"])
        fill(mq, "orders", 500)
        moved = run(url, "fanout", "orders", "--group", "billing", "--idle", "0.3")
        assert moved.stdout.startswith("moved 500 from orders to orders.fanout (20 lanes)")
        assert "mqkit fanout orders --group billing --finish" in moved.stdout
        assert "500/500" in moved.stderr  # the progress bar, on stderr
        early = run(url, "fanout", "orders", "--group", "billing", "--finish", code=1)
        assert "still has 500 message(s)" in early.stdout
        ops.drain(mq, "orders", lambda m: None, workers=4, group="billing", idle_timeout=0.3)
        done = run(url, "fanout", "orders", "--group", "billing", "--finish")
        assert done.stdout.startswith("finished: orders.fanout is drained; deleted orders.fanout")


def test_replay_with_filters_and_dry_run(url: str) -> None:
    with client(url) as mq:
        mq.declare("pay", groups=["g"])
        p = mq.producer(mqkit.Policy(persistent=False))
        for i in range(6):
            p.send("pay", f"p{i}", key=f"user-{i}", id=f"p{i}", headers={"tenant": f"t{i % 2}"})
        p.send("pay", "late", id="late", ttl=0.05)
        time.sleep(0.1)
        c = mq.consumer("pay", group="g")
        for d in c.iter(timeout=0.3):
            d.reject("bad")
        c.close()
    dry = run(url, "replay", "pay", "--reason", "expired", "--dry-run", "--timeout", "0.3", "-q")
    assert dry.stdout.startswith("would move 1 (1 to pay); left 6 in pay.dlq")
    some = run(
        url, "replay", "pay.dlq", "-H", "tenant=t1", "--key", "user-[15]", "--since", "10m",
        "--timeout", "0.3",
    )  # fmt: skip
    assert some.stdout.startswith("moved 2 (2 to pay); left 5 in pay.dlq")
    bad = run(url, "replay", "pay", "--since", "someday", code=2)
    assert "since" in bad.stderr
    with client(url) as mq:
        assert sorted(read_all(mq, "pay", "g").ids) == ["p1", "p5"]
