"""kill -9 of the ``mqkit`` CLI in the middle of fanout, replay and bridge, then resume.

The last test does the fanout case on each real broker (Kafka, RabbitMQ, RocketMQ).

The broker is the native SERVER (``mqkit://``, on disk) in its own process,
so its state survives the CLI's death -- as in production, where the CLI is
a separate process from the broker.  After the kill, the same command is run
again to the end, and then: nothing is lost (every id sent is on the
target), the source is empty, duplicates are bounded by the batches that
were confirmed but not yet acked at the kill (at most two: one published,
one being published), each key's order holds, and a consumer with dedupe
handles every id exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import mqkit
from mqkit import ops
from mqkit.errors import ConfigError
from mqkit.policies.deadletter import Reason, dead_letter_record
from tests.fuzz.broker_process import BrokerProcess
from tests.ops.conftest import REAL, Backend, backend_params, backend_url
from tests.ops.helpers import Seen, assert_key_order, fill, wait_for

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
N = 30_000
BATCH = 500


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    with BrokerProcess(data_dir=tmp_path / "broker") as b:
        yield b


def cli(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "mqkit.cli", "--url", url, *args, "-q"]


def kill_when(cmd: list[str], ready: Callable[[], bool], *, timeout: float = 120.0) -> None:
    """Run ``cmd`` and kill -9 it as soon as ``ready()`` -- mid-move, not after it."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"the CLI was not killed mid-way (exit {proc.returncode}): {err.decode()[-2000:]}"
    )


def run_to_end(cmd: list[str]) -> str:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def backlog(url: str, topic: str, group: str) -> int:
    with mqkit.connect(url) as mq:
        try:
            return ops.lag(mq, topic, group).backlog or 0
        except ConfigError:
            return 0  # not created yet


def check(url: str, topic: str, group: str, sent: list[str]) -> int:
    """Consume with dedupe: each id handled once (no loss), in key order; the copies a
    crash re-moved are absorbed by dedupe and bounded.  Returns how many were absorbed."""
    seen = Seen()
    with mqkit.connect(url) as mq:
        # memory:// dedupe suffices here: this one process is the only worker
        policy = mqkit.Policy(ordering="per_key", dedupe="memory://", prefetch=1000)
        c = mq.consumer(topic, group=group, policy=policy)
        stats = c.run(seen, idle_timeout=2.0)
        c.close()
    assert Counter(seen.ids) == Counter(sent)  # every id, exactly once
    assert seen.in_key_order()
    assert stats.duplicates <= 2 * BATCH
    return stats.duplicates


