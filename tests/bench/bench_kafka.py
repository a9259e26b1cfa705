"""Benchmark: raw kafka-python vs mqkit on the same Kafka, same settings (a script, not a test).

For each message size (default 1 KiB and 100 B), on one fresh topic per run
(``--partitions``, default 4):

* produce, confirmed: ``acks=all`` with the idempotent producer (kafka-python 3
  defaults, linger 0, the adapter's ``batch_size``), in batches of ``--batch``
  records -- raw: ``send()`` every record of the batch, then wait for every
  future; mqkit: ``send_many(batch)`` (which does the same under the hood, plus
  ids, timestamps and its headers);
* consume with manual ack (commit) from the same topic, ``--prefetch`` records
  in flight -- raw: ``poll(max_records=prefetch)``, touch every value, then
  ``commit_async`` the next offsets per batch (the idiomatic at-least-once
  loop); raw+ack: the same plus a handler call and an ack per message (the least
  a per-message ack costs); mqkit: ``consumer.run(handler)`` which acks each message after the
  handler returned (the adapter commits the low watermark, one commit in flight).

A third column measures the Kafka adapter alone (``adapter.publish`` of records
built beforehand; a subscription's ``fetch``/``ack`` loop), to tell the
adapter's cost from the SDK's per-message work (ids, Delivery objects, policies).

Consumers are timed from their first message to the last (group joins excluded), all
with ``fetch_max_wait_ms`` = 10 (see ``FETCH_WAIT_MS``).
Runs alternate raw and mqkit, ``--runs`` times; the table shows medians and the
mqkit/raw ratio measured within each run (median of those).  ``--out`` writes
the table and the command as Markdown, ``--plot`` a PNG.

    python docker/brokers up kafka
    python tests/bench/bench_kafka.py --runs 5 --out docs/bench/kafka.md
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

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata

import mqkit
from mqkit.message import Message
from mqkit.policy import Policy

BOOTSTRAP = "127.0.0.1:9092"
# Every consumer (raw and mqkit) waits at most this long for a fetch to fill.  With the
# 500 ms default a fetch that asks only for partitions already read to their end blocks
# the next one for the partitions that still have data: draining a backlog then stalls
# for half a second at random, which made single runs 1.5-2x apart.
FETCH_WAIT_MS = 10
# Same settings on both sides: the adapter's producer batch size (kafka-python's 16 KiB
# default halves the confirmed throughput of both; see adapters/kafka/options.py).
BATCH_SIZE: int = importlib.import_module("mqkit.adapters.kafka.options").KafkaOptions().batch_size


class Clock:
    """Wall time and this process's CPU time (every thread: the drivers' IO threads too)."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def result(self, count: int) -> tuple[float, float]:
        """(messages per second, CPU microseconds per message)."""
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        return count / wall, cpu / count * 1e6


# -- raw kafka-python --------------------------------------------------------------------


def raw_produce(
    bootstrap: str, topic: str, payload: bytes, count: int, batch: int, with_id: bool = False
) -> tuple[float, float]:
    """``with_id``: each record carries a fresh id header (32 hex digits), as every mqkit
    message does."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, batch_size=BATCH_SIZE
    )
    try:
        producer.partitions_for(topic)  # metadata outside the timed part, as mqkit has it
        clock = Clock()
        sent = 0
        while sent < count:
            n = min(batch, count - sent)
            if with_id:
                # Ids as mqkit makes them: one urandom call per batch.  Not uuid4() per
                # record: os.urandom releases the GIL, the sender thread then drains
                # the batch after nearly every record (~25 instead of ~250 records per
                # request) and the run measures that, not the header.
                ids = os.urandom(16 * n).hex().encode()
                futures = [
                    producer.send(
                        topic, value=payload, headers=[("x-mqkit-id", ids[i * 32 : i * 32 + 32])]
                    )
                    for i in range(n)
                ]
            else:
                futures = [producer.send(topic, value=payload) for _ in range(n)]
            for f in futures:
                f.get(timeout=60)
            sent += n
        return clock.result(count)
    finally:
        producer.close()


def raw_consume(
    bootstrap: str, topic: str, group: str, count: int, prefetch: int, per_message: bool = False
) -> tuple[float, float]:
    """Raw kafka-python; ``per_message``: plus the least a per-message manual ack needs.

    That is, a handler called for each record and each record acked on its own:
    acks may come in any order (so one set of acked offsets per partition), and a
    commit carries only the contiguous low watermark.  No retries, DLQ, objects or
    threads: the floor under any SDK that acks message by message.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=prefetch,
        fetch_max_wait_ms=FETCH_WAIT_MS,
    )
    consumer.subscribe([topic])
    got = 0
    clock: Clock | None = None
    touched = 0
    done: dict[Any, set[int]] = {}  # per partition: acked offsets above the watermark
    marks: dict[Any, int] = {}  # per partition: the next offset to commit

    def handle(r: Any) -> int:
        return len(r.value)

    try:
        while got < count:
            batches = consumer.poll(timeout_ms=1000, max_records=prefetch)
            if not batches:
                continue
            if clock is None:
                clock = Clock()
            offsets: dict[Any, Any] = {}
            for tp, records in batches.items():
                if per_message:
                    acked = done.setdefault(tp, set())
                    mark = marks.get(tp, records[0].offset)
                    for r in records:
                        touched += handle(r)
                        acked.add(r.offset)  # the ack
                    while mark in acked:
                        acked.discard(mark)
                        mark += 1
                    marks[tp] = mark
                    offsets[tp] = OffsetAndMetadata(mark, "", -1)
                else:
                    for r in records:
                        touched += len(r.value)  # "handle" it
                    offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
                got += len(records)
            consumer.commit_async(offsets)
        assert clock is not None
        result = clock.result(count)
        consumer.commit()
        return result
    finally:
        consumer.close(autocommit=False)


