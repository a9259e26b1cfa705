"""What pure Python reaches at all in the shapes of ``bench_native``'s durable produce rows.

    python -m tests.bench.bench_ceiling --runs 3

``bench_native`` holds the broker to a floor: a plain loop appending the same
frames to one file with as many fsyncs as the broker did.  This script asks how
close *any* Python program of the same shape gets to that floor, with no broker
around it: the least code that still confirms only what is on disk.

* **embedded** -- ``--threads`` threads append prebuilt frames (one ``os.write``
  per call of ``--batch`` records, under a lock) and wait for a group commit:
  the first waiter fsyncs for everyone written so far, the others wait on a
  condition.  No records, ids, encoding, index or receipts.
* **server** -- the same frames sent by ``--threads`` client threads, each on
  its own TCP connection, to an ``asyncio.Protocol`` server in a child process
  that does ``os.write`` per request and, once per loop turn, one fsync for
  every request read in that turn, then a 4-byte reply each.  No decoding,
  checking, framing or offsets.

With ``--framed`` both add the least per-record work the broker's contract asks
for, using mqkit's own codec: the producer makes each record (its id, the send
time) and encodes its body; the embedded writer, or the server after checking
each body it received (lengths and text: the bytes come from the network),
frames it with its offset, time and CRC -- and still no receipts, index,
offsets reply, policies or SDK objects.

Each row prints its rate, the fsyncs it did, the floor for that many fsyncs
(``floor_once`` of ``bench_storage``, in the same run) and the ratio.  A ratio
near or under ``bench_native``'s target says the target is beyond Python
itself for that shape, whatever a broker does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run by path: make `tests` importable like `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mqkit.broker.body import check_body, encode_body
from mqkit.broker.storage.frame import seal
from mqkit.message import H_ID, H_TS, Record
from tests.bench.bench_storage import floor_once, record

SIZE = 1024
_LEN = struct.Struct(">I")
_OK = b"done"


@dataclass
class Result:
    rate: float  # confirmed records per second
    fsyncs: int
    count: int


def frame() -> bytes:
    """A record's on-disk frame as the native broker writes it (1 KiB value, id and time)."""
    return seal(0, 0, encode_body(record(SIZE)))


def make_bodies(value: bytes, batch: int) -> list[bytes]:
    """What a producer must do per record at least: an id, the send time, the body."""
    now = repr(time.time())
    ids = os.urandom(16 * batch).hex()
    return [
        encode_body(Record(None, value, {H_ID: ids[32 * i : 32 * i + 32], H_TS: now}))
        for i in range(batch)
    ]


def frame_all(bodies: list[bytes], offset: int) -> bytes:
    """What a log must do per record at least: frame it with offset, time and CRC."""
    ts = int(time.time() * 1000)
    return b"".join([seal(offset + i, ts, b) for i, b in enumerate(bodies)])


def timed(threads: int, seconds: float, work: Callable[[int, Callable[[], bool]], int]) -> float:
    """Run ``work(i, go_on)`` in ``threads`` threads for ``seconds``; total count / elapsed."""
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)
    end = [0.0]

    def run(i: int) -> None:
        barrier.wait()
        counts[i] = work(i, lambda: time.perf_counter() < end[0])

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    end[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    barrier.wait()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - t0)


# -- embedded: threads, one file, group commit -----------------------------------------------


