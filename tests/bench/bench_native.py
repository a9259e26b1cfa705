"""Benchmark of the native broker through the public API (a script, not a test).

    python -m tests.bench.bench_native --runs 3 --out docs/bench/native.md --plot native.png

Everything goes through ``mqkit.connect`` + producer/consumer, with 1 KiB values:

* **produce** -- confirmed, persistent sends under each fsync policy (always /
  interval / never), embedded (``native://``) and server (``mqkit://``, a
  ``python -m mqkit.broker.server`` subprocess on 127.0.0.1), from 1 and 8
  threads, one ``send`` per call (the latency case) and ``send_many`` batches
  of 100 (the throughput case).  Each run lasts ``--seconds``; the table gives
  msg/s and the p50/p99 latency of one call (a whole batch for send_many).
* **floor**, in the same run: a plain Python loop appending records of the
  broker's on-disk frame size (measured from its segment files) to one file,
  with as many fsyncs as the broker did in that run (counted by wrapping
  ``os.fsync``, in the server through a launcher shim), evenly spread --
  ``floor_once`` of ``bench_storage``.  ``broker/floor`` is the ratio of rates.
* **consume** -- ``consumer.run`` with a no-op handler and manual ack over a
  backlog of ``--backlogs`` messages (default 10k and 1M; filled with
  ``send_many`` under ``fsync=never`` in a child process, then consumed with
  the default ``fsync=always``).  The rate is taken over the first
  ``min(backlog, --window)`` messages (default window 100k: the whole 10k, the
  oldest 100k of the 1M) and over its first ``--mark`` (10k) messages.  Each
  embedded run is a fresh child process (the broker lives in the consumer's
  process, so that process's RSS is the broker's); each server run a fresh
  server over the same data directory, whose RSS is sampled while it serves.

Figures are medians of ``--runs`` runs.  The 1-minute load average is printed
with every row: the machine may be shared.  Reads come from the page cache.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run by path: make `tests` importable like `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import mqkit
from mqkit.message import Message
from mqkit.policy import Policy
from tests.bench.bench_storage import floor_once
from tests.fuzz.broker_process import BrokerProcess

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ("always", "interval", "never")
MODES = ("embedded", "server")
SIZE = 1024
TOPIC = "bench"

# The server runs under this launcher: os.fsync wrapped to count calls into an
# 8-byte shared file the benchmark reads, then the server module as __main__.
_SERVER_SHIM = """
import mmap, os, runpy, struct, sys, threading
fd = os.open(sys.argv.pop(1), os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, 8)
counter = mmap.mmap(fd, 8)
lock = threading.Lock()
real_fsync = os.fsync
calls = [0]
def fsync(fd):
    real_fsync(fd)
    with lock:
        calls[0] += 1
        struct.pack_into("<Q", counter, 0, calls[0])
os.fsync = fsync
runpy.run_module("mqkit.broker.server", run_name="__main__", alter_sys=True)
"""


# -- helpers -------------------------------------------------------------------------------


def load1() -> float:
    return os.getloadavg()[0]


def load_range(runs: Sequence[ProduceRun | ConsumeRun]) -> tuple[float, float]:
    loads = [r.load for r in runs]
    return min(loads), max(loads)


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM of a process in MiB (Linux /proc)."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(line.split()[1]) / 1024
    return out


def proc_cpu(pid: int | str = "self") -> float:
    """CPU seconds (user + system, all threads) a process used so far."""
    if pid == "self":
        return time.process_time()  # finer than /proc's clock ticks
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_now(server_pid: int | None) -> float:
    """CPU seconds of this process, plus the server's when there is one."""
    return proc_cpu() + (proc_cpu(server_pid) if server_pid is not None else 0.0)


def quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(q * len(s)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def log_bytes(data_dir: Path, topic: str) -> int:
    """Bytes of frames in a topic's segments: an open segment's reserved zeros not counted."""
    return sum(
        len(p.read_bytes().rstrip(b"\0")) for p in (data_dir / "topics" / topic).rglob("*.log")
    )


class FsyncCounter:
    """Counts os.fsync calls in this process (the embedded broker's) while installed."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._real: Callable[[Any], None] | None = None

    def _fsync(self, fd: Any) -> None:
        assert self._real is not None
        self._real(fd)
        with self._lock:
            self.count += 1

    def current(self) -> int:
        return self.count

    @contextlib.contextmanager
    def installed(self) -> Iterator[FsyncCounter]:
        self._real = os.fsync
        os.fsync = self._fsync
        try:
            yield self
        finally:
            os.fsync = self._real


class CountingBroker(BrokerProcess):
    """The broker server, launched through the fsync-counting shim."""

    def __init__(self, counter: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.counter = counter

    def command(self) -> list[str]:
        cmd = super().command()
        assert cmd[1:3] == ["-m", "mqkit.broker.server"], cmd
        return [cmd[0], "-c", _SERVER_SHIM, str(self.counter), *cmd[3:]]

    def fsyncs_now(self) -> int:
        with contextlib.suppress(FileNotFoundError):
            data = self.counter.read_bytes()
            if len(data) >= 8:
                return int.from_bytes(data[:8], "little")
        return 0


# -- produce ---------------------------------------------------------------------------------


@dataclass
class ProduceRun:
    rate: float
    cpu_rate: float  # messages per CPU second (this process + the server process)
    p50_ms: float
    p99_ms: float
    fsyncs: int
    per_fsync: float  # messages confirmed per fsync
    floor: float
    ratio: float
    load: float  # 1-minute load average right after the run


@dataclass
class ProduceRow:
    mode: str
    policy: str
    threads: int
    batch: int
    rate: float
    cpu_rate: float
    p50_ms: float
    p99_ms: float
    fsyncs: int
    per_fsync: float
    floor: float
    ratio: float
    load: tuple[float, float]  # lowest and highest of the runs' load averages
    runs: list[ProduceRun] = field(default_factory=list)


def produce_once(
    url: str,
    data_dir: Path,
    topic: str,
    threads: int,
    batch: int,
    seconds: float,
    fsyncs: Callable[[], int],
    floor_dir: Path,
    server_pid: int | None,
) -> ProduceRun:
    value = os.urandom(SIZE)
    with mqkit.connect(url) as mq:
        mq.declare(topic)
        producers = [mq.producer(Policy(confirm=True, persistent=True)) for _ in range(threads)]
        for p in producers:  # warm-up: connection, topic, code paths
            p.send_many(topic, [value] * batch)
        latencies: list[list[float]] = [[] for _ in range(threads)]
        sent = [0] * threads
        barrier = threading.Barrier(threads + 1)
        deadline = [0.0]

        def work(i: int) -> None:
            p, lat = producers[i], latencies[i]
            msgs = [value] * batch
            barrier.wait()
            end = deadline[0]
            clock = time.perf_counter
            while True:
                t = clock()
                if t >= end:
                    break
                if batch == 1:
                    p.send(topic, value)
                else:
                    p.send_many(topic, msgs)
                lat.append(clock() - t)
                sent[i] += batch

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        f0 = fsyncs()
        c0 = cpu_now(server_pid)
        deadline[0] = time.perf_counter() + seconds
        t0 = time.perf_counter()
        barrier.wait()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        cpu = cpu_now(server_pid) - c0
        n_fsync = fsyncs() - f0
    total = sum(sent)
    stored = total + threads * batch
    frame = b"\0" * round(log_bytes(data_dir, topic) / stored)
    floor_dir.mkdir(parents=True, exist_ok=True)
    floor_path = floor_dir / f"{topic}.floor"
    floor = floor_once(floor_path, frame, total, n_fsync)
    floor_path.unlink()
    lat = [x for lst in latencies for x in lst]
    rate = total / elapsed
    return ProduceRun(
        rate=rate,
        cpu_rate=total / cpu,
        p50_ms=quantile(lat, 0.50) * 1000,
        p99_ms=quantile(lat, 0.99) * 1000,
        fsyncs=n_fsync,
        per_fsync=total / n_fsync if n_fsync else float("nan"),
        floor=floor,
        ratio=rate / floor,
        load=load1(),
    )


def bench_produce(root: Path, args: argparse.Namespace, show: Callable[[Any], None]) -> list[Any]:
    rows: list[ProduceRow] = []
    workloads = [(t, b) for b in args.batches for t in args.threads]
    counter = FsyncCounter()
    for mode in args.modes:
        for policy in args.policies:
            base = root / f"produce-{mode}-{policy}"
            data = base / "data"
            server: CountingBroker | None = None
            try:
                base.mkdir(parents=True)
                count_fsyncs: Callable[[], int]
                if mode == "server":
                    server = CountingBroker(
                        base / "fsyncs", data_dir=data, extra=("--fsync", policy)
                    )
                    server.start()
                    url, count_fsyncs = server.url(), server.fsyncs_now
                else:
                    url = f"native://{data}?fsync={policy}"
                    count_fsyncs = counter.current
                for threads, batch in workloads:
                    runs: list[ProduceRun] = []
                    for r in range(args.runs):
                        topic = f"p-{threads}-{batch}-{r}"
                        with counter.installed():
                            runs.append(
                                produce_once(
                                    url,
                                    data,
                                    topic,
                                    threads,
                                    batch,
                                    args.seconds,
                                    count_fsyncs,
                                    base / "floor",
                                    None if server is None else server.pid,
                                )
                            )
                    row = ProduceRow(
                        mode,
                        policy,
                        threads,
                        batch,
                        rate=median([x.rate for x in runs]),
                        cpu_rate=median([x.cpu_rate for x in runs]),
                        p50_ms=median([x.p50_ms for x in runs]),
                        p99_ms=median([x.p99_ms for x in runs]),
                        fsyncs=round(median([x.fsyncs for x in runs])),
                        per_fsync=median([x.per_fsync for x in runs]),
                        floor=median([x.floor for x in runs]),
                        ratio=median([x.ratio for x in runs]),
                        load=load_range(runs),
                        runs=runs,
                    )
                    rows.append(row)
                    show(row)
            finally:
                if server is not None:
                    server.stop()
                    server.log_path.unlink(missing_ok=True)
                shutil.rmtree(base, ignore_errors=True)
    return rows


# -- consume ---------------------------------------------------------------------------------


@dataclass
class ConsumeRun:
    rate: float  # msg/s over the window
    first_rate: float  # msg/s over the first --mark messages
    cpu_rate: float  # msg per CPU second (consumer process + server process)
    open_s: float  # connect() + consumer creation
    rss_before: float  # MiB: broker process before opening (embedded) / after start (server)
    rss_opened: float  # MiB: after opening the data dir and joining
    rss_after: float  # MiB: after the window was consumed
    rss_peak: float  # MiB: highest seen
    load: float  # 1-minute load average right after the run


@dataclass
class ConsumeRow:
    mode: str
    backlog: int
    window: int
    rate: float
    first_rate: float
    cpu_rate: float
    open_s: float
    rss_before: float
    rss_after: float
    growth: float
    peak_growth: float
    load: tuple[float, float]
    runs: list[ConsumeRun] = field(default_factory=list)


def fill_backlog(data_dir: Path, count: int, groups: Sequence[str]) -> None:
    """Child process: the backlog, written with send_many under fsync=never."""
    value = os.urandom(SIZE)
    with mqkit.connect(f"native://{data_dir}?fsync=never") as mq:
        mq.declare(TOPIC, groups=list(groups))
        p = mq.producer(Policy(confirm=False))
        done = 0
        while done < count:
            n = min(1000, count - done)
            p.send_many(TOPIC, [value] * n)
            done += n


def drain(mq: mqkit.Client, group: str, window: int, mark: int) -> tuple[float, float]:
    """``consumer.run`` over ``window`` messages; (seconds, seconds to the ``mark``-th)."""
    c = mq.consumer(TOPIC, group, Policy(ack="manual"))
    seen = [0]
    marked = [0.0]

    def handler(_m: Message) -> None:
        seen[0] += 1
        if seen[0] == mark:
            marked[0] = time.perf_counter()

    t0 = time.perf_counter()
    stats = c.run(handler, max_messages=window, idle_timeout=30.0)
    elapsed = time.perf_counter() - t0
    c.close()
    if stats.handled != window:
        raise RuntimeError(f"consumed {stats.handled} of {window}")
    return elapsed, marked[0] - t0


def consume_embedded_child(data_dir: Path, group: str, window: int, mark: int) -> ConsumeRun:
    """Child process: open the broker in-process, consume, report this process's RSS."""
    gc.collect()
    before = proc_status()["VmRSS"]
    t0 = time.perf_counter()
    with mqkit.connect(f"native://{data_dir}") as mq:
        mq.consumer(TOPIC, group).close()  # join once: what opening costs
        open_s = time.perf_counter() - t0
        opened = proc_status()["VmRSS"]
        c0 = proc_cpu()
        elapsed, to_mark = drain(mq, group, window, mark)
        cpu = proc_cpu() - c0
        st = proc_status()
    return ConsumeRun(
        window / elapsed,
        mark / to_mark,
        window / cpu,
        open_s,
        before,
        opened,
        st["VmRSS"],
        st["VmHWM"],
        load1(),
    )


def consume_server_once(data_dir: Path, group: str, window: int, mark: int) -> ConsumeRun:
    """A fresh server over the data directory; its RSS sampled while this process consumes."""
    with BrokerProcess(data_dir=data_dir, extra=("--fsync", "always")) as server:
        before = server.rss_kib() / 1024
        peak = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                with contextlib.suppress(OSError, ValueError):
                    peak[0] = max(peak[0], server.rss_kib() / 1024)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            t0 = time.perf_counter()
            with mqkit.connect(server.url()) as mq:
                mq.consumer(TOPIC, group).close()
                open_s = time.perf_counter() - t0
                opened = server.rss_kib() / 1024
                c0 = cpu_now(server.pid)
                elapsed, to_mark = drain(mq, group, window, mark)
                cpu = cpu_now(server.pid) - c0
        finally:
            stop.set()
            sampler.join()
        after = server.rss_kib() / 1024
        log = server.log_path
    log.unlink(missing_ok=True)
    return ConsumeRun(
        window / elapsed,
        mark / to_mark,
        window / cpu,
        open_s,
        before,
        opened,
        after,
        max(peak[0], after),
        load1(),
    )


def child(argv: list[str]) -> dict[str, Any]:
    """Run a child step in a fresh interpreter (clean RSS), get its JSON result."""
    cmd = [sys.executable, "-m", "tests.bench.bench_native", "--child", *argv]
    path = os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x)
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {argv[0]} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def bench_consume(root: Path, args: argparse.Namespace, show: Callable[[Any], None]) -> list[Any]:
    """Fill every backlog, then run backlogs and modes interleaved, run after run."""
    groups = [f"g-{mode}-{r}" for mode in args.modes for r in range(args.consume_runs)]
    dirs: dict[int, Path] = {}
    results: dict[tuple[str, int], list[ConsumeRun]] = {}
    try:
        for backlog in args.backlogs:
            dirs[backlog] = root / f"backlog-{backlog}"
            t0 = time.perf_counter()
            child(["fill", str(dirs[backlog]), str(backlog), *groups])
            gib = log_bytes(dirs[backlog], TOPIC) / 2**30
            took = time.perf_counter() - t0
            print(f"  filled {backlog:,} messages ({gib:.2f} GiB) in {took:.1f}s", flush=True)
        for r in range(args.consume_runs):
            for backlog in args.backlogs:
                window = min(backlog, args.window)
                mark = min(window, args.mark)
                for mode in args.modes:
                    group = f"g-{mode}-{r}"
                    if mode == "embedded":
                        argv = ["consume", str(dirs[backlog]), group, str(window), str(mark)]
                        res = ConsumeRun(**child(argv))
                    else:
                        res = consume_server_once(dirs[backlog], group, window, mark)
                    results.setdefault((mode, backlog), []).append(res)
                    print(
                        f"  run {r + 1}: {mode} {backlog:,}: {res.rate:,.0f} msg/s, "
                        f"{res.cpu_rate:,.0f} msg/cpu-s, RSS {res.rss_before:.1f} -> "
                        f"{res.rss_after:.1f} MiB (load {res.load:.1f})",
                        flush=True,
                    )
    finally:
        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)
    rows: list[ConsumeRow] = []
    for backlog in args.backlogs:
        for mode in args.modes:
            runs = results[(mode, backlog)]
            row = ConsumeRow(
                mode,
                backlog,
                min(backlog, args.window),
                rate=median([x.rate for x in runs]),
                first_rate=median([x.first_rate for x in runs]),
                cpu_rate=median([x.cpu_rate for x in runs]),
                open_s=median([x.open_s for x in runs]),
                rss_before=median([x.rss_before for x in runs]),
                rss_after=median([x.rss_after for x in runs]),
                growth=median([x.rss_after - x.rss_before for x in runs]),
                peak_growth=median([x.rss_peak - x.rss_before for x in runs]),
                load=load_range(runs),
                runs=runs,
            )
            rows.append(row)
            show(row)
    return rows


