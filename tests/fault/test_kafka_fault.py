"""Fault tests against the real Kafka: kill -9 the broker, kill -9 a consumer.

1. A producer process sends confirmed batches (``acks=all``, idempotent) while
   Kafka is killed with SIGKILL and restarted.  Every message whose send
   returned (confirmed) must be in the topic afterwards: lost = 0.  Sends that
   failed while the broker was down are allowed (the producer was told); after
   the restart the same producer process must get confirms again, and a
   consumer that ran through the fault must have resumed by itself.
2. Consumer processes with Redis dedupe are killed with SIGKILL in the middle
   of a prefetched batch: one inside its handler (before the effect), one after
   its handler finished and wrote ``done`` but before the ack.  Kafka commits
   acks asynchronously, so each kill also leaves acked-but-uncommitted messages
   behind: they come back to the next member and dedupe must absorb them.  A
   last process finishes the work.  Effects go to a Redis list (outside the
   killed processes): every message's effect is there exactly once -- lost = 0,
   handled twice = 0.

The child processes are this module run as a script (``python -m
tests.fault.test_kafka_fault producer|consumer ...``).
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

pytestmark = [
    pytest.mark.fault,
    pytest.mark.kafka,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

REPO = Path(__file__).resolve().parents[2]
BATCH = 100
# Sends that cannot be confirmed fail after 20 s (the default is 30 s).
PRODUCER_QUERY = "delivery_timeout_ms=20000&max_block_ms=5000&request_timeout_ms=8000"


# -- child processes ---------------------------------------------------------------------


def producer_main(url: str, topic: str, out: Path, stop: Path) -> None:
    """Send batches until ``stop`` exists; log confirmed / failed ids (one per line)."""
    mq = mqkit.connect(f"{url}?{PRODUCER_QUERY}", connect_timeout=5.0)
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
                time.sleep(0.2)
            ok.flush()
            bad.flush()
    mq.close()


def consumer_main(url: str, topic: str, redis_url: str, effects: str, kill: str, at: int) -> None:
    """Handle messages (effect: RPUSH id); SIGKILL ourselves at message ``at`` if asked."""
    import redis

    store = redis.Redis.from_url(redis_url)
    mq = mqkit.connect(url)
    policy = Policy(dedupe=redis_url, processing_timeout=2.0, prefetch=50, backoff=(0.05, 2, 0.2))
    consumer = mq.consumer(topic, group="g", policy=policy)
    count = 0

    def handler(message: Any) -> None:
        nonlocal count
        count += 1
        if kill == "mid-handler" and count == at:
            os.kill(os.getpid(), signal.SIGKILL)  # dies before its effect, batch in hand
        time.sleep(0.002)
        store.rpush(effects, message.id)

    def after_handled(_delivery: Any) -> None:
        if kill == "before-ack" and count == at:
            os.kill(os.getpid(), signal.SIGKILL)  # effect and 'done' written, no ack

    consumer._on_handled = after_handled
    stats = consumer.run(handler, idle_timeout=4.0)
    print(f"handled {stats.handled} duplicates {stats.duplicates}", flush=True)
    mq.close()


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fault.test_kafka_fault", *args],
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


def drain_ids(url: str, topic: str, group: str) -> list[str]:
    """Every id the group has not acked yet; then delete the topic."""
    mq = mqkit.connect(url)
    found: list[str] = []
    try:
        consumer = mq.consumer(topic, group=group, policy=Policy(prefetch=500))
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


def test_kill9_broker_while_producing_loses_no_confirmed_message(
    broker_urls: dict[str, str], broker_control: Any, tmp_path: Path
) -> None:
    url = broker_urls["kafka"]
    topic = f"fault-{uuid.uuid4().hex[:8]}"
    mq = mqkit.connect(url)
    mq.declare(topic, partitions=4, groups=["stored", "live"])
    # group "live" is consumed during the fault: the consumer must resume by itself
    live = mq.consumer(topic, group="live", policy=Policy(prefetch=200))
    handled: list[str] = []
    at_restart = [0]
    worker = threading.Thread(target=live.run, args=(lambda m: handled.append(m.id),))
    worker.start()
    stop = tmp_path / "stop"
    child = spawn("producer", url, topic, str(tmp_path), str(stop))
    try:
        wait_for(lambda: len(lines(tmp_path / "confirmed")) >= 3000, 120, "3000 confirms")
        broker_control.kill9("kafka")
        before = len(lines(tmp_path / "confirmed"))
        broker_control.restart("kafka")
        at_restart[0] = len(handled)
        wait_for(
            lambda: len(lines(tmp_path / "confirmed")) >= before + 2000,
            120,
            "confirms again after the restart (the producer must reconnect)",
        )
    finally:
        stop.touch()
        output, _ = child.communicate(timeout=120)
    assert child.returncode == 0, output
    confirmed = lines(tmp_path / "confirmed")
    failed = lines(tmp_path / "failed")
    wait_for(lambda: set(confirmed) <= set(handled), 120, "the live consumer to catch up")
    live.close()
    worker.join(30)
    mq.close()
    stored = drain_ids(url, topic, "stored")
    lost = set(confirmed) - set(stored)
    print(
        f"\nconfirmed {len(confirmed)} (after the restart {len(confirmed) - before}), "
        f"failed while down {len(failed)}; found in the topic {len(stored)} "
        f"({len(set(stored))} distinct), lost {len(lost)}; live consumer handled "
        f"{len(handled)} ({len(set(handled))} distinct, {len(handled) - at_restart[0]} after "
        "the restart)"
    )
    assert not lost, f"{len(lost)} confirmed messages lost, e.g. {sorted(lost)[:5]}"
    assert len(confirmed) == len(set(confirmed))
    assert not set(failed) & set(confirmed)
    assert len(handled) > at_restart[0], "the live consumer did not resume after the restart"


def test_consumer_killed_mid_batch_with_redis_dedupe_loses_and_repeats_nothing(
    broker_urls: dict[str, str], redis_url: str
) -> None:
    import redis

    url = broker_urls["kafka"]
    topic = f"fault-{uuid.uuid4().hex[:8]}"
    effects = f"mqkit:test:effects:{topic}"
    n = 400
    with mqkit.connect(url) as mq:
        mq.declare(topic, partitions=4, groups=["g"])
        mq.producer().send_many(topic, [OutgoingMessage(b"work", id=f"w{i}") for i in range(n)])
    store = redis.Redis.from_url(redis_url)
    try:
        runs = []
        for kill, at in (("mid-handler", 80), ("before-ack", 80), ("none", 0)):
            child = spawn("consumer", url, topic, redis_url, effects, kill, str(at))
            output, _ = child.communicate(timeout=180)
            runs.append((kill, child.returncode, output.strip().splitlines()[-1:]))
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
    leftover = drain_ids(url, topic, "g")
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
