"""Benchmark: raw pika vs mqkit on the same RabbitMQ, same settings (a script, not a test).

1 KiB persistent messages, one durable fanout exchange with one queue (quorum
by default, as mqkit creates it):

* produce with publisher confirms, window 1 (wait for each confirm) and
  window W (default 100) -- raw: pika SelectConnection keeping at most W
  unconfirmed messages (a sliding window); mqkit: ``confirm_window=W`` and one
  ``send_many`` of every message (plus ``send()`` in a loop for window 1);
* consume with manual ack and prefetch 100 -- raw: SelectConnection
  basic_consume acking each message; mqkit: ``consumer.run(handler)``.

Runs alternate raw and mqkit, ``--runs`` times; the table shows medians and
the ratios measured in the same run.  ``--out`` writes the table (and the
command) as Markdown, ``--plot`` a PNG.

    python docker/brokers up rabbitmq
    python tests/bench/bench_rabbitmq.py --runs 5 --out docs/bench/rabbitmq.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika

if __package__ in (None, ""):  # run by path: make `tests` importable like `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import mqkit
from tests.bench.common import mq_consume, mq_produce, plot_pairs

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"

NOTES = """\
## What is compared

* raw pika: one `SelectConnection`, publishing from its own callbacks with at most
  W unconfirmed messages (a sliding window; W = 1 waits for each confirm), and
  consuming with `basic_consume`, acking every message in the callback: the
  fastest way to drive pika from Python, with no thread hand-offs.
* mqkit: the same broker settings (durable fanout exchange, one quorum queue,
  delivery_mode 2, confirms, manual ack, prefetch 100) through the public API:
  `producer.send_many` with `confirm_window=W`, and `consumer.run(handler)` -- SDK
  work included (ids, headers, receipts, Delivery objects, the policy loop).

mqkit runs pika on one I/O thread; callers hand it work.  It keeps up with
raw pika despite the SDK work (and passes it with a window) because that thread
writes the frames of a whole burst -- a window of publishes, a batch of acks --
with one `send()` instead of one per frame, and acks consecutive deliveries with
one `basic.ack(multiple)`, which also saves broker CPU.  A single `send()` per
message pays two thread hand-offs per round trip, which a loaded machine makes
slow (the `send()` row); batch with `send_many` where throughput matters.