# -- output ----------------------------------------------------------------------------------

PRODUCE_COLS = [
    "mode",
    "fsync",
    "thr",
    "batch",
    "msg/s",
    "msg/cpu-s",
    "p50 ms",
    "p99 ms",
    "fsyncs",
    "msg/fsync",
    "floor msg/s",
    "broker/floor",
    "load",
]
CONSUME_COLS = [
    "mode",
    "backlog",
    "window",
    "msg/s (window)",
    "msg/s (first {mark})",
    "msg/cpu-s",
    "open s",
    "RSS before MiB",
    "RSS after MiB",
    "growth MiB",
    "peak growth MiB",
    "load",
]


def produce_cells(r: ProduceRow) -> list[str]:
    return [
        r.mode,
        r.policy,
        str(r.threads),
        str(r.batch),
        f"{r.rate:,.0f}",
        f"{r.cpu_rate:,.0f}",
        f"{r.p50_ms:.2f}",
        f"{r.p99_ms:.2f}",
        f"{r.fsyncs:,}",
        "-" if r.fsyncs == 0 else f"{r.per_fsync:,.1f}",
        f"{r.floor:,.0f}",
        f"{r.ratio:.2f}",
        f"{r.load[0]:.1f}-{r.load[1]:.1f}",
    ]


