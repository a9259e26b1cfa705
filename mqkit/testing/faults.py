"""The fault suite: kill -9 a real broker or a consumer process and count what survived.

One suite, run over every backend the way :mod:`mqkit.testing.conformance` is.  A
backend's test module subclasses :class:`FaultSuite`, gives the URL and the hooks
that kill -9 and restart its broker, and tunes the knobs (batch sizes, timeouts)::

    class TestMyBrokerFaults(FaultSuite):
        def make_url(self) -> str: ...
        def kill_broker(self) -> None: ...
        def restart_broker(self) -> None: ...

The two tests:

1. Producer processes send confirmed batches while the broker is killed with
   SIGKILL and restarted (``kill_rounds`` times).  Every message whose send
   returned (confirmed) must be in the group's queue afterwards: lost = 0.  Sends
   that failed while the broker was down are allowed (the producer was told);
   after each restart the same producer processes must get confirms again, and a
   consumer that ran through the fault in the test process must have resumed by
   itself.
2. Consumer processes with Redis dedupe are killed with SIGKILL: one inside its
   handler (before the effect), one after its handler finished and wrote ``done``
   but before the ack.  A last process finishes the work.  Effects go to a Redis
   list (outside the killed processes): every message's effect is there exactly
   once -- lost = 0, handled twice = 0 -- and nothing is left unacked.

Why the care with teardown: a test that fails half-way (a broker that does not
come back) must still close every client it opened.  A driver's non-daemon
threads (gRPC, I/O loops) would otherwise keep the test process alive after the
failure and a CI job would hang instead of reporting it.  Each test closes its
clients in an :class:`contextlib.ExitStack`, the in-process consumer runs in a
daemon thread, child processes are killed by PID when they do not stop, and an
autouse fixture fails the test if a non-daemon thread it started outlives it.

The test session must provide a ``redis_url`` fixture (a real Redis).  The child
processes are this module run as a script: ``python -m mqkit.testing.faults
producer|consumer ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import ClassVar

import pytest

import mqkit
from mqkit.client import Client
from mqkit.consumer import Consumer
from mqkit.delivery import Delivery
from mqkit.errors import PublishError
from mqkit.message import Message
from mqkit.policy import Policy
from mqkit.producer import OutgoingMessage
from mqkit.testing.hooks import BrokerHooks

__all__ = ["FaultSuite", "main"]

#: the SIGKILL points of the consumer test, then a run that finishes the work
CRASH_POINTS = ("mid-handler", "before-ack")


class FaultSuite(BrokerHooks):
    """kill -9 of the broker and of consumers.

    Subclasses implement ``make_url``, ``kill_broker`` and ``restart_broker`` (the
    hooks of :class:`~mqkit.testing.conformance.ConformanceSuite`).
    """

    #: printed in front of the figures (e.g. ``"[quorum] "``)
    label: str = ""
    #: partitions of the test topics (None: the backend has no such notion)
    partitions: ClassVar[int | None] = 4
    #: ``connect_timeout`` of the test process's client (None: the default)
    connect_timeout: ClassVar[float | None] = None
    #: delete the topics once drained (shared brokers keep no litter)
    delete_topics: ClassVar[bool] = True
    #: declare the topic again before draining (the broker may have lost the group's binding)
    declare_before_drain: ClassVar[bool] = False
    #: seconds without a message after which a drain is complete
    drain_idle: ClassVar[float] = 5.0
    drain_prefetch: ClassVar[int] = 500
    seed: ClassVar[int] = 20261125

    # -- knobs of the broker kill ----------------------------------------------------
    #: query appended to the producers' URL (e.g. shorter driver timeouts)
    producer_query: ClassVar[str] = ""
    producer_connect_timeout: ClassVar[float] = 5.0
    #: producer processes sending at once
    producers: ClassVar[int] = 1
    #: each batch's size is drawn from these
    batch_sizes: ClassVar[tuple[int, ...]] = (100,)
    #: messages get a key out of this many (0: no key)
    keys: ClassVar[int] = 0
    #: a producer's pause after a failed batch
    failed_pause: ClassVar[float] = 0.2
    #: kill -9 and restart this many times
    kill_rounds: ClassVar[int] = 1
    #: confirms to wait for before each kill, drawn from this range (a random moment)
    confirms_before_kill: ClassVar[tuple[int, int]] = (3000, 3000)
    #: confirms that prove the producers got confirms again after a restart
    confirms_after_restart: ClassVar[int] = 2000
    confirm_timeout: ClassVar[float] = 120.0
    recover_timeout: ClassVar[float] = 120.0
    catch_up_timeout: ClassVar[float] = 120.0
    producer_exit_timeout: ClassVar[float] = 120.0
    #: consume a group in the test process through the fault (it must resume by itself)
    live_consumer: ClassVar[bool] = True
    #: also assert that no confirmed message is stored twice
    exactly_once: ClassVar[bool] = False

    # -- knobs of the consumer kill ----------------------------------------------------
    work: ClassVar[int] = 400
    #: each killed process dies at its n-th message
    crash_at: ClassVar[int] = 80
    #: query appended to the consumers' URL (e.g. a short lease)
    consumer_query: ClassVar[str] = ""
    consumer_prefetch: ClassVar[int] = 50
    #: long enough for a killed predecessor's messages to come back
    consumer_idle: ClassVar[float] = 4.0
    consumer_exit_timeout: ClassVar[float] = 180.0

    # -- fixtures (the hooks and ``url`` come from BrokerHooks) -------------------

    @pytest.fixture(autouse=True)
    def _no_thread_outlives_the_test(self) -> Iterator[None]:
        """Fail if a non-daemon thread started by the test is still running after it."""
        before = set(threading.enumerate())
        yield
        started = [t for t in threading.enumerate() if t not in before and not t.daemon]
        deadline = time.monotonic() + 15.0
        for t in started:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in started if t.is_alive()]
        assert not alive, (
            f"non-daemon threads still run after the test closed its clients: {alive}; "
            "they would keep the test process from exiting"
        )

    # -- helpers -------------------------------------------------------------------

    def connect(self, url: str) -> Client:
        if self.connect_timeout is None:
            return mqkit.connect(url)
        return mqkit.connect(url, connect_timeout=self.connect_timeout)

    def declare(self, mq: Client, topic: str, groups: list[str]) -> None:
        if self.partitions is None:
            mq.declare(topic, groups=groups)
        else:
            mq.declare(topic, partitions=self.partitions, groups=groups)

    def drain_ids(self, url: str, topic: str, group: str, groups: list[str]) -> list[str]:
        """Every id the group has not acked yet (acking them); then delete the topic."""
        found: list[str] = []
        with contextlib.closing(self.connect(url)) as mq:
            if self.declare_before_drain:
                self.declare(mq, topic, groups)
            with contextlib.closing(
                mq.consumer(topic, group=group, policy=Policy(prefetch=self.drain_prefetch))
            ) as consumer:
                for d in consumer.iter(timeout=self.drain_idle):
                    found.append(d.message.id)
                    d.ack()
            if self.delete_topics:
                mq.adapter.delete_topic(topic)
                mq.adapter.delete_topic(f"{topic}.dlq")
        return found

    @staticmethod
    def spawn(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "mqkit.testing.faults", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    # -- the tests ---------------------------------------------------------------------

    def test_kill9_broker_while_producing_loses_no_confirmed_message(
        self, url: str, tmp_path: Path
    ) -> None:
        rng = random.Random(self.seed)
        topic = f"fault-{uuid.uuid4().hex[:8]}"
        stop = tmp_path / "stop"
        outs = [tmp_path / f"p{k}" for k in range(self.producers)]

        def confirmed_ids() -> list[str]:
            return [i for out in outs for i in _lines(out / "confirmed")]

        def count() -> int:
            return len(confirmed_ids())

        handled: list[str] = []
        live_errors: list[BaseException] = []
        per_round: list[tuple[int, int]] = []  # (confirmed before the kill, after the restart)
        at_restart = 0
        with contextlib.ExitStack() as cleanup:
            mq = self.connect(url)
            cleanup.callback(mq.close)
            self.declare(mq, topic, ["stored", "live"])
            # group "live" is consumed during the fault: the consumer must resume by itself
            live: Consumer | None = None
            if self.live_consumer:
                live = mq.consumer(topic, group="live", policy=Policy(prefetch=200))
                worker = _run_in_thread(live, lambda m: handled.append(m.id), live_errors)
                cleanup.callback(_close_consumer, live, worker)
            children: list[subprocess.Popen[str]] = []
            cleanup.callback(_stop_children, stop, children, self.producer_exit_timeout)
            for k, out in enumerate(outs):
                out.mkdir()
                children.append(self._spawn_producer(url, topic, out, stop, prefix=f"p{k}-"))
            for _ in range(self.kill_rounds):
                lo, hi = self.confirms_before_kill
                target = count() + rng.randint(lo, hi)
                _wait_for(
                    partial(_reached, count, target), self.confirm_timeout, f"{target} confirms"
                )
                self.kill_broker()
                before = count()
                self.restart_broker()
                at_restart = len(handled)
                _wait_for(
                    partial(_reached, count, before + self.confirms_after_restart),
                    self.recover_timeout,
                    "confirms again after the restart (the producer must reconnect)",
                )
                per_round.append((before, count() - before))
            outputs = _stop_children(stop, children, self.producer_exit_timeout)
            for child, output in zip(children, outputs, strict=True):
                assert child.returncode == 0, output
            confirmed = confirmed_ids()
            failed = [i for out in outs for i in _lines(out / "failed")]
            if live is not None:
                _wait_for(
                    lambda: set(confirmed) <= set(handled) or bool(live_errors),
                    self.catch_up_timeout,
                    "the live consumer to catch up",
                )
                assert not live_errors, f"the live consumer failed: {live_errors[0]!r}"
                _close_consumer(live, worker)
            mq.close()
        stored = self.drain_ids(url, topic, "stored", ["stored", "live"])
        counts = Counter(stored)
        lost = set(confirmed) - set(counts)
        twice = [i for i in confirmed if counts[i] > 1]
        last_before = per_round[-1][0]
        rounds = "" if self.kill_rounds == 1 else f"kill -9 x{self.kill_rounds} {per_round}: "
        print(
            f"\n{self.label}{rounds}confirmed {len(confirmed)} (after the restart "
            f"{len(confirmed) - last_before}), failed while down {len(failed)}; found in the "
            f"queue {len(stored)} ({len(counts)} distinct), lost {len(lost)}, confirmed "
            f"found twice {len(twice)}; "
            + (
                f"live consumer handled {len(handled)} ({len(set(handled))} distinct, "
                f"{len(handled) - at_restart} after the restart)"
                if self.live_consumer
                else "no live consumer"
            )
        )
        assert not lost, f"{len(lost)} confirmed messages lost, e.g. {sorted(lost)[:5]}"
        assert len(confirmed) == len(set(confirmed))
        assert not set(failed) & set(confirmed)
        if self.live_consumer:
            assert len(handled) > at_restart, "the live consumer did not resume after the restart"
        if self.exactly_once:
            assert not twice, f"{len(twice)} confirmed messages stored twice, e.g. {twice[:5]}"

    def test_consumer_killed_mid_handler_with_redis_dedupe_loses_and_repeats_nothing(
        self, url: str, redis_url: str
    ) -> None:
        import redis

        topic = f"fault-{uuid.uuid4().hex[:8]}"
        effects = f"mqkit:test:effects:{topic}"
        n = self.work
        with contextlib.closing(self.connect(url)) as mq:
            self.declare(mq, topic, ["g"])
            mq.producer().send_many(topic, [OutgoingMessage(b"work", id=f"w{i}") for i in range(n)])
        store = redis.Redis.from_url(redis_url, decode_responses=True)
        runs: list[tuple[str, int, list[str]]] = []
        try:
            for kill, at in [(point, self.crash_at) for point in CRASH_POINTS] + [("none", 0)]:
                child = self._spawn_consumer(url, topic, redis_url, effects, kill, at)
                [output] = _stop_children(None, [child], self.consumer_exit_timeout)
                runs.append((kill, child.returncode, output.strip().splitlines()[-1:]))
                expected = 0 if kill == "none" else -signal.SIGKILL
                assert child.returncode == expected, f"{kill}: exit {child.returncode}\n{output}"
            handled = [str(x) for x in store.lrange(effects, 0, -1)]
        finally:
            store.delete(effects)
            store.close()
        counts = Counter(handled)
        lost = {f"w{i}" for i in range(n)} - set(counts)
        twice = {k: v for k, v in counts.items() if v > 1}
        print(
            f"\n{self.label}consumer runs {runs}: messages sent {n}, effects handled "
            f"{len(handled)}, distinct {len(counts)}, lost {len(lost)}, handled twice {len(twice)}"
        )
        leftover = self.drain_ids(url, topic, "g", ["g"])
        assert not lost, f"lost: {sorted(lost)[:10]}"
        assert not twice, f"handled more than once: {twice}"
        assert leftover == [], f"{len(leftover)} messages were never acked"

    # -- child processes -------------------------------------------------------------

    def _spawn_producer(
        self, url: str, topic: str, out: Path, stop: Path, prefix: str
    ) -> subprocess.Popen[str]:
        args = ["producer", _with_query(url, self.producer_query), topic, str(out), str(stop)]
        args += ["--prefix", prefix, "--batch", ",".join(map(str, self.batch_sizes))]
        args += ["--keys", str(self.keys), "--pause", str(self.failed_pause)]
        args += ["--connect-timeout", str(self.producer_connect_timeout)]
        return self.spawn(*args, "--seed", str(self.seed))

    def _spawn_consumer(
        self, url: str, topic: str, redis_url: str, effects: str, kill: str, at: int
    ) -> subprocess.Popen[str]:
        args = ["consumer", _with_query(url, self.consumer_query), topic, redis_url, effects]
        args += [kill, str(at), "--prefetch", str(self.consumer_prefetch)]
        return self.spawn(*args, "--idle", str(self.consumer_idle))


# -- helpers of the test process ---------------------------------------------------------


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def _reached(count: Callable[[], int], n: int) -> bool:
    return count() >= n


def _with_query(url: str, query: str) -> str:
    if not query:
        return url
    return f"{url}{'&' if '?' in url else '?'}{query}"


def _run_in_thread(
    consumer: Consumer, handler: Callable[[Message], None], errors: list[BaseException]
) -> threading.Thread:
    """``consumer.run(handler)`` in a daemon thread (it must never keep the process alive)."""

    def run() -> None:
        try:
            consumer.run(handler)
        except BaseException as exc:
            errors.append(exc)  # the test asserts on it; the thread itself must end
            raise

    worker = threading.Thread(target=run, name="fault-live-consumer", daemon=True)
    worker.start()
    return worker


def _close_consumer(consumer: Consumer, worker: threading.Thread) -> None:
    consumer.close()  # run() returns once close() is called; idempotent
    worker.join(30)


def _stop_children(
    stop: Path | None, children: list[subprocess.Popen[str]], timeout: float
) -> list[str]:
    """Ask the children to stop (``stop`` file), wait, kill -9 those that do not; outputs.

    Idempotent: also the teardown of a failed test, where children may hang.
    """
    if stop is not None:
        stop.touch()
    outputs: list[str] = []
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            output, _ = child.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            output, _ = child.communicate()
            output += f"\n(killed: no exit within {timeout:.0f}s)"
        except ValueError:  # already collected by an earlier call
            output = ""
        outputs.append(output or "")
    return outputs


# -- child processes -------------------------------------------------------------------


def producer_main(args: argparse.Namespace) -> None:
    """Send batches until ``stop`` exists; log confirmed / failed ids (one per line)."""
    rng = random.Random(f"{args.seed}-{args.prefix}")
    sizes = [int(s) for s in args.batch.split(",")]
    mq = mqkit.connect(args.url, connect_timeout=args.connect_timeout)
    producer = mq.producer(Policy(confirm=True, persistent=True))
    out: Path = args.out
    n = 0
    with (out / "confirmed").open("a") as ok, (out / "failed").open("a") as bad:
        while not args.stop.exists():
            batch = [
                OutgoingMessage(
                    b"x" * 512,
                    id=f"{args.prefix}m{n + i}",
                    key=f"k{(n + i) % args.keys}" if args.keys else None,
                )
                for i in range(rng.choice(sizes))
            ]
            n += len(batch)
            try:
                for r in producer.send_many(args.topic, batch):
                    ok.write(f"{r.id}\n")
            except PublishError as exc:  # told: logged as failed, never counted as confirmed
                for r in exc.receipts:
                    ok.write(f"{r.id}\n")
                for _, mid, _ in exc.failed:
                    bad.write(f"{mid}\n")
                time.sleep(args.pause)
            ok.flush()
            bad.flush()
    mq.close()


def consumer_main(args: argparse.Namespace) -> None:
    """Handle messages (effect: RPUSH id); SIGKILL ourselves at message ``at`` if asked."""
    import redis

    store = redis.Redis.from_url(args.redis_url)
    kill: str = args.kill
    at: int = args.at
    mq = mqkit.connect(args.url)
    policy = Policy(
        dedupe=args.redis_url,
        processing_timeout=2.0,
        prefetch=args.prefetch,
        backoff=(0.05, 2, 0.2),
    )
    consumer = mq.consumer(args.topic, group="g", policy=policy)
    count = 0

    def handler(message: Message) -> None:
        nonlocal count
        count += 1
        if kill == "mid-handler" and count == at:
            os.kill(os.getpid(), signal.SIGKILL)  # dies before its effect, batch in hand
        time.sleep(0.002)
        store.rpush(args.effects, message.id)

    def after_handled(_delivery: Delivery) -> None:
        if kill == "before-ack" and count == at:
            os.kill(os.getpid(), signal.SIGKILL)  # effect and 'done' written, no ack

    consumer._on_handled = after_handled
    stats = consumer.run(handler, idle_timeout=args.idle)
    print(f"handled {stats.handled} duplicates {stats.duplicates}", flush=True)
    mq.close()


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m mqkit.testing.faults")
    sub = ap.add_subparsers(dest="role", required=True)
    p = sub.add_parser("producer")
    p.add_argument("url")
    p.add_argument("topic")
    p.add_argument("out", type=Path)
    p.add_argument("stop", type=Path)
    p.add_argument("--prefix", default="")
    p.add_argument("--batch", default="100", help="batch sizes to draw from, e.g. 1,5,20")
    p.add_argument("--keys", type=int, default=0)
    p.add_argument("--pause", type=float, default=0.2)
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("consumer")
    for name in ("url", "topic", "redis_url", "effects", "kill"):
        c.add_argument(name)
    c.add_argument("at", type=int)
    c.add_argument("--prefetch", type=int, default=50)
    c.add_argument("--idle", type=float, default=4.0)
    args = ap.parse_args(argv)
    if args.role == "producer":
        producer_main(args)
    else:
        consumer_main(args)


if __name__ == "__main__":
    main(sys.argv[1:])
