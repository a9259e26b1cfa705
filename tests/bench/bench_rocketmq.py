"""Benchmark: raw rocketmq-python-client vs mqkit on the same RocketMQ (a script, not a test).

1 KiB messages on a MIXED topic with 4 queues (as mqkit declares it; the broker
flushes with SYNC_FLUSH), the same proxy, the same client library underneath:

* produce one message at a time, each waiting for its SendReceipt -- raw:
  ``Producer.send(msg)`` in a loop; mqkit: ``producer.send()`` in a loop;
* produce pipelined batches of B (default 100) -- raw: ``send_async`` for the B
  messages, then every future's receipt; mqkit: ``send_many`` of B messages;
* consume with acks -- raw: ``SimpleConsumer.receive(32, 15 s)`` and ``ack()`` of
  each message (the SDK's way; its ``ack_async`` returns no future in 5.1.2);
  mqkit: ``consumer.run(handler)`` with prefetch 100 (acks go out in batches).

The group of each consumer is created (and pinned at the end of the queues)
before the messages are sent; setting up a consumer is outside the timing.
Each run measures raw and mqkit back to back (who goes first alternates);
the table shows medians over ``--runs`` and the ratios measured in the same
run.  ``--out`` writes the table (and the command) as Markdown, ``--plot`` a PNG.

    python docker/brokers up rocketmq
    python tests/bench/bench_rocketmq.py --runs 5 --out docs/bench/rocketmq.md
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run by path: make `tests` importable like `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import mqkit
from tests.bench.common import mq_consume, mq_produce, plot_pairs

# mqkit.adapters is the repository's adapters/ folder (a package-dir mapping): imported by
# name so that mypy, which checks adapters/ as its own package, needs no second path.
# The driver re-exports its classes lazily; typed as Any so mypy does not depend on how.
rocketmq: Any = importlib.import_module("rocketmq")
_admin_module = importlib.import_module("mqkit.adapters.rocketmq.admin")
_names_module = importlib.import_module("mqkit.adapters.rocketmq.names")
RemotingAdmin: Any = _admin_module.RemotingAdmin
group_id: Any = _names_module.group_id

URL = "rocketmq://127.0.0.1:8081"
NOTES = """\
Reading the table:

- Both sides use the same SDK underneath; every mqkit message also carries its id,
  timestamp and content type as three user properties (about 90 bytes).
- Producing: mqkit's ``send()`` of one message uses the SDK's blocking ``send``;
  ``send_many`` of these keyless messages calls ``send_async`` for every record and then
  waits for each receipt, as the raw case does.  Records with a key go one at a time per
  key (RocketMQ keeps a message group's order only when each send waits for the previous
  one's receipt), pipelined across keys: a batch of one key runs at about the
  one-at-a-time rate.
- Consuming: the raw case acks each message with the SDK's blocking ``ack`` (one RPC
  per message: its ``ack_async`` returns no future to wait for in 5.1.2); mqkit sends
  the acks of a subscription in batches, one AckMessage request (up to 64 entries) in
  flight, and keeps a receive in flight while the handler runs -- hence the gap.
- The machine has 2 CPUs shared with the broker's JVMs and other jobs: single runs
  vary by up to a factor of 2, so read the medians and the per-run ratio range.
