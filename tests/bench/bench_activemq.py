"""Benchmark: raw stomp.py vs mqkit on the same ActiveMQ, same settings (a script, not a test).

1 KiB persistent messages, the same topology for both -- a virtual topic
``VirtualTopic.<t>`` with one group queue ``Consumer.q.VirtualTopic.<t>`` --
and the same message content: raw SENDs carry the three headers every mqkit
message carries (id, timestamp, content type; ``--raw-minimal`` drops them):

* produce, window 1: each message confirmed before the next is sent -- raw:
  a SEND with a receipt, wait for it; mqkit: ``producer.send()`` in a loop;
* produce, window W (default 100) the way mqkit confirms batches by default:
  transactions of W messages, each confirmed by its COMMIT's receipt, at most
  two in flight -- raw: BEGIN / W SENDs / COMMIT; mqkit: one ``send_many`` of
  every message with ``confirm_window=W``;
* produce, receipts, window W (``confirm_mode=receipt``) -- raw: stomp.py
  ``Connection12`` keeping at most W receipts outstanding; mqkit: one
  ``send_many`` with ``confirm_mode=receipt&confirm_window=W``;
* raw only, for the record: W-1 SENDs without a receipt, then one with
  (mqkit does not do this: a refused receipt-less SEND names no message);
* consume with ``client-individual`` acks and prefetch 100 -- raw: a listener
  acking each MESSAGE on stomp.py's receiver thread; mqkit: ``consumer.run``.

Each case runs raw and mqkit back to back (mqkit first in every other run),
``--runs`` times; the table shows medians and the ratios measured in the
same run.  ``--out`` writes the table (and the
command) as Markdown, ``--plot`` a PNG.

    python docker/brokers up activemq
    python tests/bench/bench_activemq.py --runs 5 --n 5000 --n1 500 --out docs/bench/activemq.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import stomp

if __package__ in (None, ""):  # run by path: make `tests` importable like `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import mqkit
from tests.bench.common import mq_consume, mq_produce, plot_pairs

URL = "stomp://127.0.0.1:61613"

NOTES = """\
Reading the table:

