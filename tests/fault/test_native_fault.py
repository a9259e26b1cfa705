"""Fault tests of the native broker with real processes and kill -9.

* the server is killed at a random moment while producers send with confirms,
  five times over; after each restart every confirmed message is in the log
  exactly once;
* a consumer process is killed between handling a message and acking it; with
  Redis dedupe nothing is lost and nothing is handled twice.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis

import mqkit
from mqkit.errors import MQError
from tests.fuzz.broker_process import BrokerProcess

pytestmark = [pytest.mark.fault, pytest.mark.server]

ROOT = Path(__file__).resolve().parents[2]


def _drain_ids(url: str, topic: str, group: str) -> list[str]:
    ids: list[str] = []
    with mqkit.connect(url) as mq:
        c = mq.consumer(topic, group=group, policy=mqkit.Policy(prefetch=1000))
        c.run(lambda m: ids.append(m.id), idle_timeout=2.0)
        c.close()
    return ids


def test_kill9_server_while_producing_loses_no_confirmed_message(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    broker = BrokerProcess(data_dir=tmp_path / "data")
    broker.start()
    topic = "faults"
    try:
        with mqkit.connect(broker.url()) as mq:
            mq.declare(topic, partitions=3, groups=["audit"])
        confirmed: list[str] = []
        lock = threading.Lock()
        report = []
        for round_no in range(5):
            stop = threading.Event()
            errors: list[BaseException] = []

            def produce(
                worker: int,
                round_no: int = round_no,
                stop: threading.Event = stop,
                errors: list[BaseException] = errors,
            ) -> None:
                try:
                    mq = mqkit.connect(broker.url(reconnect_timeout=0.2))
                except MQError as exc:
                    errors.append(exc)
                    return
                p = mq.producer()
                n = 0
                while not stop.is_set():
                    batch = [
                        mqkit.OutgoingMessage(
                            b"x" * 200, key=f"k{n % 7}", id=f"r{round_no}-w{worker}-{n + i}"
                        )
                        for i in range(rng.choice((1, 5, 20)))
                    ]
                    n += len(batch)
                    try:
                        receipts = p.send_many(topic, batch)
                    except MQError:
                        break  # the broker died under us: these were not confirmed
                    with lock:
                        confirmed.extend(r.id for r in receipts)
                with contextlib.suppress(MQError):
                    mq.close()

            threads = [threading.Thread(target=produce, args=(w,)) for w in range(3)]
            before = len(confirmed)
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.5))
            broker.kill()  # SIGKILL, mid-stream
            stop.set()
            for t in threads:
                t.join(timeout=60)
            assert not errors, errors
            report.append(len(confirmed) - before)
            broker.start()
        found = _drain_ids(broker.url(), topic, "audit")
        counts = Counter(found)
        lost = [i for i in confirmed if counts[i] == 0]
        twice = [i for i in confirmed if counts[i] > 1]
        print(
            f"\nkill -9 x5: confirmed={len(confirmed)} (per round {report}) "
            f"found={len(found)} lost={len(lost)} duplicated={len(twice)}"
        )
        assert all(r > 0 for r in report), "a round confirmed nothing: the test proved nothing"
        assert lost == []
        assert twice == []
    finally:
        broker.stop()


@pytest.mark.redis
def test_consumer_killed_between_handling_and_ack_with_redis_dedupe(
    tmp_path: Path, redis_url: str
) -> None:
    broker = BrokerProcess(data_dir=tmp_path / "data")
    broker.start()
    topic = f"pay-{uuid.uuid4().hex[:8]}"
    effects = f"effects:{topic}"
    n = 40
    try:
        with mqkit.connect(broker.url()) as mq:
            mq.declare(topic, partitions=2, groups=["workers"])
            mq.producer().send_many(
                topic, [mqkit.OutgoingMessage(b"pay", id=f"pay-{i}") for i in range(n)]
            )
        cmd = [sys.executable, "-m", "tests.fault.native_consumer_proc", broker.url(), topic]
        cmd += [redis_url, effects]
        first = subprocess.run([*cmd, "7"], cwd=ROOT, capture_output=True, timeout=120, check=False)
        assert first.returncode == -9, first.stderr.decode()[-2000:]
        second = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=180, check=False)
        assert second.returncode == 0, second.stderr.decode()[-2000:]
        store = redis.Redis.from_url(redis_url, decode_responses=True)
        handled = [str(x) for x in store.lrange(effects, 0, -1)]
        counts = Counter(handled)
        lost = [f"pay-{i}" for i in range(n) if counts[f"pay-{i}"] == 0]
        twice = [k for k, v in counts.items() if v > 1]
        print(
            f"\nconsumer kill -9 after handling #7: sent={n} handled={len(handled)} "
            f"lost={len(lost)} twice={len(twice)}"
        )
        assert lost == []
        assert twice == []
        assert counts["pay-0"] == 1
    finally:
        broker.stop()
