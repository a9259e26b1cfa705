"""Backlog incident: a million messages waiting for hours -- fanout, drain, replay.

    python examples/backlog_incident.py                      # 1,000,000 messages (minutes)
    python examples/backlog_incident.py --messages 20000     # the same story, scaled down
    MQKIT_URL=mqkit://127.0.0.1:7600 python examples/backlog_incident.py --messages 100000

The seed's playbook, run for real against one broker:

1. the consumers of ``orders`` were down; a backlog of N messages built up,
   and some of them were sent with a TTL that runs out while they wait;
2. the fixed consumer is started -- ONE worker, whose handler takes 1 ms per
   message: its rate says how many hours the backlog would take;
3. ``mqkit.ops.fanout`` moves the backlog to ``orders.fanout`` with 10x the
   lanes (no real work, confirmed batches), keeping each customer's order;
4. TEN workers drain ``orders.fanout`` (the same handler); the speed-up is
   measured, not claimed;
5. ``finish_fanout`` checks the lanes are empty, keeps their dead letters (the
   expired messages) in ``orders.dlq`` and deletes the lanes;
6. ``replay(reason="expired")`` puts the expired messages back into
   ``orders`` and the normal consumer handles them: nothing was lost to TTL.

Exits 1 if a message was lost or handled twice, a customer's messages were
handled out of order, or ten workers were not faster than one.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable

import mqkit
from mqkit import ops

HANDLER_SECONDS = 0.001


class Ledger:
    """What the workers did: ids handled, per-customer order, time of the last one."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.by_key: dict[str | None, list[int]] = defaultdict(list)
        self.first: float | None = None
        self.last = 0.0
        self.lock = threading.Lock()

    def record(self, m: mqkit.Message) -> None:
        now = time.monotonic()
        with self.lock:
            self.counts[m.id] += 1
            self.by_key[m.key].append(int(m.headers["seq"]))
            self.first = now if self.first is None else self.first
            self.last = now

    def rate(self, handled: int) -> float:
        if self.first is None or handled < 2 or self.last <= self.first:
            return 0.0
        return (handled - 1) / (self.last - self.first)

    def in_order(self) -> bool:
        return all(seqs == sorted(seqs) for seqs in self.by_key.values())