# -- mqkit -------------------------------------------------------------------------------


def mq_produce(
    mq: mqkit.Client, topic: str, payload: bytes, count: int, batch: int
) -> tuple[float, float]:
    producer = mq.producer(Policy(confirm=True, persistent=True))
    producer.send(topic, payload)  # producer + metadata outside the timed part
    clock = Clock()
    sent = 0
    while sent < count:
        n = min(batch, count - sent)
        producer.send_many(topic, [payload] * n)
        sent += n
    return clock.result(count)


def adapter_produce(
    mq: mqkit.Client, topic: str, payload: bytes, count: int, batch: int
) -> tuple[float, float]:
    """The adapter alone: records built beforehand as the SDK builds them (id, time, type).

    One send time per batch, as ``send_many`` stamps it.
    """
    now = time.time()
    records = [
        Message(id=uuid.uuid4().hex, topic="", value=payload, timestamp=now).to_record()
        for _ in range(batch)
    ]
    mq.adapter.publish(topic, records[:1], confirm=True, persistent=True)
    clock = Clock()
    sent = 0
    while sent < count:
        n = min(batch, count - sent)
        outcomes = mq.adapter.publish(topic, records[:n], confirm=True, persistent=True)
        assert not any(isinstance(o, BaseException) for o in outcomes)
        sent += n
    return clock.result(count)


def adapter_consume(
    mq: mqkit.Client, topic: str, group: str, count: int, prefetch: int
) -> tuple[float, float]:
    """The adapter alone: fetch and ack, no Delivery objects and no policies."""
    sub = mq.adapter.subscribe(topic, group, prefetch=prefetch, ordered=False)
    got = 0
    clock: Clock | None = None
    touched = 0
    try:
        while got < count:
            batch = sub.fetch(prefetch, 1.0)
            if batch and clock is None:
                clock = Clock()
            for inbound in batch:
                touched += len(inbound.record.value)
                sub.ack(inbound)
            got += len(batch)
        assert clock is not None
        return clock.result(count)
    finally:
        sub.close()


def mq_consume(
    mq: mqkit.Client, topic: str, group: str, count: int, prefetch: int
) -> tuple[float, float]:
    consumer = mq.consumer(topic, group=group, policy=Policy(prefetch=prefetch))
    clocks: list[Clock] = []
    touched = 0

    def handle(m: Message) -> None:
        nonlocal touched
        if not clocks:
            clocks.append(Clock())
        touched += len(m.value)

    try:
        consumer.run(handle, max_messages=count, idle_timeout=30.0)
        return clocks[0].result(count)
    finally:
        consumer.close()


# -- driver ------------------------------------------------------------------------------