- **Window 1 vs window 100.** ActiveMQ syncs its KahaDB journal for a persistent SEND
  only when the client waits for the answer (a `receipt` header), and for every
  COMMIT.  Receipts pipelined 100 deep still cost one sync each, so they gain only
  the round trips (the receipts row, raw stomp.py as much as mqkit).  A transaction
  of 100 costs one sync: that is how mqkit's `send_many` confirms batches by
  default, and the speed-up row for it is the one the 5x target is about.  Each
  transaction is all or nothing, so a failure fails exactly the records whose
  transaction was not committed (the one exception, a SEND refused by ActiveMQ's
  STOMP layer itself, is in the adapter's docstring: reported failed, never confirmed).
- **Not used**: 99 SENDs without a receipt and one with (the raw-only row) is as
  fast -- one sync covers all, the journal being written in order -- but a SEND the
  broker refuses then gets an ERROR frame naming no receipt while the last receipt
  still arrives: a lost message would be reported confirmed.
- mqkit writes the frames of a window or transaction in one socket write (stomp.py:
  one `sendall` per frame); the broker is the limit, and single runs of the two
  differ by more than the client's cost.
- Same message content: the raw SENDs carry the identity every mqkit message carries
  (`x-mqkit-id`, `-ts`, `-ct`: three properties the broker parses and stores);
  `--raw-minimal` drops them.
- Consume: raw stomp.py acks on its receiver thread; mqkit hands frames to the
  consumer's thread (the handler runs there) and writes ACK frames in batches.
"""

# -- raw stomp.py ------------------------------------------------------------------------


class _Counter:
    """Counts receipts (and MESSAGE frames, acking each) on stomp.py's receiver thread."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.receipts = 0
        self.messages = 0
        self.errors: list[str] = []
        self.conn: Any = None

    def on_receipt(self, frame: Any) -> None:
        with self.cond:
            self.receipts += 1
            self.cond.notify_all()

    def on_message(self, frame: Any) -> None:
        self.conn.ack(frame.headers["ack"])
        with self.cond:
            self.messages += 1
            self.cond.notify_all()

    def on_error(self, frame: Any) -> None:
        self.errors.append(str(frame.headers.get("message")))

    def wait(self, attr: str, at_least: int) -> None:
        with self.cond:
            while getattr(self, attr) < at_least:
                if self.errors:
                    raise SystemExit(f"ActiveMQ error: {self.errors[0]}")
                self.cond.wait(10)


def raw_connect(host: str, port: int) -> tuple[Any, _Counter]:
    conn = stomp.Connection12([(host, port)], heartbeats=(0, 0), auto_decode=False)
    counter = _Counter()
    counter.conn = conn
    conn.set_listener("bench", counter)
    conn.connect(wait=True)
    return conn, counter


def raw_create_group(host: str, port: int, queue: str) -> None:
    """What mqkit's declare does: the group queue exists once subscribed."""
    conn, counter = raw_connect(host, port)
    conn.subscribe(queue, id="g", ack="client-individual",
                   headers={"activemq.prefetchSize": "0", "receipt": "s"})  # fmt: skip
    conn.unsubscribe(id="g", headers={"receipt": "u"})
    counter.wait("receipts", 2)
    conn.disconnect()


def identity(same_content: bool) -> dict[str, str]:
    """The headers every mqkit message carries (id, timestamp, content type), or none."""
    if not same_content:
        return {}
    return {"x-mqkit-id": uuid.uuid4().hex, "x-mqkit-ts": repr(time.time()), "x-mqkit-ct": "bytes"}


def raw_produce(
    host: str, port: int, dest: str, n: int, window: int, body: bytes, same_content: bool
) -> float:
    """Seconds to send ``n`` persistent messages with at most ``window`` receipts outstanding."""
    conn, counter = raw_connect(host, port)
    t0 = time.perf_counter()
    for i in range(n):
        counter.wait("receipts", i + 1 - window)
        headers = {"persistent": "true", "receipt": str(i), **identity(same_content)}
        conn.send(dest, body, headers=headers)
    counter.wait("receipts", n)
    elapsed = time.perf_counter() - t0
    conn.disconnect()
    return elapsed


def raw_produce_last_receipt(
    host: str, port: int, dest: str, n: int, size: int, body: bytes, same_content: bool
) -> float:
    """Seconds to send ``n`` messages in groups of ``size``, only the last one with a receipt."""
    conn, counter = raw_connect(host, port)
    t0 = time.perf_counter()
    groups = 0
    for start in range(0, n, size):
        stop = min(start + size, n)
        for i in range(start, stop):
            headers = {"persistent": "true", **identity(same_content)}
            if i == stop - 1:
                headers["receipt"] = str(i)
            conn.send(dest, body, headers=headers)
        groups += 1
        counter.wait("receipts", groups - 2)  # at most two groups outstanding, like mqkit
    counter.wait("receipts", groups)
    elapsed = time.perf_counter() - t0
    conn.disconnect()
    return elapsed


def raw_produce_tx(
    host: str, port: int, dest: str, n: int, size: int, body: bytes, same_content: bool
) -> float:
    """Seconds to send ``n`` persistent messages in transactions of ``size`` (COMMIT receipt)."""
    conn, counter = raw_connect(host, port)
    t0 = time.perf_counter()
    commits = 0
    for start in range(0, n, size):
        tx = f"tx{start}"
        conn.begin(transaction=tx)
        for _ in range(min(size, n - start)):
            headers = {"persistent": "true", "transaction": tx, **identity(same_content)}
            conn.send(dest, body, headers=headers)
        counter.wait("receipts", commits - 1)  # at most two commits outstanding, like mqkit
        conn.commit(transaction=tx, headers={"receipt": tx})
        commits += 1
    counter.wait("receipts", commits)
    elapsed = time.perf_counter() - t0
    conn.disconnect()
    return elapsed


def raw_consume(host: str, port: int, queue: str, n: int, prefetch: int) -> float:
    """Seconds to receive and ack (client-individual, one by one) ``n`` messages."""
    conn, counter = raw_connect(host, port)
    t0 = time.perf_counter()
    conn.subscribe(queue, id="c", ack="client-individual",
                   headers={"activemq.prefetchSize": str(prefetch)})  # fmt: skip
    counter.wait("messages", n)
    elapsed = time.perf_counter() - t0
    conn.disconnect()
    return elapsed


# -- mqkit -------------------------------------------------------------------------------


# -- the run -----------------------------------------------------------------------------


def one_run(args: argparse.Namespace, body: bytes, mqkit_first: bool) -> dict[str, float]:
    """msg/s of every variant, raw and mqkit back to back (which goes first alternates)."""
    rates: dict[str, float] = {}
    host, _, port_s = args.url.split("://", 1)[1].split("?")[0].rpartition(":")
    port = int(port_s)
    sep = "&" if "?" in args.url else "?"
    tag = uuid.uuid4().hex[:8]
    w = args.window
    same = not args.raw_minimal

    def raw_names(name: str) -> tuple[str, str]:
        return f"/topic/VirtualTopic.{name}", f"/queue/Consumer.q.VirtualTopic.{name}"

    def raw_w1() -> None:
        topic, queue = raw_names(f"bench-raw-{tag}-w1")
        raw_create_group(host, port, queue)
        rates["produce w1 raw"] = args.n1 / raw_produce(host, port, topic, args.n1, 1, body, same)
        raw_consume(host, port, queue, args.n1, args.prefetch)  # empty it again

    def mq_w1() -> None:  # send(): one SEND with a receipt, confirmed before the next
        with mqkit.connect(args.url) as mq:
            name = f"bench-mq-{tag}-w1"
            mq.declare(name, groups=["q"])
            rates["produce w1 mqkit"] = args.n1 / mq_produce(mq, name, args.n1, body, batch=1)
            mq_consume(mq, name, "q", args.n1, args.prefetch)

    def raw_last() -> None:  # raw only: not something mqkit does
        topic, queue = raw_names(f"bench-raw-{tag}-last")
        raw_create_group(host, port, queue)
        rates["produce last-receipt raw"] = args.n / raw_produce_last_receipt(
            host, port, topic, args.n, w, body, same
        )
        raw_consume(host, port, queue, args.n, args.prefetch)

    def raw_tx() -> None:
        topic, queue = raw_names(f"bench-raw-{tag}-tx")
        raw_create_group(host, port, queue)
        rates["produce tx raw"] = args.n / raw_produce_tx(host, port, topic, args.n, w, body, same)
        raw_consume(host, port, queue, args.n, args.prefetch)

    def mq_tx() -> None:  # the default confirm_mode (transaction) for send_many
        with mqkit.connect(f"{args.url}{sep}confirm_window={w}") as mq:
            name = f"bench-mq-{tag}-tx"
            mq.declare(name, groups=["q"])
            rates["produce tx mqkit"] = args.n / mq_produce(mq, name, args.n, body, batch=None)
            mq_consume(mq, name, "q", args.n, args.prefetch)

    def raw_w() -> None:  # window W, then consume what was produced
        topic, queue = raw_names(f"bench-raw-{tag}-w{w}")
        raw_create_group(host, port, queue)
        rates[f"produce w{w} raw"] = args.n / raw_produce(host, port, topic, args.n, w, body, same)
        rates["consume raw"] = args.n / raw_consume(host, port, queue, args.n, args.prefetch)

    def mq_w() -> None:
        with mqkit.connect(f"{args.url}{sep}confirm_window={w}&confirm_mode=receipt") as mq:
            name = f"bench-mq-{tag}-w{w}"
            mq.declare(name, groups=["q"])
            rates[f"produce w{w} mqkit"] = args.n / mq_produce(mq, name, args.n, body, batch=None)
            rates["consume mqkit"] = args.n / mq_consume(mq, name, "q", args.n, args.prefetch)

    for raw, mine in ((raw_w1, mq_w1), (raw_tx, mq_tx), (raw_w, mq_w)):
        for case in (mine, raw) if mqkit_first else (raw, mine):
            case()
    raw_last()
    return rates


def table(runs: list[dict[str, float]], window: int) -> list[tuple[str, str, str, str]]:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def ratio(a: str, b: str) -> float:
        return statistics.median(r[a] / r[b] for r in runs)

    w = f"w{window}"
    rows = [
        ("produce, window 1: each confirmed before the next (`send()`)",
         "produce w1 raw", "produce w1 mqkit"),
        (f"produce, window {window}: transactions of {window} (default for `send_many`)",
         "produce tx raw", "produce tx mqkit"),
        (f"produce, window {window}: a receipt per SEND (`confirm_mode=receipt`)",
         f"produce {w} raw", f"produce {w} mqkit"),
        ("consume, client-individual ack, prefetch 100", "consume raw", "consume mqkit"),
    ]  # fmt: skip
    out = [
        (label, f"{med(raw):,.0f}", f"{med(mine):,.0f}", f"{ratio(mine, raw):.2f}x")
        for label, raw, mine in rows
    ]
    out.append(
        (f"produce, {window - 1} SENDs without receipt + 1 with (not used by mqkit)",
         f"{med('produce last-receipt raw'):,.0f}", "", "")
    )  # fmt: skip
    out.append(
        (f"**default: window {window} (transactions) / window 1**",
         f"{ratio('produce tx raw', 'produce w1 raw'):.1f}x",
         f"**{ratio('produce tx mqkit', 'produce w1 mqkit'):.1f}x**", "")
    )  # fmt: skip
    out.append(
        (f"receipts window {window} / window 1",
         f"{ratio(f'produce {w} raw', 'produce w1 raw'):.1f}x",
         f"{ratio(f'produce {w} mqkit', 'produce w1 mqkit'):.1f}x", "")
    )  # fmt: skip
    return out


def render(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("case (msg/s, median)", "raw stomp.py", "mqkit", "mqkit / raw")
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--url", default=os.environ.get("MQKIT_ACTIVEMQ_URL", URL))
    ap.add_argument("--n", type=int, default=10000, help="messages per windowed/consume case")
    ap.add_argument("--n1", type=int, default=1000, help="messages per window-1 case")
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--prefetch", type=int, default=100)
    ap.add_argument("--size", type=int, default=1024, help="message body bytes")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--raw-minimal",
        action="store_true",
        help="raw SENDs without the id/timestamp/content-type headers mqkit messages carry",
    )
    ap.add_argument("--out", type=Path, help="write the table as Markdown here")
    ap.add_argument("--plot", type=Path, help="write a bar chart PNG here (needs matplotlib)")
    args = ap.parse_args(argv)

    body = os.urandom(args.size)
    load_before = os.getloadavg()[0]
    runs: list[dict[str, float]] = []
    for i in range(args.runs):
        rates = one_run(args, body, mqkit_first=i % 2 == 1)
        runs.append(rates)
        print(f"run {i + 1}/{args.runs}: " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()))
    load_after = os.getloadavg()[0]
    rows = table(runs, args.window)
    text = render(rows)
    print()
    print(text)
    if args.out:
        cmd = "python " + " ".join(["tests/bench/bench_activemq.py", *(argv or sys.argv[1:])])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# ActiveMQ: raw stomp.py vs mqkit\n\n"
            f"{args.runs} runs, medians; {args.size} B persistent messages through a virtual "
            f"topic into one group queue, ActiveMQ {args.url.split('@')[-1]}; raw SENDs "
            f"{'without' if args.raw_minimal else 'with'} mqkit's id/timestamp/content-type "
            f"headers; window-1 cases "
            f"send {args.n1} messages, the others {args.n}.  {os.cpu_count()} CPUs, load "
            f"average {load_before:.1f} before and {load_after:.1f} after the runs (other work "
            f"shares the machine: single runs vary by +-30 %; the ratios are medians of "
            f"ratios measured in the same run).\n\n{text}\n\n{NOTES}\nCommand:\n\n"
            f"    python docker/brokers up activemq\n    {cmd}\n",
            encoding="utf-8",
        )
        print(f"\nwrote {args.out}")
    if args.plot:
        labels = [r[0] for r in rows[:4]]
        raw = [float(r[1].replace(",", "")) for r in rows[:4]]
        mine = [float(r[2].replace(",", "")) for r in rows[:4]]
        plot_pairs(args.plot, labels, raw, mine, "raw stomp.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
