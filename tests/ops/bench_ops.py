"""Benchmark of the backlog playbook on the embedded native broker (docs/bench/ops.md).

    python -m tests.ops.bench_ops --messages 1000000 --size 1024 --drain 100000

1. fill ``--messages`` x ``--size`` into a 1-partition topic (confirmed, fsync);
2. ``fanout`` it to 10 lanes: the move rate (confirmed + fsynced batches, acked
   in batches on the source), timed from start to the last batch settled;
3. drain time of ``--drain`` messages with a handler that sleeps 1 ms: ONE
   worker on the original topic vs TEN workers on the fanned-out lanes
   (``ordering="per_key"``, manual ack).

Not a pytest module (no ``test_`` prefix): it takes minutes at full size.
Prints one markdown table row per figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import mqkit
from mqkit import ops

SLEEP = 0.001


def fill(mq: mqkit.Client, topic: str, n: int, size: int) -> float:
    p = mq.producer()
    value = os.urandom(size)
    started = time.monotonic()
    for start in range(0, n, 1000):
        p.send_many(
            topic,
            [
                mqkit.OutgoingMessage(value, key=f"customer-{i % 10_000}", id=f"{topic}-{i}")
                for i in range(start, min(n, start + 1000))
            ],
        )
    return time.monotonic() - started


class Clock:
    """First and last handler call: the drain time without the idle wait at the end."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.count = 0
        self.lock = threading.Lock()

    def handler(self, m: mqkit.Message) -> None:
        time.sleep(SLEEP)
        now = time.monotonic()
        with self.lock:
            if self.first is None:
                self.first = now
            self.last = now
            self.count += 1

    @property
    def seconds(self) -> float:
        return 0.0 if self.first is None else self.last - self.first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--drain", type=int, default=100_000, help="messages for the drain runs")
    ap.add_argument("--dir", type=Path, default=None, help="data dir (default: a temp dir)")
    args = ap.parse_args()
    data = args.dir or Path(tempfile.mkdtemp(prefix="mqkit-bench-ops-"))
    policy = mqkit.Policy(ordering="per_key", prefetch=200)
    try:
        with mqkit.connect(f"native://{data}") as mq:
            mq.declare("backlog", partitions=1, groups=["g"])
            took = fill(mq, "backlog", args.messages, args.size)
            print(f"| fill {args.messages:,} x {args.size} B (confirmed, fsync) | "
                  f"{took:.1f} s | {args.messages / took:,.0f} msg/s |", flush=True)  # fmt: skip
            result = ops.fanout(mq, "backlog", group="g", idle_timeout=2.0)
            m = result.move
            print(f"| fanout {m.moved:,} -> {result.plan.lanes} lanes | {m.seconds:.1f} s | "
                  f"{m.rate:,.0f} msg/s |", flush=True)  # fmt: skip
            mq.adapter.delete_topic("backlog.fanout")
            mq.adapter.delete_topic("backlog")

            mq.declare("one", partitions=1, groups=["g"])
            fill(mq, "one", args.drain, args.size)
            clock = Clock()
            c = mq.consumer("one", group="g", policy=policy)
            c.run(clock.handler, idle_timeout=2.0)
            c.close()
            one = clock.seconds
            print(f"| drain {clock.count:,}, 1 worker, 1 ms handler | {one:.1f} s | "
                  f"{clock.count / one:,.0f} msg/s |", flush=True)  # fmt: skip

            mq.declare("ten", partitions=1, groups=["g"])
            fill(mq, "ten", args.drain, args.size)
            ops.fanout(mq, "ten", group="g", idle_timeout=1.0)
            clock = Clock()
            ops.drain(mq, "ten", clock.handler, workers=10, group="g", policy=policy)
            ten = clock.seconds
            print(f"| drain {clock.count:,}, 10 workers on 10 lanes, 1 ms handler | {ten:.1f} s | "
                  f"{clock.count / ten:,.0f} msg/s ({one / ten:.1f}x) |", flush=True)  # fmt: skip
    finally:
        if args.dir is None:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