"""
QUEUES = 4


def _endpoint(url: str) -> str:
    return url.split("://", 1)[1].split("?", 1)[0].split("/", 1)[0]


def _admin(url: str) -> Any:
    host = _endpoint(url).rsplit(":", 1)[0]
    return RemotingAdmin(f"{host}:9876")


# -- raw rocketmq-python-client ------------------------------------------------------------


def raw_setup(admin: Any, topic: str, group: str) -> None:
    admin.create_topic(topic, "MIXED", QUEUES)
    deadline = time.monotonic() + 10
    while not admin.queue_counts(topic):
        if time.monotonic() > deadline:
            raise SystemExit(f"topic {topic} has no route")
        time.sleep(0.05)
    admin.create_group(group, orderly=False, retries=100)
    admin.pin_new_group(topic, group, admin.queue_counts(topic) or {})


def raw_message(topic: str, body: bytes) -> Any:
    msg = rocketmq.Message()
    msg.topic = topic
    msg.body = body
    return msg


def raw_produce(cfg: Any, topic: str, n: int, batch: int, body: bytes) -> float:
    producer = rocketmq.Producer(cfg, (topic,))
    producer.startup()
    producer.send(raw_message(topic, body))  # route and channel warm, like mqkit's declare
    t0 = time.perf_counter()
    if batch <= 1:
        for _ in range(n):
            producer.send(raw_message(topic, body))
    else:
        for start in range(0, n, batch):
            futures = [
                producer.send_async(raw_message(topic, body)) for _ in range(min(batch, n - start))
            ]
            for f in futures:
                f.result()
    elapsed = time.perf_counter() - t0
    producer.shutdown()
    return elapsed


def raw_consume(cfg: Any, topic: str, group: str, n: int) -> float:
    consumer = rocketmq.SimpleConsumer(
        cfg, group, {topic: rocketmq.FilterExpression()}, await_duration=1
    )
    consumer.startup()
    consumer._init_settings_event.wait(10)
    got = 0
    t0 = time.perf_counter()
    while got < n:
        for msg in consumer.receive(32, 15):
            consumer.ack(msg)
            got += 1
    elapsed = time.perf_counter() - t0
    consumer.shutdown()
    return elapsed


# -- mqkit -------------------------------------------------------------------------------


# -- the run -----------------------------------------------------------------------------


def one_run(args: argparse.Namespace, body: bytes, mqkit_second: bool) -> dict[str, float]:
    """msg/s of every variant, measured back to back."""
    rates: dict[str, float] = {}
    tag = uuid.uuid4().hex[:8]
    admin = _admin(args.url)
    cfg = rocketmq.ClientConfiguration(
        _endpoint(args.url), rocketmq.Credentials(), request_timeout=3
    )
    b = args.batch

    def raw() -> None:
        t1, tb = f"bench-raw-{tag}-1", f"bench-raw-{tag}-b"
        g = f"bench-raw-{tag}-g"
        raw_setup(admin, t1, g)
        raw_setup(admin, tb, g)
        rates["produce 1 raw"] = args.n1 / raw_produce(cfg, t1, args.n1, 1, body)
        rates["produce b raw"] = args.n / raw_produce(cfg, tb, args.n, b, body)
        rates["consume raw"] = args.n / raw_consume(cfg, tb, g, args.n)
        for t in (t1, tb):
            admin.delete_topic(t)
        admin.delete_group(g)

    def mine() -> None:
        with mqkit.connect(args.url) as mq:
            m1, mb = f"bench-mq-{tag}-1", f"bench-mq-{tag}-b"
            mq.declare(m1, partitions=QUEUES, groups=["g"])
            mq.declare(mb, partitions=QUEUES, groups=["g"])
            mq.producer().send(m1, body)  # route and channel warm
            mq.producer().send(mb, body)
            rates["produce 1 mqkit"] = args.n1 / mq_produce(mq, m1, args.n1, body, batch=1)
            rates["produce b mqkit"] = args.n / mq_produce(mq, mb, args.n, body, batch=b)
            rates["consume mqkit"] = args.n / mq_consume(mq, mb, "g", args.n + 1, args.prefetch)
            for t in (m1, mb):
                mq.adapter.delete_topic(t)
                mq.adapter.delete_topic(f"{t}.dlq")
            admin.delete_group(group_id(m1, "g"))
            admin.delete_group(group_id(mb, "g"))

    # alternate who goes first, so neither side always meets a warmer broker
    for step in (raw, mine) if mqkit_second else (mine, raw):
        step()
    return rates


def table(runs: list[dict[str, float]], batch: int) -> list[tuple[str, str, str, str, str]]:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def ratio(a: str, b: str) -> float:
        return statistics.median(r[a] / r[b] for r in runs)

    def spread(a: str, b: str) -> str:
        values = [r[a] / r[b] for r in runs]
        return f"{min(values):.2f}-{max(values):.2f}"

    rows = [
        ("produce, one at a time, receipt each", "produce 1 raw", "produce 1 mqkit"),
        (f"produce, batches of {batch} pipelined, receipts", "produce b raw", "produce b mqkit"),
        ("consume with acks (mqkit prefetch 100)", "consume raw", "consume mqkit"),
    ]
    return [
        (label, f"{med(raw):,.0f}", f"{med(mine):,.0f}", f"{ratio(mine, raw):.2f}x",
         spread(mine, raw))
        for label, raw, mine in rows
    ]  # fmt: skip


def render(rows: list[tuple[str, str, str, str, str]]) -> str:
    head = ("case (msg/s, median)", "raw client", "mqkit", "mqkit / raw", "per-run ratios")
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=os.environ.get("MQKIT_ROCKETMQ_URL", URL))
    ap.add_argument("--n", type=int, default=5000, help="messages per batch/consume case")
    ap.add_argument("--n1", type=int, default=1000, help="messages per one-at-a-time case")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--prefetch", type=int, default=100)
    ap.add_argument("--size", type=int, default=1024, help="message body bytes")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, help="write the table as Markdown here")
    ap.add_argument("--plot", type=Path, help="write a bar chart PNG here (needs matplotlib)")
    args = ap.parse_args(argv)

    body = os.urandom(args.size)
    load_before = os.getloadavg()[0]
    runs: list[dict[str, float]] = []
    for i in range(args.runs):
        rates = one_run(args, body, mqkit_second=i % 2 == 0)
        runs.append(rates)
        print(f"run {i + 1}/{args.runs}: " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()))
    rows = table(runs, args.batch)
    load = (
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"({os.cpu_count()} CPUs, shared with the broker)"
    )
    text = render(rows)
    print(load)
    print()
    print(text)
    if args.out:
        cmd = "python " + " ".join(["tests/bench/bench_rocketmq.py", *(argv or sys.argv[1:])])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# RocketMQ: raw rocketmq-python-client vs mqkit\n\n"
            f"{args.runs} runs, medians; {args.size} B messages, MIXED topic with {QUEUES} "
            f"queues, RocketMQ 5.3.3 proxy (local mode, SYNC_FLUSH) at {_endpoint(args.url)}, "
            f"rocketmq-python-client {_client_version()}; one-at-a-time cases send {args.n1} "
            f"messages, the others {args.n}; {load}. Ratios are per run (raw and mqkit back "
            f"to back), then the median.\n\n{text}\n\n{NOTES}\nCommand:\n\n    {cmd}\n",
            encoding="utf-8",
        )
        print(f"\nwrote {args.out}")
    if args.plot:
        labels = [r[0] for r in rows]
        raw = [float(r[1].replace(",", "")) for r in rows]
        mine = [float(r[2].replace(",", "")) for r in rows]
        plot_pairs(args.plot, labels, raw, mine, "raw rocketmq-python-client")
    return 0


def _client_version() -> str:
    from importlib.metadata import version

    return version("rocketmq-python-client")


if __name__ == "__main__":
    sys.exit(main())