def worker(*ledgers: Ledger) -> Callable[[mqkit.Message], None]:
    """The fixed consumer's handler: 1 ms of real work, then book-keeping."""

    def handle(m: mqkit.Message) -> None:
        time.sleep(HANDLER_SECONDS)  # the real work: a database write, a remote call
        for ledger in ledgers:
            ledger.record(m)

    return handle


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=1024, help="bytes per message")
    ap.add_argument("--expired", type=float, default=0.001, help="share sent with a short TTL")
    ap.add_argument("--baseline", type=int, default=3000, help="messages the 1 worker handles")
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument(
        "--prefix",
        default=f"ex-{uuid.uuid4().hex[:8]}-",
        help="start of every topic name (default: fresh per run, so runs on a shared broker "
        "never meet each other's leftovers)",
    )
    args = ap.parse_args(argv)
    n = args.messages
    topic = f"{args.prefix}orders"
    group = "billing"
    every = max(1, round(1 / args.expired)) if args.expired > 0 else 0
    ledger = Ledger()
    policy = mqkit.Policy(ordering="per_key", dedupe="memory://", prefetch=200)

    with mqkit.connect() as mq:  # MQKIT_URL, else the embedded native broker
        backend = mq.scheme
        persistent = mq.capabilities.supports("persistent")
        print(f"backlog incident on {backend}: {n:,} messages of {args.size} B", flush=True)
        mq.declare(topic, partitions=1, groups=[group])

        # 1. the backlog (some with a TTL that runs out while they wait)
        producer = mq.producer(mqkit.Policy(persistent=persistent))
        value = b"x" * args.size
        expiring = 0

        started = time.monotonic()
        for start in range(0, n, 2000):
            batch = []
            for i in range(start, min(n, start + 2000)):
                ttl = 1.0 if every and i % every == every // 2 else None
                expiring += ttl is not None
                batch.append(
                    mqkit.OutgoingMessage(
                        value,
                        key=f"customer-{i % 1000}",
                        id=f"order-{i}",
                        headers={"seq": str(i)},
                        ttl=ttl,
                    )
                )
            producer.send_many(topic, batch)

        fill_s = time.monotonic() - started
        print(f"1. backlog of {n:,} built in {fill_s:.1f}s ({expiring} with a 1 s TTL)")
        time.sleep(1.1)  # the TTLs run out while nobody consumes

        # 2. one worker: how long would the backlog take?
        sample = min(args.baseline, n // 10)
        one = Ledger()
        c = mq.consumer(topic, group=group, policy=policy)
        c.run(worker(one, ledger), max_messages=sample)
        c.close()
        one_rate = one.rate(sum(one.counts.values()))
        hours = (n / one_rate / 3600) if one_rate else float("inf")
        print(f"2. one worker: {one_rate:,.0f} msg/s -> {hours:.2f} h for the backlog", flush=True)

        # 3. fanout to 10x the lanes
        moved = ops.fanout(mq, topic, group=group, factor=args.workers, idle_timeout=1.0)
        print(
            f"3. fanout: {moved.moved:,} moved to {moved.plan.target} "
            f"({moved.plan.lanes} lanes) at {moved.move.rate:,.0f} msg/s",
            flush=True,
        )

        # 4. ten workers on the lanes
        ten = Ledger()
        stats = ops.drain(
            mq,
            topic,
            worker(ten, ledger),
            workers=args.workers,
            group=group,
            policy=policy,
            idle_timeout=2.0,
        )
        ten_rate = ten.rate(sum(ten.counts.values()))
        speedup = ten_rate / one_rate if one_rate else 0.0
        print(
            f"4. {args.workers} workers: {ten_rate:,.0f} msg/s ({speedup:.1f}x), "
            f"{stats.dead_lettered} expired -> dead letters",
            flush=True,
        )

        # 5. back to normal
        # The workers have returned: say so, for brokers that cannot count what
        # workers hold unacked (RabbitMQ, RocketMQ); finish refuses there otherwise.
        done = ops.finish_fanout(mq, topic, group=group, workers_stopped=True)
        print(f"5. finish: drained={done.drained}, dead letters kept: {done.dead_letters_moved}")
        if not done.drained:
            print(f"   not finished: {done.note}", flush=True)

        # 6. the messages lost to TTL: put them back and handle them
        back = ops.replay(mq, f"{topic}.dlq", reason="expired", idle_timeout=1.0)
        c = mq.consumer(topic, group=group, policy=policy)
        late = c.run(worker(ledger), idle_timeout=1.0)
        c.close()
        print(f"6. replayed {back.moved} expired messages; handled {late.handled}", flush=True)

        for name in (topic, f"{topic}.dlq"):  # leave the data dir as we found it
            try:
                mq.adapter.delete_topic(name)
            except mqkit.Unsupported:
                break

    lost = n - len(ledger.counts)
    twice = sum(1 for v in ledger.counts.values() if v > 1)
    problems = []
    if lost or twice:
        problems.append(f"lost {lost}, handled twice {twice}")
    if not ledger.in_order():
        problems.append("a customer's messages were handled out of order")
    if back.moved != expiring:
        problems.append(f"replayed {back.moved} of {expiring} expired messages")
    if speedup < 2.0 and n >= 1000:
        problems.append(f"{args.workers} workers were only {speedup:.1f}x faster than one")
    status = "OK" if not problems else "FAILED"
    print(
        f"backlog_incident: {status} on {backend} messages={n} fill={n / fill_s:,.0f}/s "
        f"fanout={moved.move.rate:,.0f}/s one_worker={one_rate:,.0f}/s "
        f"{args.workers}_workers={ten_rate:,.0f}/s speedup={speedup:.1f}x "
        f"expired_replayed={back.moved} lost={lost} twice={twice}"
    )
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