def one_run(
    bootstrap: str, size: int, count: int, batch: int, prefetch: int, partitions: int
) -> dict[str, tuple[float, float]]:
    url = f"kafka://{bootstrap}?fetch_max_wait_ms={FETCH_WAIT_MS}"
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    payload = b"x" * size
    with mqkit.connect(url) as mq:
        # mqkit groups see what is published after they exist: create them first.
        mq.declare(topic, partitions=partitions, groups=["mq-consume", "adapter-consume"])
        res: dict[str, tuple[float, float]] = {}
        res["raw produce"] = raw_produce(bootstrap, topic, payload, count, batch)
        res["raw+id produce"] = raw_produce(bootstrap, topic, payload, count, batch, True)
        res["mqkit produce"] = mq_produce(mq, topic, payload, count, batch)
        res["adapter produce"] = adapter_produce(mq, topic, payload, count, batch)
        total = 4 * count + 2  # the four producers' messages, plus two warm-up sends
        res["raw consume"] = raw_consume(bootstrap, topic, f"raw-{topic}", total, prefetch)
        res["raw+ack consume"] = raw_consume(
            bootstrap, topic, f"rawack-{topic}", total, prefetch, per_message=True
        )
        res["mqkit consume"] = mq_consume(mq, topic, "mq-consume", total, prefetch)
        res["adapter consume"] = adapter_consume(mq, topic, "adapter-consume", total, prefetch)
        mq.adapter.delete_topic(topic)
        mq.adapter.delete_topic(f"{topic}.dlq")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bootstrap", default=BOOTSTRAP)
    p.add_argument("--sizes", default="1024,100", help="message sizes in bytes, comma-separated")
    p.add_argument("--count", type=int, default=20_000, help="messages per producer per run")
    p.add_argument("--batch", type=int, default=1000, help="records per confirmed batch")
    p.add_argument("--prefetch", type=int, default=500, help="records in flight when consuming")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", type=Path, help="write the table (Markdown) here")
    p.add_argument("--plot", type=Path, help="write a PNG bar chart here (needs matplotlib)")
    args = p.parse_args(argv)

    sizes = [int(s) for s in args.sizes.split(",")]
    ops = ["produce", "consume"]
    keys = ["raw", "mqkit", "adapter", "ratio", "adapter ratio", "raw+id", "ratio+id"]
    keys += ["least ratio"]
    keys += ["raw cpu", "mqkit cpu", "adapter cpu"]
    results: dict[tuple[int, str], dict[str, list[float]]] = {}
    for run in range(args.runs):
        for size in sizes:
            r = one_run(
                args.bootstrap, size, args.count, args.batch, args.prefetch, args.partitions
            )
            for op in ops:
                cell = results.setdefault((size, op), {k: [] for k in keys})
                for who in ("raw", "mqkit", "adapter"):
                    rate, cpu = r[f"{who} {op}"]
                    cell[who].append(rate)
                    cell[f"{who} cpu"].append(cpu)
                cell["ratio"].append(r[f"mqkit {op}"][0] / r[f"raw {op}"][0])
                cell["adapter ratio"].append(r[f"adapter {op}"][0] / r[f"raw {op}"][0])
                # The same work as mqkit's at the least: an id header per message sent;
                # a handler call and an ack per message consumed.
                with_id = r[f"raw+id {op}" if op == "produce" else f"raw+ack {op}"][0]
                cell["raw+id"].append(with_id)
                cell["least ratio"].append(with_id / r[f"raw {op}"][0])
                cell["ratio+id"].append(r[f"mqkit {op}"][0] / with_id)
            print(
                f"run {run + 1}/{args.runs} size {size}: "
                + ", ".join(f"{k} {v:,.0f}/s ({c:.1f} us CPU)" for k, (v, c) in r.items()),
                file=sys.stderr,
                flush=True,
            )

    command = "python tests/bench/bench_kafka.py " + " ".join(argv or sys.argv[1:])
    lines = [
        f"`{command.strip()}` -- {args.runs} runs, {args.count} messages per producer, "
        f"batch {args.batch}, prefetch {args.prefetch}, {args.partitions} partitions; "
        "medians of msg/s and of CPU microseconds per message (this process, all threads), "
        "and the medians of the per-run throughput ratios to raw. *mqkit* is the public API "
        "(producer.send_many / consumer.run); *adapter* is the Kafka adapter alone "
        "(adapter.publish of prebuilt records / subscription fetch+ack).",
        "",
        "*raw+id / raw+ack* is raw kafka-python doing the least of mqkit's work. Produce "
        "(raw+id): the same message as mqkit's, with a fresh id header per record, 32 hex "
        "digits from one os.urandom call per batch as mqkit makes them. Consume (raw+ack): "
        "a handler call and an ack per message (acked offsets in a set per partition, "
        "committing the contiguous low watermark per poll), no objects and no threads.",
        "",
        "| size | operation | raw msg/s | raw+id or raw+ack msg/s | its / raw | mqkit msg/s "
        "| mqkit / raw | mqkit / raw+id or raw+ack | adapter msg/s | adapter / raw "
        "| CPU us/msg raw / mqkit / adapter |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    med = statistics.median
    for (size, op), cell in results.items():
        label = "produce (acks=all, confirmed)" if op == "produce" else "consume (manual ack)"
        lines.append(
            f"| {size} B | {label} | {med(cell['raw']):,.0f} | {med(cell['raw+id']):,.0f} "
            f"| {med(cell['least ratio']):.2f}x | {med(cell['mqkit']):,.0f} "
            f"| {med(cell['ratio']):.2f}x "
            f"| {med(cell['ratio+id']):.2f}x | {med(cell['adapter']):,.0f} "
            f"| {med(cell['adapter ratio']):.2f}x | {med(cell['raw cpu']):.1f} / "
            f"{med(cell['mqkit cpu']):.1f} / {med(cell['adapter cpu']):.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n", encoding="utf-8")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = [f"{size} B {op}" for (size, op) in results]
        xs = range(len(labels))
        fig, ax = plt.subplots(figsize=(9, 4))
        for i, (who, name) in enumerate(
            (("raw", "raw kafka-python"), ("mqkit", "mqkit"), ("adapter", "mqkit adapter only"))
        ):
            values = [statistics.median(c[who]) for c in results.values()]
            ax.bar([x + (i - 1) * 0.27 for x in xs], values, width=0.27, label=name)
        ax.set_xticks(list(xs), labels)
        ax.set_ylabel("messages / s")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
