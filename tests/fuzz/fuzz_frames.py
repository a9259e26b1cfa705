"""Hammer a live broker server with random and mutated frames; it must keep serving.

Not part of the test run (it takes minutes); run it by hand or in a nightly job::

    python -m tests.fuzz.fuzz_frames --seconds 60 --seed 1

Attacker threads open connection after connection and send garbage of every
kind: random bytes, a HELLO followed by random bytes, mutated valid frames,
valid frames with random (often wrong) fields, lengths far above the frame
cap, half-sent frames.  Meanwhile a well-behaved client publishes and consumes
in rounds and checks that every message of every round arrives.  The server's
resident memory is sampled every second; the run fails if it grows by more
than ``--rss-growth-mib`` over its level after warm-up, if the server dies,
or if the healthy client loses a message.  Exit status 0 = passed.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import struct
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field

import mqkit
from mqkit.broker import protocol as wire
from mqkit.message import Record
from mqkit.policy import Policy
from tests.fuzz.broker_process import BrokerProcess

__all__ = ["main"]

TOPICS = [f"fz-{i}" for i in range(8)] + ["", "..", "a/b", "x" * 300]


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: int = 0
    frames: int = 0
    bytes_sent: int = 0
    errors_back: int = 0
    results_back: int = 0
    closed_by_server: int = 0
    healthy_rounds: int = 0
    healthy_messages: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


def _frame(req: wire.Request, rid: int) -> bytes:
    op, payload = wire.encode_request(req)
    return wire.encode_frame(op, rid, payload)


def _random_request(rng: random.Random) -> wire.Request:
    """A well-formed request with fields that are mostly wrong."""
    topic = rng.choice(TOPICS)
    member = rng.choice(["m1", "m2", f"m{rng.randrange(10**6)}", ""])
    kind = rng.randrange(10)
    if kind == 0:
        return wire.Declare(topic, rng.choice([None, 1, 3, 2**31]), ("g", rng.choice(TOPICS)))
    if kind == 1:
        recs = [
            Record(rng.choice([None, "k", "é"]), rng.randbytes(rng.randrange(0, 300)), {"h": "v"})
            for _ in range(rng.randrange(0, 5))
        ]
        return wire.Publish(topic, recs, rng.random() < 0.5)
    if kind == 2:
        return wire.Join(
            topic,
            rng.choice(["g", "", "x" * 250]),
            rng.random() < 0.5,
            rng.choice([0, 1, 2**32 - 1]),
        )
    if kind == 3:
        return wire.Fetch(member, rng.choice([0, 1, 2**32 - 1]), rng.choice([0.0, 0.01, 1e9]))
    if kind == 4:
        return wire.Ack(member, tuple((rng.randrange(5), rng.randrange(2**40)) for _ in range(3)))
    if kind == 5:
        return wire.Nack(member, ((0, 0),), rng.choice([0.0, 1e12]))
    if kind == 6:
        return wire.Heartbeat(member)
    if kind == 7:
        return wire.Leave(member)
    if kind == 8:
        return wire.Stats(topic, "g")
    return wire.DeleteTopic(rng.choice(TOPICS))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        if not b:
            break
        pos = rng.randrange(len(b))
        op = rng.randrange(4)
        if op == 0:
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            del b[pos : pos + rng.randrange(1, 9)]
        elif op == 2:
            b[pos:pos] = rng.randbytes(rng.randrange(1, 9))
        else:
            b[pos] = rng.randrange(256)
    return bytes(b)


def _attack_once(port: int, rng: random.Random, tally: Tally) -> None:
    hello = _frame(wire.Hello(wire.VERSION, "", "fuzz"), 0)
    kind = rng.randrange(6)
    frames = 0
    if kind == 0:
        data = rng.randbytes(rng.randrange(1, 8192))
    elif kind == 1:
        data = hello + rng.randbytes(rng.randrange(1, 8192))
    elif kind == 2:
        reqs = [_frame(_random_request(rng), i + 1) for i in range(rng.randrange(1, 20))]
        frames = len(reqs)
        data = hello + _mutate(rng, b"".join(reqs))
    elif kind == 3:
        reqs = [_frame(_random_request(rng), i + 1) for i in range(rng.randrange(1, 50))]
        frames = len(reqs)
        data = hello + b"".join(reqs)  # valid frames, wrong contents: errors, no close
    elif kind == 4:
        data = hello + struct.pack(">IBI", rng.randrange(wire.DEFAULT_MAX_FRAME + 1, 2**32), 3, 1)
    else:
        data = hello + struct.pack(">IBI", 100_000, 3, 1) + rng.randbytes(100)  # half a frame
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            tally.add(connections=1, frames=frames + 1, bytes_sent=len(data))
            s.sendall(data)
            if kind == 5:
                s.settimeout(0.2)  # leave it half-sent for a moment, then go
                with contextlib.suppress(TimeoutError):
                    s.recv(65536)
                return
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, TimeoutError):
                    break
                if not chunk:
                    break
                got += chunk
            tally.add(closed_by_server=1)
            dec = wire.FrameDecoder(wire.DEFAULT_MAX_FRAME + 65536)
            try:
                for f in dec.feed(got):
                    if f.op == wire.Op.ERROR:
                        tally.add(errors_back=1)
                    else:
                        tally.add(results_back=1)
            except wire.ProtocolError as exc:
                tally.failures.append(f"the server sent a malformed frame: {exc}")
    except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, TimeoutError) as exc:
        if kind in (0, 1, 2, 4):
            return  # the server may close before we finish sending garbage
        tally.failures.append(f"attack kind {kind}: {type(exc).__name__}: {exc}")


def _healthy(url: str, stop: threading.Event, tally: Tally) -> None:
    """Rounds of publish + consume on a fresh topic; every message must arrive."""
    warnings.simplefilter("ignore")
    mq = mqkit.connect(url)
    producer = mq.producer(Policy(persistent=False))
    rnd = 0
    try:
        while not stop.is_set():
            topic = f"healthy-{rnd}"
            mq.declare(topic, partitions=3, groups=["g"])
            n = 200
            for i in range(0, n, 20):
                producer.send_many(topic, [str(j).encode() for j in range(i, i + 20)])
            got: set[int] = set()
            c = mq.consumer(topic, group="g")
            deadline = time.monotonic() + 30
            for d in c.iter(timeout=5):
                got.add(int(d.message.value))
                d.ack()
                if len(got) == n or time.monotonic() > deadline:
                    break
            c.close()
            if got != set(range(n)):
                tally.failures.append(f"round {rnd}: {n - len(got)} messages missing")
                return
            mq.adapter.delete_topic(topic)
            mq.adapter.delete_topic(f"{topic}.dlq")
            tally.add(healthy_rounds=1, healthy_messages=n)
            rnd += 1
    except Exception as exc:
        tally.failures.append(f"healthy client failed: {type(exc).__name__}: {exc}")
    finally:
        mq.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attackers", type=int, default=4)
    ap.add_argument("--rss-growth-mib", type=float, default=100.0)
    args = ap.parse_args(argv)
    tally = Tally()
    with BrokerProcess() as broker:
        stop = threading.Event()
        healthy = threading.Thread(target=_healthy, args=(broker.url(), stop, tally))
        healthy.start()

        def attack(i: int) -> None:
            rng = random.Random(args.seed * 1000 + i)
            while not stop.is_set():
                _attack_once(broker.port, rng, tally)

        attackers = [threading.Thread(target=attack, args=(i,)) for i in range(args.attackers)]
        for t in attackers:
            t.start()
        start = time.monotonic()
        samples: list[int] = []
        while time.monotonic() - start < args.seconds and broker.alive():
            time.sleep(1.0)
            samples.append(broker.rss_kib())
        stop.set()
        for t in [*attackers, healthy]:
            t.join(60)
        alive = broker.alive()
        if alive:  # a fresh client still gets served
            try:
                with mqkit.connect(broker.url()) as mq:
                    mq.declare("after-fuzz")
            except Exception as exc:
                tally.failures.append(f"a fresh client failed after the run: {exc}")
        else:
            tally.failures.append("the server died:\n" + broker.log_tail())
        base = samples[min(5, len(samples) - 1)] if samples else 0
        peak = max(samples) if samples else 0
        growth = (peak - base) / 1024
        if growth > args.rss_growth_mib:
            tally.failures.append(f"RSS grew by {growth:.1f} MiB after warm-up")
        print(
            f"fuzz_frames: {args.seconds:.0f}s seed={args.seed}: "
            f"{tally.connections} connections, {tally.frames} frames, "
            f"{tally.bytes_sent / 2**20:.1f} MiB sent; "
            f"{tally.errors_back} ERROR and {tally.results_back} RESULT frames back; "
            f"{tally.closed_by_server} connections closed by the server; "
            f"healthy client: {tally.healthy_rounds} rounds, {tally.healthy_messages} messages "
            f"all delivered; server RSS after warm-up {base / 1024:.1f} MiB, "
            f"peak {peak / 1024:.1f} MiB, final {samples[-1] / 1024 if samples else 0:.1f} MiB"
        )
        for f in tally.failures[:20]:
            print("FAIL:", f)
        return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
