"""Ordered user events: two consumer PROCESSES, each user's events handled in order.

    python examples/ordered_user_events.py             # starts a native broker server
    python examples/ordered_user_events.py --users 200 --events 30
    MQKIT_URL=kafka://127.0.0.1:9092 python examples/ordered_user_events.py

A user's events (signed up, verified, upgraded, ...) must be applied in the
order they happened, or the profile ends up wrong.  ``ordering="per_key"``
with the user id as key gives every user one ordered lane; the lanes are
spread over the members of the group, here two separate processes, so the
work is shared and a user's events are still handled one after the other --
also when a handler fails and is retried (the user's later events wait; other
users go on).

Two processes need a broker they can share.  The embedded ``native://``
broker belongs to one process, so by default this example starts the native
broker SERVER (``mqkit broker serve``) on a free port and points both
workers at ``mqkit://``; with ``MQKIT_URL`` set to a real broker it uses that.

Exits 1 if an event was lost, handled twice, or out of order for its user.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import mqkit

STEPS = ("signed_up", "verified", "profile_set", "upgraded", "renamed", "downgraded")


def worker(url: str, topic: str, out: Path) -> int:
    """One consumer process: handle events, append what it did to ``out``."""
    failed_once: set[str] = set()
    with mqkit.connect(url) as mq, out.open("a") as log:
        policy = mqkit.Policy(ordering="per_key", max_attempts=5, backoff=(0.01, 2.0, 0.1))
        consumer = mq.consumer(topic, group="profiles", policy=policy)
        print("ready", flush=True)

        def apply(m: mqkit.Message) -> None:
            event = m.payload
            if event["seq"] % 7 == 3 and m.id not in failed_once:
                failed_once.add(m.id)
                raise ConnectionError("profile database busy")  # retried; the user's lane waits
            time.sleep(0.0005)
            record = {"user": m.key, "seq": event["seq"], "pid": os.getpid()}
            record["at"] = time.monotonic_ns()  # one clock for all processes of this host
            log.write(json.dumps(record) + "\n")
            log.flush()

        consumer.run(apply, idle_timeout=3.0)
        consumer.close()
    return 0


class Server:
    """``python -m mqkit.broker.server`` on a free port, stopped by its PID."""

    def __init__(self, data_dir: Path) -> None:
        cmd = [sys.executable, "-m", "mqkit.broker.server", "--data-dir", str(data_dir)]
        self.log = (data_dir.parent / "broker.log").open("ab")  # its log, out of the way
        self.proc = subprocess.Popen(
            [*cmd, "--port", "0"], stdout=subprocess.PIPE, stderr=self.log, text=True, env=_env()
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.stop()
            raise RuntimeError(f"the broker server did not start: {line!r}")
        self.url = "mqkit://" + line.rsplit(" ", 1)[1].strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


def _env() -> dict[str, str]:
    """The child processes import mqkit from where this one did."""
    root = str(Path(mqkit.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--events", type=int, default=20, help="events per user")
    ap.add_argument(
        "--prefix",
        default=f"ex-{uuid.uuid4().hex[:8]}-",
        help="start of every topic name (default: fresh per run, so runs on a shared broker "
        "never meet each other's leftovers)",
    )
    ap.add_argument("--worker", nargs=3, metavar=("URL", "TOPIC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker[0], args.worker[1], Path(args.worker[2]))

    work_dir = Path(tempfile.mkdtemp(prefix="ordered-events-"))
    url = os.environ.get("MQKIT_URL", "")
    server: Server | None = None
    if url.startswith("memory:"):
        print("ordered_user_events: needs a broker two processes can share", file=sys.stderr)
        return 2
    if not url or url.startswith("native:"):
        server = Server(work_dir / "broker")
        url = server.url
    topic = f"{args.prefix}user-events"
    try:
        with mqkit.connect(url) as mq:
            mq.declare(topic, partitions=4, groups=["profiles"], ordered=True)
            outs = [work_dir / f"worker-{n}.jsonl" for n in range(2)]
            procs = [
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", url, topic, str(out)],
                    stdout=subprocess.PIPE,
                    text=True,
                    env=_env(),
                )
                for out in outs
            ]
            for p in procs:  # both members joined: the lanes are split between them
                assert p.stdout is not None
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError("a worker did not start")
            producer = mq.producer(mqkit.Policy(persistent=mq.capabilities.supports("persistent")))
            sent = 0
            for seq in range(args.events):  # users' events interleave, as in real traffic
                batch = [
                    mqkit.OutgoingMessage(
                        {"seq": seq, "step": STEPS[seq % len(STEPS)]},
                        key=f"user-{u}",
                        id=f"user-{u}-{seq}",
                    )
                    for u in range(args.users)
                ]
                producer.send_many(topic, batch)
                sent += len(batch)
            codes = [p.wait(timeout=600) for p in procs]
            for p in procs:
                if p.stdout is not None:
                    p.stdout.close()
    finally:
        if server is not None:
            server.stop()

    handled: dict[str, list[tuple[int, int]]] = defaultdict(list)
    pids: set[int] = set()
    for out in outs:
        for line in out.read_text().splitlines():
            r = json.loads(line)
            handled[r["user"]].append((r["at"], r["seq"]))
            pids.add(r["pid"])
    problems = []
    if codes != [0, 0]:
        problems.append(f"workers exited with {codes}")
    wrong = []
    for u in range(args.users):
        seqs = [seq for _, seq in sorted(handled.get(f"user-{u}", []))]
        if seqs != list(range(args.events)):
            wrong.append(f"user-{u}: {seqs[:10]}")
    if wrong:
        problems.append(f"{len(wrong)} users not handled once and in order, e.g. {wrong[0]}")
    if args.users >= 8 and len(pids) < 2:
        problems.append("one process did all the work: the lanes were not shared")
    status = "OK" if not problems else "FAILED"
    total = sum(len(v) for v in handled.values())
    print(
        f"ordered_user_events: {status} users={args.users} events={sent} handled={total} "
        f"processes={len(pids)} in_order={args.users - len(wrong)}/{args.users} via {url}"
    )
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