def embedded_once(
    path: Path, threads: int, batch: int, seconds: float, framed: bool = False
) -> Result:
    data = frame() * batch
    value = os.urandom(SIZE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    write_lock = threading.Lock()
    cv = threading.Condition()
    state = {"written": 0, "synced": 0, "leading": 0, "fsyncs": 0}

    def commit(seq: int) -> None:
        with cv:
            while state["synced"] < seq:
                if state["leading"]:
                    cv.wait()
                    continue
                state["leading"] = 1
                target = state["written"]
                cv.release()
                try:
                    os.fsync(fd)
                finally:
                    cv.acquire()
                state["synced"], state["leading"] = target, 0
                state["fsyncs"] += 1
                cv.notify_all()

    def work(_i: int, go_on: Callable[[], bool]) -> int:
        n = 0
        while go_on():
            bodies = make_bodies(value, batch) if framed else None
            with write_lock:
                seq = state["written"]
                os.write(fd, data if bodies is None else frame_all(bodies, seq * batch))
                seq = state["written"] = seq + 1
            commit(seq)
            n += batch
        return n

    rate = timed(threads, seconds, work)
    os.close(fd)
    return Result(rate, state["fsyncs"], state["written"] * batch)


# -- server: a child process, asyncio, group commit ------------------------------------------


def serve(path: str, framed: bool) -> None:
    """Child process: accept, write each request, fsync for all that came before, reply."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    fsyncs = 0
    requests = 0
    offset = 0
    pending: list[asyncio.Transport] = []

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self.buf = bytearray()

        def data_received(self, data: bytes) -> None:
            nonlocal offset, requests
            buf = self.buf
            buf += data
            while len(buf) >= 4:
                (n,) = _LEN.unpack_from(buf)
                if len(buf) < 4 + n:
                    break
                if framed:  # [u32 length, body] per record: check, then frame each
                    request = bytes(buf[4 : 4 + n])
                    bodies, p = [], 0
                    while p < n:
                        (size,) = _LEN.unpack_from(request, p)
                        check_body(request, p + 4, p + 4 + size)
                        bodies.append(request[p + 4 : p + 4 + size])
                        p += 4 + size
                    os.write(fd, frame_all(bodies, offset))
                    offset += len(bodies)
                else:
                    os.write(fd, buf[4 : 4 + n])
                del buf[: 4 + n]
                requests += 1
                if not pending:
                    asyncio.get_running_loop().call_soon(settle)
                pending.append(self.transport)

    def settle() -> None:
        # Once per loop turn, after every connection's data was read: one fsync, inline
        # (a hop to a thread and back costs more than it lets run meanwhile; what
        # arrives during the fsync waits in the socket buffers for the next turn).
        nonlocal fsyncs
        os.fsync(fd)
        fsyncs += 1
        for t in pending:
            t.write(_OK)
        pending.clear()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Conn, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        # stdin closes when the parent is done: report the fsyncs and stop.
        await loop.run_in_executor(None, sys.stdin.read)
        print(fsyncs, flush=True)
        print(requests, flush=True)
        server.close()

    asyncio.run(main())


def server_once(
    path: Path, threads: int, batch: int, seconds: float, framed: bool = False
) -> Result:
    payload = frame() * batch
    request = _LEN.pack(len(payload)) + payload
    value = os.urandom(SIZE)
    serve_args = ["--serve", str(path), *(["--framed"] if framed else [])]
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.bench_ceiling", *serve_args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        port = int(child.stdout.readline())
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(threads)]
        for s in socks:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def work(i: int, go_on: Callable[[], bool]) -> int:
            s, n = socks[i], 0
            while go_on():
                if framed:
                    bodies = make_bodies(value, batch)
                    payload = b"".join(x for b in bodies for x in (_LEN.pack(len(b)), b))
                    s.sendall(_LEN.pack(len(payload)) + payload)
                else:
                    s.sendall(request)
                got = b""
                while len(got) < len(_OK):
                    chunk = s.recv(64)
                    if not chunk:
                        raise ConnectionError("the ceiling server went away")
                    got += chunk
                n += batch
            return n

        rate = timed(threads, seconds, work)
        for s in socks:
            s.close()
        child.stdin.close()
        fsyncs = int(child.stdout.readline())
        count = int(child.stdout.readline()) * batch
    finally:
        child.wait(timeout=30)
    return Result(rate, fsyncs, count)


# -- driver ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--threads", default="1,8")
    p.add_argument("--batches", default="1,100")
    p.add_argument("--modes", default="embedded,server")
    p.add_argument("--framed", action="store_true", help="add the per-record work (see above)")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.framed)
        return
    rec = frame()
    what = "framed per record" if args.framed else "prebuilt frames"
    print(f"{what}; frame {len(rec)} bytes; {args.runs} runs of {args.seconds:g} s; medians")
    print(f"{'mode':9} {'shape':8} {'msg/s':>10} {'msg/fsync':>10} {'floor':>10} {'ratio':>6}")
    for mode in args.modes.split(","):
        once = embedded_once if mode == "embedded" else server_once
        for batch in (int(b) for b in args.batches.split(",")):
            for threads in (int(t) for t in args.threads.split(",")):
                rates, floors, ratios, per = [], [], [], []
                for _ in range(args.runs):
                    with tempfile.TemporaryDirectory() as d:
                        r = once(Path(d) / "log", threads, batch, args.seconds, args.framed)
                        floor = floor_once(Path(d) / "floor", rec, r.count, r.fsyncs)
                    rates.append(r.rate)
                    floors.append(floor)
                    ratios.append(r.rate / floor)
                    per.append(r.count / max(1, r.fsyncs))
                med = statistics.median
                print(
                    f"{mode:9} {threads}t x{batch:<4} {med(rates):>10,.0f} {med(per):>10.1f} "
                    f"{med(floors):>10,.0f} {med(ratios):>6.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
