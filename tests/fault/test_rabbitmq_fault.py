"""Fault tests against the real RabbitMQ: kill -9 the broker, kill -9 a consumer.

1. A producer process sends with confirms while RabbitMQ is killed with
   SIGKILL and restarted.  Every message whose send returned (confirmed) must
   be in the group's queue afterwards: lost = 0.  Sends that failed while the
   broker was down are allowed (the producer was told); after the restart the
   same producer process must get confirms again (it reconnected by itself).
2. Consumer processes with Redis dedupe are killed with SIGKILL: one in the
   middle of its handler, one after its handler finished but before the ack.
   A third process finishes the work.  Handler effects go to a Redis list
   (outside the killed processes): every message's effect is there exactly
   once -- lost = 0, handled twice = 0.

The child processes are this module run as a script (``python -m
tests.fault.test_rabbitmq_fault producer|consumer ...``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import mqkit
from mqkit.errors import PublishError
from mqkit.policy import Policy
from mqkit.producer import OutgoingMessage

pytestmark = [pytest.mark.fault, pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BATCH = 200


# -- child processes ---------------------------------------------------------------------


def producer_main(url: str, topic: str, out: Path, stop: Path) -> None:
    """Send batches until ``stop`` exists; log confirmed / failed ids (one per line)."""
    mq = mqkit.connect(url, connect_timeout=3.0)
    producer = mq.producer(Policy(confirm=True, persistent=True))
    n = 0
    with (out / "confirmed").open("a") as ok, (out / "failed").open("a") as bad:
        while not stop.exists():
            batch = [OutgoingMessage(b"x" * 512, id=f"m{n + i}") for i in range(BATCH)]
            n += BATCH
            try:
                for r in producer.send_many(topic, batch):
                    ok.write(f"{r.id}\n")
            except PublishError as exc:
                for r in exc.receipts:
                    ok.write(f"{r.id}\n")
                for _, mid, _ in exc.failed:
                    bad.write(f"{mid}\n")
                time.sleep(0.1)
            ok.flush()
            bad.flush()
    mq.close()


def consumer_main(url: str, topic: str, redis_url: str, effects: str, kill: str, at: int) -> None:
    """Handle messages (effect: RPUSH id); SIGKILL ourselves at message ``at`` if asked."""
    import redis

    store = redis.Redis.from_url(redis_url)
    mq = mqkit.connect(url)
    policy = Policy(dedupe=redis_url, processing_timeout=2.0, prefetch=10, backoff=(0.05, 2, 0.2))
    consumer = mq.consumer(topic, group="g", policy=policy)
    count = 0

    def handler(message: Any) -> None:
        nonlocal count
        count += 1
        if kill == "mid-handler" and count == at:
            os.kill(os.getpid(), signal.SIGKILL)  # dies before its effect
        time.sleep(0.002)
        store.rpush(effects, message.id)

    def after_handled(_delivery: Any) -> None:
        if kill == "before-ack" and count == at:
            os.kill(os.getpid(), signal.SIGKILL)  # effect and 'done' written, no ack

    consumer._on_handled = after_handled
    consumer.run(handler, idle_timeout=4.0)
    mq.close()


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fault.test_rabbitmq_fault", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


# -- helpers -----------------------------------------------------------------------------


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def drain_ids(url: str, topic: str, group: str, groups: list[str]) -> list[str]:
    """Every id left in ``group``'s queue; then delete the topic and ``groups``."""
    mq = mqkit.connect(url)
    found: list[str] = []
    try:
        mq.declare(topic, groups=groups)
        consumer = mq.consumer(topic, group=group, policy=Policy(prefetch=200))
        for d in consumer.iter(timeout=5.0):
            found.append(d.message.id)
            d.ack()
        consumer.close()
        mq.adapter.delete_topic(topic)
        mq.adapter.delete_topic(f"{topic}.dlq")
    finally:
        mq.close()
    return found