def consume_cells(r: ConsumeRow) -> list[str]:
    return [
        r.mode,
        f"{r.backlog:,}",
        f"{r.window:,}",
        f"{r.rate:,.0f}",
        f"{r.first_rate:,.0f}",
        f"{r.cpu_rate:,.0f}",
        f"{r.open_s:.2f}",
        f"{r.rss_before:.1f}",
        f"{r.rss_after:.1f}",
        f"{r.growth:+.1f}",
        f"{r.peak_growth:+.1f}",
        f"{r.load[0]:.1f}-{r.load[1]:.1f}",
    ]


def print_table(title: str, cols: list[str], rows: list[list[str]], plain: bool) -> None:
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            plain = True
        else:
            table = Table(title=title)
            for i, c in enumerate(cols):
                table.add_column(c, justify="left" if i < 2 else "right")
            for r in rows:
                table.add_row(*r)
            Console(width=max(Console().width, 190)).print(table)
            return
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(x.rjust(w) for x, w in zip(r, widths, strict=True)))


def markdown(cols: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot(path: Path, produce: list[ProduceRow], consume_rows: list[ConsumeRow]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(15, 9))
    grid = fig.add_gridspec(2, 3)
    if produce:
        labels = [f"{r.mode[:3]} {r.policy[:3]}\n{r.threads}t x{r.batch}" for r in produce]
        xs = list(range(len(produce)))
        ax = fig.add_subplot(grid[0, :])
        ax.bar([x - 0.2 for x in xs], [r.rate for r in produce], 0.4, label="broker")
        ax.bar([x + 0.2 for x in xs], [r.floor for r in produce], 0.4, label="floor")
        ax.set_yscale("log")
        ax.set_xticks(xs, labels, fontsize=6)
        ax.set_ylabel("msg/s (log)")
        ax.set_title("produce, 1 KiB, confirmed: broker vs plain-file floor (same fsyncs)")
        ax.legend()
        ax = fig.add_subplot(grid[1, :2])
        ax.bar(xs, [r.ratio for r in produce])
        ax.axhline(0.5, color="red", linestyle="--", label="target for fsync=always")
        ax.set_xticks(xs, labels, fontsize=6)
        ax.set_ylabel("broker / floor")
        ax.legend()
    if consume_rows:
        ax = fig.add_subplot(grid[1, 2])
        labels = [f"{r.mode[:3]}\n{r.backlog:,}" for r in consume_rows]
        xs = list(range(len(consume_rows)))
        ax.bar([x - 0.2 for x in xs], [r.rate for r in consume_rows], 0.4, label="msg/s")
        ax.bar([x + 0.2 for x in xs], [r.cpu_rate for r in consume_rows], 0.4, label="msg/cpu-s")
        ax.set_yscale("log")
        ax.set_xticks(xs, labels)
        ax.set_title("consume (run, manual ack)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def verdicts(produce: list[ProduceRow], consume_rows: list[ConsumeRow]) -> list[str]:
    """The issue's targets, checked against this run's medians."""
    out: list[str] = []
    for r in produce:
        if r.policy == "always":
            ok = "met" if r.ratio >= 0.5 else "MISSED"
            out.append(
                f"durable produce {r.mode} {r.threads}t x{r.batch}: broker/floor "
                f"{r.ratio:.2f} (target >= 0.50): {ok}"
            )
    modes = dict.fromkeys(r.mode for r in consume_rows)
    for mode in modes:
        rows = sorted((r for r in consume_rows if r.mode == mode), key=lambda r: r.backlog)
        if len(rows) < 2:
            continue
        small, big = rows[0], rows[-1]
        pairs = list(zip(small.runs, big.runs, strict=False))  # run r of each: close in time
        wall = median([b.rate / a.rate for a, b in pairs])
        first = median([b.first_rate / a.first_rate for a, b in pairs])
        cpu = median([b.cpu_rate / a.cpu_rate for a, b in pairs])
        ok = "met" if wall >= 0.9 else "MISSED"
        out.append(
            f"consume {mode}: rate at {big.backlog:,} / at {small.backlog:,} (median of "
            f"paired runs) = {wall:.2f} over the window, {first:.2f} over the first "
            f"{small.window:,}, {cpu:.2f} per CPU second (target >= 0.90): {ok}"
        )
        ok = "met" if big.peak_growth < 50 else "MISSED"
        out.append(
            f"RSS {mode} {big.backlog:,} backlog: {big.growth:+.1f} MiB after, "
            f"{big.peak_growth:+.1f} MiB at peak (target < 50 MiB): {ok}"
        )
    return out


# -- main ------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(
        description=doc.strip().splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (medians reported)")
    ap.add_argument("--quick", action="store_true", help="smoke run: small, 1 run")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of one produce run")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 100])
    ap.add_argument(
        "--consume-runs", type=int, default=None, help="consume runs (default: --runs + 2)"
    )
    ap.add_argument("--backlogs", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--window", type=int, default=100_000, help="messages consumed per run")
    ap.add_argument("--mark", type=int, default=10_000, help="also time the first N")
    ap.add_argument("--skip-produce", action="store_true")
    ap.add_argument("--skip-consume", action="store_true")
    ap.add_argument("--dir", type=Path, default=None, help="parent of the temp dir (/tmp)")
    ap.add_argument("--plain", action="store_true", help="plain-text tables, not rich")
    ap.add_argument("--out", type=Path, help="write the tables (Markdown) here")
    ap.add_argument("--plot", type=Path, help="write a PNG chart here (matplotlib)")
    ap.add_argument("--json", type=Path, help="write every run's figures here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.runs = 1
        args.consume_runs = 1
        args.seconds = min(args.seconds, 0.5)
        args.backlogs = [2_000, 20_000]
        args.window = min(args.window, 10_000)
        args.mark = min(args.mark, 1_000)
    if args.consume_runs is None:
        args.consume_runs = args.runs + 2  # short runs, noisier: a few more
    return args


def run_child(argv: list[str]) -> None:
    step, rest = argv[0], argv[1:]
    if step == "fill":
        fill_backlog(Path(rest[0]), int(rest[1]), rest[2:])
        print(json.dumps({}))
    elif step == "consume":
        res = consume_embedded_child(Path(rest[0]), rest[1], int(rest[2]), int(rest[3]))
        print(json.dumps(asdict(res)))
    else:
        raise SystemExit(f"unknown child step {step!r}")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.child:
        run_child(args.child)
        return
    command = "python -m tests.bench.bench_native " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    start_load = os.getloadavg()
    header = (
        f"load average {start_load[0]:.2f} {start_load[1]:.2f} {start_load[2]:.2f} on "
        f"{os.cpu_count()} CPUs; medians of {args.runs} run(s); {SIZE} B values"
    )
    print(header, flush=True)
    root = Path(tempfile.mkdtemp(prefix="mqkit-bench-native-", dir=args.dir))
    produce_rows: list[ProduceRow] = []
    consume_rows: list[ConsumeRow] = []

    def show(row: Any) -> None:
        cells = produce_cells(row) if isinstance(row, ProduceRow) else consume_cells(row)
        print("  " + " | ".join(cells), flush=True)

    t0 = time.perf_counter()
    try:
        if not args.skip_produce:
            print(f"produce ({args.seconds:g}s per run):", flush=True)
            produce_rows = bench_produce(root, args, show)
        if not args.skip_consume:
            print("consume:", flush=True)
            consume_rows = bench_consume(root, args, show)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    end_load = os.getloadavg()
    footer = (
        f"took {time.perf_counter() - t0:.0f}s; load average at the end "
        f"{end_load[0]:.2f} {end_load[1]:.2f} {end_load[2]:.2f}"
    )
    consume_cols = [c.format(mark=f"{args.mark:,}") for c in CONSUME_COLS]
    if produce_rows:
        print_table(
            "produce: confirmed persistent sends of 1 KiB",
            PRODUCE_COLS,
            [produce_cells(r) for r in produce_rows],
            args.plain,
        )
    if consume_rows:
        print_table(
            "consume: run(no-op handler), manual ack",
            consume_cols,
            [consume_cells(r) for r in consume_rows],
            args.plain,
        )
    checks = verdicts(produce_rows, consume_rows)
    if checks:
        print("\ntargets:")
        for line in checks:
            print(f"  {line}")
    print(footer)
    if args.out:
        parts = [f"```\n{command}\n```", header, ""]
        if produce_rows:
            parts += [markdown(PRODUCE_COLS, [produce_cells(r) for r in produce_rows]), ""]
        if consume_rows:
            parts += [markdown(consume_cols, [consume_cells(r) for r in consume_rows]), ""]
        if checks:
            parts += ["Targets:", "", *(f"* {line}" for line in checks), ""]
        parts.append(footer)
        args.out.write_text("\n".join(parts) + "\n")
    if args.json:
        doc = {
            "command": command,
            "header": header,
            "footer": footer,
            "produce": [asdict(r) for r in produce_rows],
            "consume": [asdict(r) for r in consume_rows],
        }
        args.json.write_text(json.dumps(doc, indent=1))
    if args.plot:
        plot(args.plot, produce_rows, consume_rows)


if __name__ == "__main__":
    main()