The machine is shared (2 CPUs, the broker included, other work running): the
absolute rates move a lot between runs, so compare the per-run ratios.
"""


# -- raw pika ----------------------------------------------------------------------------


def _run_select(url: str, on_channel: Callable[[Any, Any], None]) -> None:
    """Open a SelectConnection + channel, hand both to ``on_channel``, run until closed."""

    def on_open(conn: Any) -> None:
        conn.channel(on_open_callback=lambda ch: on_channel(conn, ch))

    def on_open_error(conn: Any, exc: BaseException) -> None:
        raise SystemExit(f"cannot connect to {url}: {exc}")

    conn = pika.SelectConnection(
        pika.URLParameters(url),
        on_open_callback=on_open,
        on_open_error_callback=on_open_error,
        on_close_callback=lambda conn, _reason: conn.ioloop.stop(),
    )
    conn.ioloop.start()


def raw_setup(url: str, exchange: str, queue: str, queue_type: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare(exchange, "fanout", durable=True)
    ch.queue_declare(queue, durable=True, arguments={"x-queue-type": queue_type})
    ch.queue_bind(queue, exchange, routing_key="")
    conn.close()


def raw_teardown(url: str, exchange: str, queue: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_delete(queue)
    ch.exchange_delete(exchange)
    conn.close()


def raw_produce(url: str, exchange: str, n: int, window: int, body: bytes) -> float:
    """Seconds to publish ``n`` persistent messages with at most ``window`` unconfirmed."""
    props = pika.BasicProperties(delivery_mode=2)
    st: dict[str, Any] = {"sent": 0, "done": 0, "t0": 0.0, "t1": 0.0}
    outstanding: deque[int] = deque()

    def on_channel(conn: Any, ch: Any) -> None:
        def pump() -> None:
            while st["sent"] < n and len(outstanding) < window:
                ch.basic_publish(exchange, "", body, props)
                st["sent"] += 1
                outstanding.append(st["sent"])

        def on_confirm(frame: Any) -> None:
            m = frame.method
            if m.NAME != "Basic.Ack":
                raise SystemExit(f"broker nacked message {m.delivery_tag}")
            if m.multiple:
                while outstanding and outstanding[0] <= m.delivery_tag:
                    outstanding.popleft()
                    st["done"] += 1
            else:
                outstanding.remove(m.delivery_tag)
                st["done"] += 1
            if st["done"] == n:
                st["t1"] = time.perf_counter()
                conn.close()
            else:
                pump()

        def start(_frame: Any) -> None:
            st["t0"] = time.perf_counter()
            pump()

        ch.confirm_delivery(ack_nack_callback=on_confirm, callback=start)

    _run_select(url, on_channel)
    return float(st["t1"] - st["t0"])


def raw_consume(url: str, queue: str, n: int, prefetch: int) -> float:
    """Seconds to consume and ack (one by one) ``n`` messages."""
    st: dict[str, Any] = {"got": 0, "t0": 0.0, "t1": 0.0}

    def on_channel(conn: Any, ch: Any) -> None:
        def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
            ch.basic_ack(method.delivery_tag)
            st["got"] += 1
            if st["got"] == n:
                st["t1"] = time.perf_counter()
                conn.close()

        def consume(_frame: Any) -> None:
            st["t0"] = time.perf_counter()
            ch.basic_consume(queue, on_message)

        ch.basic_qos(prefetch_count=prefetch, callback=consume)

    _run_select(url, on_channel)
    return float(st["t1"] - st["t0"])


# -- mqkit -------------------------------------------------------------------------------


# -- the run -----------------------------------------------------------------------------


def one_run(args: argparse.Namespace, body: bytes) -> dict[str, float]:
    """msg/s of every variant, measured back to back."""
    rates: dict[str, float] = {}
    sep = "&" if "?" in args.url else "?"
    tag = uuid.uuid4().hex[:8]
    qt = args.queue_type

    # window 1
    ex, q = f"bench-raw-{tag}-w1", f"bench-raw-{tag}-w1:q"
    raw_setup(args.url, ex, q, qt)
    rates["produce w1 raw"] = args.n1 / raw_produce(args.url, ex, args.n1, 1, body)
    raw_teardown(args.url, ex, q)
    with mqkit.connect(f"{args.url}{sep}confirm_window=1&queue_type={qt}") as mq:
        topic = f"bench-mq-{tag}-w1"
        mq.declare(topic, groups=["q"])
        rates["produce w1 mqkit"] = args.n1 / mq_produce(mq, topic, args.n1, body, batch=None)
        rates["produce w1 mqkit send()"] = args.n1 / mq_produce(mq, topic, args.n1, body, batch=1)
        mq.adapter.delete_topic(topic)
        mq.adapter.delete_topic(f"{topic}.dlq")

    # window W, then consume what was produced
    w = args.window
    ex, q = f"bench-raw-{tag}-w{w}", f"bench-raw-{tag}-w{w}:q"
    raw_setup(args.url, ex, q, qt)
    rates[f"produce w{w} raw"] = args.n / raw_produce(args.url, ex, args.n, w, body)
    rates["consume raw"] = args.n / raw_consume(args.url, q, args.n, args.prefetch)
    raw_teardown(args.url, ex, q)
    with mqkit.connect(f"{args.url}{sep}confirm_window={w}&queue_type={qt}") as mq:
        topic = f"bench-mq-{tag}-w{w}"
        mq.declare(topic, groups=["q"])
        rates[f"produce w{w} mqkit"] = args.n / mq_produce(mq, topic, args.n, body, batch=None)
        rates["consume mqkit"] = args.n / mq_consume(mq, topic, "q", args.n, args.prefetch)
        mq.adapter.delete_topic(topic)
        mq.adapter.delete_topic(f"{topic}.dlq")
    return rates


def table(runs: list[dict[str, float]], window: int) -> list[tuple[str, str, str, str, str]]:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def ratio(a: str, b: str) -> float:
        return statistics.median(r[a] / r[b] for r in runs)

    def spread(a: str, b: str) -> str:
        values = [r[a] / r[b] for r in runs]
        return f"{min(values):.2f}-{max(values):.2f}"

    w = f"w{window}"
    rows = [
        ("produce, confirms, window 1", "produce w1 raw", "produce w1 mqkit"),
        (f"produce, confirms, window {window}", f"produce {w} raw", f"produce {w} mqkit"),
        ("consume, manual ack, prefetch 100", "consume raw", "consume mqkit"),
    ]
    out = [
        (label, f"{med(raw):,.0f}", f"{med(mine):,.0f}", f"{ratio(mine, raw):.2f}x",
         spread(mine, raw))
        for label, raw, mine in rows
    ]  # fmt: skip
    send1 = "produce w1 mqkit send()"
    out.append(
        ("produce window 1, mqkit send() per message", "", f"{med(send1):,.0f}",
         f"{ratio(send1, 'produce w1 raw'):.2f}x", spread(send1, "produce w1 raw"))
    )  # fmt: skip
    out.append(
        (f"window {window} / window 1 (speed-up)",
         f"{ratio(f'produce {w} raw', 'produce w1 raw'):.1f}x",
         f"{ratio(f'produce {w} mqkit', 'produce w1 mqkit'):.1f}x", "", "")
    )  # fmt: skip
    return out


def render(rows: list[tuple[str, str, str, str, str]]) -> str:
    head = ("case (msg/s, median)", "raw pika", "mqkit", "mqkit / raw", "per-run ratios")
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=os.environ.get("MQKIT_RABBITMQ_URL", URL))
    ap.add_argument("--n", type=int, default=20000, help="messages per windowed/consume case")
    ap.add_argument("--n1", type=int, default=2000, help="messages per window-1 case")
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--prefetch", type=int, default=100)
    ap.add_argument("--size", type=int, default=1024, help="message body bytes")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    ap.add_argument("--out", type=Path, help="write the table as Markdown here")
    ap.add_argument("--plot", type=Path, help="write a bar chart PNG here (needs matplotlib)")
    args = ap.parse_args(argv)

    body = os.urandom(args.size)
    load_before = os.getloadavg()[0]
    runs: list[dict[str, float]] = []
    for i in range(args.runs):
        rates = one_run(args, body)
        runs.append(rates)
        print(f"run {i + 1}/{args.runs}: " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()))
    rows = table(runs, args.window)
    load = (
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"({os.cpu_count()} CPUs, shared with the broker)"
    )
    text = render(rows)
    print(load)
    print()
    print(text)
    if args.out:
        cmd = "python " + " ".join(["tests/bench/bench_rabbitmq.py", *(argv or sys.argv[1:])])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# RabbitMQ: raw pika vs mqkit\n\n"
            f"{args.runs} runs, medians; {args.size} B persistent messages, {args.queue_type} "
            f"queue, RabbitMQ at {args.url.split('@')[-1]}; window-1 cases send {args.n1} "
            f"messages, the others {args.n}; {load}. Ratios are per run (raw and mqkit back "
            f"to back), then the median.\n\n{text}\n\nCommand:\n\n    {cmd}\n\n{NOTES}",
            encoding="utf-8",
        )
        print(f"\nwrote {args.out}")
    if args.plot:
        labels = [r[0] for r in rows[:3]]
        raw = [float(r[1].replace(",", "")) for r in rows[:3]]
        mine = [float(r[2].replace(",", "")) for r in rows[:3]]
        plot_pairs(args.plot, labels, raw, mine, "raw pika")
    return 0


if __name__ == "__main__":
    sys.exit(main())