@pytest.fixture
def redis_url(broker_urls: dict[str, str]) -> str:
    return os.environ.get("MQKIT_REDIS_URL") or broker_urls["redis"]


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_kill9_broker_while_producing_loses_no_confirmed_message(
    broker_urls: dict[str, str], broker_control: Any, tmp_path: Path, queue_type: str
) -> None:
    url = f"{broker_urls['rabbitmq']}?queue_type={queue_type}"
    topic = f"fault-{uuid.uuid4().hex[:8]}"
    mq = mqkit.connect(url, connect_timeout=3.0)
    mq.declare(topic, groups=["stored", "live"])
    # group "live" is consumed during the fault: the consumer must resume by itself
    live = mq.consumer(topic, group="live", policy=Policy(prefetch=200))
    handled: list[str] = []
    at_restart = [0]
    worker = threading.Thread(target=live.run, args=(lambda m: handled.append(m.id),))
    worker.start()
    stop = tmp_path / "stop"
    child = spawn("producer", url, topic, str(tmp_path), str(stop))
    try:
        wait_for(lambda: len(lines(tmp_path / "confirmed")) >= 2000, 60, "2000 confirms")
        broker_control.kill9("rabbitmq")
        before = len(lines(tmp_path / "confirmed"))
        broker_control.restart("rabbitmq")
        at_restart[0] = len(handled)
        wait_for(
            lambda: len(lines(tmp_path / "confirmed")) >= before + 1000,
            60,
            "confirms again after the restart (the producer must reconnect)",
        )
    finally:
        stop.touch()
        output, _ = child.communicate(timeout=60)
    assert child.returncode == 0, output
    confirmed = lines(tmp_path / "confirmed")
    failed = lines(tmp_path / "failed")
    wait_for(lambda: set(confirmed) <= set(handled), 60, "the live consumer to catch up")
    live.close()
    worker.join(30)
    mq.close()
    stored = drain_ids(url, topic, "stored", ["stored", "live"])
    lost = set(confirmed) - set(stored)
    print(
        f"\n[{queue_type}] confirmed {len(confirmed)} (after the restart "
        f"{len(confirmed) - before}), failed while down {len(failed)}; found in the queue "
        f"{len(stored)} ({len(set(stored))} distinct), lost {len(lost)}; live consumer "
        f"handled {len(handled)} ({len(set(handled))} distinct, "
        f"{len(handled) - at_restart[0]} after the restart)"
    )
    assert not lost, f"{len(lost)} confirmed messages lost, e.g. {sorted(lost)[:5]}"
    assert len(confirmed) == len(set(confirmed))
    assert not set(failed) & set(confirmed)
    assert len(handled) > at_restart[0], "the live consumer did not resume after the restart"


def test_consumer_killed_mid_handler_with_redis_dedupe_loses_and_repeats_nothing(
    broker_urls: dict[str, str], redis_url: str
) -> None:
    import redis

    url = broker_urls["rabbitmq"]
    topic = f"fault-{uuid.uuid4().hex[:8]}"
    effects = f"mqkit:test:effects:{topic}"
    n = 300
    with mqkit.connect(url) as mq:
        mq.declare(topic, groups=["g"])
        mq.producer().send_many(topic, [OutgoingMessage(b"work", id=f"w{i}") for i in range(n)])
    store = redis.Redis.from_url(redis_url)
    try:
        runs = []
        for kill, at in (("mid-handler", 60), ("before-ack", 60), ("none", 0)):
            child = spawn("consumer", url, topic, redis_url, effects, kill, str(at))
            output, _ = child.communicate(timeout=120)
            runs.append((kill, child.returncode))
            expected = 0 if kill == "none" else -signal.SIGKILL
            assert child.returncode == expected, f"{kill}: exit {child.returncode}\n{output}"
        handled = [x.decode() for x in store.lrange(effects, 0, -1)]  # type: ignore[union-attr]
    finally:
        store.delete(effects)
        store.close()
    counts = Counter(handled)
    lost = {f"w{i}" for i in range(n)} - set(counts)
    twice = {k: v for k, v in counts.items() if v > 1}
    print(
        f"\nconsumer runs {runs}: messages {n}, effects {len(handled)}, distinct "
        f"{len(counts)}, lost {len(lost)}, handled twice {len(twice)}"
    )
    leftover = drain_ids(url, topic, "g", ["g"])
    assert not lost, f"lost: {sorted(lost)[:10]}"
    assert not twice, f"handled more than once: {twice}"
    assert leftover == [], f"{len(leftover)} messages were never acked"


# -- entry point of the child processes --------------------------------------------------


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="role", required=True)
    p = sub.add_parser("producer")
    p.add_argument("url")
    p.add_argument("topic")
    p.add_argument("out", type=Path)
    p.add_argument("stop", type=Path)
    c = sub.add_parser("consumer")
    for name in ("url", "topic", "redis_url", "effects", "kill"):
        c.add_argument(name)
    c.add_argument("at", type=int)
    args = ap.parse_args(argv)
    if args.role == "producer":
        producer_main(args.url, args.topic, args.out, args.stop)
    else:
        consumer_main(args.url, args.topic, args.redis_url, args.effects, args.kill, args.at)


if __name__ == "__main__":
    main(sys.argv[1:])
