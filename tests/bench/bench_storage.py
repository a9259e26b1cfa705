"""Benchmark of the native broker's storage (not a test): ``python tests/bench/bench_storage.py``.

* Append: 1 KiB records, one record per durable append, from 1/4/16 producer
  threads under each fsync policy, against the *floor*: a plain Python loop
  writing the same bytes to one file with the same number of fsyncs.
* Read: consuming a 10k vs a 1M record backlog with ``read(offset, 512)``
  (what the engine does), with the process RSS before and after.

Figures are medians of ``--runs`` runs.  Reads come from the page cache
(the backlog was just written); nothing here drops caches.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mqkit.broker.body import encode_body
from mqkit.broker.storage import FileLog
from mqkit.broker.storage.frame import seal
from mqkit.message import Record

POLICIES = ("always", "interval", "never")


@dataclass
class AppendResult:
    rate: float  # appends per wall-clock second
    cpu_rate: float  # appends per CPU second of this process (all threads)
    fsyncs: int
    floor_rate: float


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def record(size: int) -> Record:
    return Record(
        None, os.urandom(size), {"x-mqkit-ts": f"{time.time()!r}", "x-mqkit-id": "x" * 26}
    )


def append_once(
    root: Path, policy: str, threads: int, count: int, size: int, interval: float
) -> AppendResult:
    d = Path(tempfile.mkdtemp(dir=root))
    log = FileLog(d / "log", fsync=policy, fsync_interval=interval)  # type: ignore[arg-type]
    rec = record(size)
    per = count // threads
    barrier = threading.Barrier(threads + 1)

    def produce() -> None:
        barrier.wait()
        for _ in range(per):
            log.append([rec], durable=True)

    workers = [threading.Thread(target=produce) for _ in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for w in workers:
        w.join()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    fsyncs = log.fsyncs
    log.close()
    total = per * threads
    frame = seal(0, 0, encode_body(rec))
    floor = floor_once(d / "floor", frame, total, fsyncs)
    shutil.rmtree(d)
    return AppendResult(total / elapsed, total / cpu, fsyncs, floor)


def floor_once(path: Path, frame: bytes, count: int, fsyncs: int) -> float:
    """A plain loop: os.write per record, an fsync every count/fsyncs records."""
    every = max(1, round(count / fsyncs)) if fsyncs else 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    t0 = time.perf_counter()
    for i in range(1, count + 1):
        os.write(fd, frame)
        if every and i % every == 0:
            os.fsync(fd)
    elapsed = time.perf_counter() - t0
    os.close(fd)
    return count / elapsed


def build_backlog(d: Path, count: int, size: int) -> None:
    log = FileLog(d, fsync="never")
    rec = record(size)
    batch = [rec] * 1000
    for _ in range(count // 1000):
        log.append(batch, durable=False)
    log.close()


def read_once(d: Path, count: int, passes: int) -> tuple[float, float, float, float, float]:
    """Consume the backlog ``passes`` times.

    Returns (records/s, records/CPU-s, open seconds, RSS before, RSS after).
    """
    t0 = time.perf_counter()
    log = FileLog(d, fsync="never")
    opened = time.perf_counter() - t0
    before = rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(passes):
        offset = 0
        while offset < count:
            got = log.read(offset, 512)
            offset = got[-1][0] + 1
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    after = rss_mib()
    log.close()
    return count * passes / elapsed, count * passes / cpu, opened, before, after


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--records", type=int, default=20_000, help="appends per append run")
    ap.add_argument("--size", type=int, default=1024, help="value bytes")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--fsync-interval", type=float, default=0.05)
    ap.add_argument("--backlogs", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--skip-append", action="store_true")
    ap.add_argument("--skip-read", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mqkit-bench-", dir=args.dir))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; medians of {args.runs}")
    try:
        if not args.skip_append:
            bench_appends(root, args)
        if not args.skip_read:
            bench_reads(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_appends(root: Path, args: argparse.Namespace) -> None:
    print(f"\nappend: {args.size} B values, 1 record per durable append, {args.records} appends")
    print(
        f"{'fsync':<9}{'threads':>8}{'msg/s':>10}{'msg/cpu-s':>11}{'MiB/s':>7}{'fsyncs':>8}"
        f"{'floor msg/s':>13}{'log/floor':>10}"
    )
    for policy in POLICIES:
        for threads in args.threads:
            res = [
                append_once(root, policy, threads, args.records, args.size, args.fsync_interval)
                for _ in range(args.runs)
            ]
            rate = statistics.median(r.rate for r in res)
            cpu = statistics.median(r.cpu_rate for r in res)
            floor = statistics.median(r.floor_rate for r in res)
            fsyncs = int(statistics.median(r.fsyncs for r in res))
            mib = rate * (args.size + 100) / 2**20
            print(
                f"{policy:<9}{threads:>8}{rate:>10,.0f}{cpu:>11,.0f}{mib:>7.1f}{fsyncs:>8}"
                f"{floor:>13,.0f}{rate / floor:>10.2f}"
            )


def bench_reads(root: Path, args: argparse.Namespace) -> None:
    print(f"\nread: read(offset, 512) over the whole backlog, {args.size} B values")
    print(
        f"{'backlog':>9}{'msg/s':>10}{'msg/cpu-s':>11}{'open s':>8}"
        f"{'RSS before':>12}{'RSS after':>11}"
    )
    for count in args.backlogs:
        d = root / f"backlog-{count}"
        build_backlog(d, count, args.size)
        passes = max(1, 1_000_000 // count // 10)  # time enough to measure small ones
        reads = [read_once(d, count, passes) for _ in range(args.runs)]
        rate, cpu, opened, before, after = (
            statistics.median(r[k] for r in reads) for k in range(5)
        )
        print(
            f"{count:>9,}{rate:>10,.0f}{cpu:>11,.0f}{opened:>8.3f}{before:>10.1f}Mi{after:>9.1f}Mi"
        )
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