@pytest.mark.server
def test_kill9_mid_fanout_then_resume(broker: BrokerProcess) -> None:
    url = broker.url()
    with mqkit.connect(url) as mq:
        mq.declare("orders", partitions=2, groups=["billing"])
        sent = fill(mq, "orders", N, size=200)
    cmd = cli(url, "fanout", "orders", "--group", "billing", "--batch", str(BATCH), "--idle", "1")
    kill_when(cmd, lambda: backlog(url, "orders.fanout", "billing") >= N // 4)
    left = backlog(url, "orders", "billing")
    assert 0 < left < N
    out = run_to_end(cmd)
    assert out.startswith("moved ")
    assert backlog(url, "orders", "billing") == 0
    dup = check(url, "orders.fanout", "billing", sent)
    print(f"\nfanout kill -9 with {left} left: lost 0, re-moved copies absorbed by dedupe {dup}")


@pytest.mark.server
def test_kill9_mid_replay_then_resume(broker: BrokerProcess) -> None:
    url = broker.url()
    with mqkit.connect(url) as mq:
        mq.declare("pay", groups=["g"])
        records = []
        for i in range(N):
            original = mqkit.Message(
                id=f"d{i}", topic="pay", value=b"v" * 200, key=f"user-{i % 37}",
                headers={"seq": str(i)}, timestamp=time.time(),
            ).to_record()  # fmt: skip
            records.append(
                dead_letter_record(
                    original,
                    topic="pay",
                    group="g",
                    reason=Reason.EXPIRED,
                    error="ttl",
                    attempts=1,
                )
            )
        for start in range(0, N, 1000):
            outcomes = mq.adapter.publish(
                "pay.dlq", records[start : start + 1000], confirm=True, persistent=True
            )
            assert not [o for o in outcomes if isinstance(o, BaseException)]
    sent = [r.id for r in records]
    cmd = cli(url, "replay", "pay.dlq", "--reason", "expired", "--batch", str(BATCH))
    kill_when(cmd, lambda: backlog(url, "pay", "g") >= N // 4)
    assert 0 < backlog(url, "pay.dlq", "default") < N
    out = run_to_end(cmd)
    assert out.startswith("moved ")
    assert backlog(url, "pay.dlq", "default") == 0
    dup = check(url, "pay", "g", sent)
    print(f"\nreplay kill -9: lost 0, re-moved copies absorbed by dedupe {dup}")


@pytest.mark.server
def test_kill9_mid_bridge_then_resume(tmp_path: Path) -> None:
    with (
        BrokerProcess(data_dir=tmp_path / "old") as old,
        BrokerProcess(data_dir=tmp_path / "new") as new,
    ):
        with mqkit.connect(old.url()) as mq:
            mq.declare("events", partitions=3, groups=["app"])
            sent = fill(mq, "events", N, size=200)
        cmd = [
            sys.executable, "-m", "mqkit.cli", "bridge", "events", "--from", old.url(),
            "--to", new.url(), "--group", "app", "--target-group", "app",
            "--batch", str(BATCH), "-q",
        ]  # fmt: skip
        kill_when(cmd, lambda: backlog(new.url(), "events", "app") >= N // 4)
        assert 0 < backlog(old.url(), "events", "app") < N
        out = run_to_end(cmd)
        assert out.startswith("copied ")
        assert backlog(old.url(), "events", "app") == 0
        dup = check(new.url(), "events", "app", sent)
        print(f"\nbridge kill -9: lost 0, re-moved copies absorbed by dedupe {dup}")


@pytest.mark.server
def test_ctrl_c_finishes_the_batch_in_hand_and_exits_cleanly(broker: BrokerProcess) -> None:
    url = broker.url()
    with mqkit.connect(url) as mq:
        mq.declare("jobs", groups=["w"])
        sent = fill(mq, "jobs", N, size=200)
    cmd = cli(url, "fanout", "jobs", "--group", "w", "--batch", str(BATCH))
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while backlog(url, "jobs.fanout", "w") < N // 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "stopping after the batch in hand" in err
    moved = int(out.split()[1])
    assert 0 < moved < N
    assert backlog(url, "jobs.fanout", "w") == moved  # acked exactly what was confirmed
    assert backlog(url, "jobs", "w") == N - moved
    run_to_end(cmd)
    assert check(url, "jobs.fanout", "w", sent) == 0  # a clean stop re-moves nothing


# -- the same kill -9 on the real brokers ------------------------------------------------

REAL_N = 1500
REAL_BATCH = 25  # small batches: the kill lands between confirmed batches, mid-move


# Progress is read from the broker's statistics; ActiveMQ has none over STOMP.
WATCHABLE = backend_params([b for b in REAL if b != "activemq"])


@pytest.mark.parametrize("name", WATCHABLE)
def test_kill9_mid_fanout_on_a_real_broker_then_resume(name: str, tmp_path: Path) -> None:
    b = Backend(name, backend_url(name, tmp_path))
    t = b.topic("crash")
    try:
        with b.connect() as mq:
            mq.declare(t, partitions=2, groups=["billing"])
            sent = fill(mq, t, REAL_N, serial=name == "rocketmq")
        cmd = cli(b.url, "fanout", t, "--group", "billing", "--batch", str(REAL_BATCH))
        kill_when(cmd, lambda: backlog(b.url, f"{t}.fanout", "billing") >= REAL_N // 4)
        # RocketMQ hands the dead mover's messages out again only when their lease
        # (invisible_time, 15 s) runs out: the rerun must wait longer than that.
        out = run_to_end([*cmd, "--idle", "20"] if name == "rocketmq" else cmd)
        resumed = int(out.split()[1])
        assert 0 < resumed < REAL_N, out  # the kill came mid-move; the rerun did the rest
        assert wait_for(lambda: backlog(b.url, t, "billing") == 0)
        seen = Seen()
        with b.connect() as mq:
            policy = mqkit.Policy(ordering="per_key", dedupe="memory://", prefetch=500)
            c = mq.consumer(f"{t}.fanout", group="billing", policy=policy)
            stats = c.run(seen, idle_timeout=3.0)
            c.close()
        assert Counter(seen.ids) == Counter(sent)  # nothing lost, each id handled once
        # Kafka forgets the acks made since the group's last offset commit
        # (commit_interval_ms): those come again, not only the batches in flight.
        assert stats.duplicates <= (REAL_N // 2 if name == "kafka" else 2 * REAL_BATCH)
        assert_key_order(b, seen)
    finally:
        b.cleanup()
