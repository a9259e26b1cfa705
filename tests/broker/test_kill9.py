"""A real ``kill -9`` of a process appending with fsync="always".

The child prints every offset once its append returned (= confirmed).  After
SIGKILL at a random moment, every confirmed offset must be there exactly
once, holding the value the child wrote; nothing may be duplicated.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from mqkit.broker.storage import Storage
from tests.broker.util import read_all

REPO = Path(__file__).resolve().parents[2]
KILLS = 5

CHILD = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from mqkit.broker.storage import Storage
    from mqkit.message import Record

    data, run = Path(sys.argv[1]), sys.argv[2]
    log = Storage(data, fsync="always", segment_bytes=65536).log("t", 0)
    lock = threading.Lock()

    def worker(t):
        n = 0
        while True:
            tags = [f"{run}-{t}-{n + j}" for j in range(1 + n % 3)]
            batch = [Record(None, tag.encode() + b"." * 300, {"tag": tag}) for tag in tags]
            first = log.append(batch, durable=True)
            lines = "".join(f"{first + j} {tag}\\n" for j, tag in enumerate(tags))
            with lock:
                sys.stdout.write(lines)
                sys.stdout.flush()
            n += len(tags)

    print("ready", flush=True)  # before the workers: their lines must not split it
    for t in range(4):
        threading.Thread(target=worker, args=(t,), daemon=True).start()
    threading.Event().wait()
    """
)


def run_and_kill(data: Path, run: int, rng: random.Random) -> dict[int, str]:
    """Start the child, SIGKILL it at a random moment; returns offset -> tag confirmed."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data), str(run)],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    lines: list[bytes] = []
    ready = threading.Event()

    def collect() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            if line == b"ready\n":
                ready.set()
            lines.append(line)

    reader = threading.Thread(target=collect)
    reader.start()
    try:
        assert ready.wait(60), "child never got ready"
        time.sleep(rng.uniform(0.05, 0.6))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(60)
        reader.join(60)
    confirmed: dict[int, str] = {}
    for line in lines:
        if line.endswith(b"\n") and line != b"ready\n":  # a cut-off line proves nothing
            offset, tag = line.decode().split()
            confirmed[int(offset)] = tag
    return confirmed


@pytest.mark.fault
@pytest.mark.slow
def test_confirmed_appends_survive_kill_9(tmp_path: Path) -> None:
    rng = random.Random()
    all_confirmed: dict[int, str] = {}
    for run in range(KILLS):
        confirmed = run_and_kill(tmp_path, run, rng)
        assert confirmed, "nothing was confirmed before the kill"
        all_confirmed.update(confirmed)
        with Storage(tmp_path, segment_bytes=65536) as storage:
            assert not storage.recovery_report.errors, storage.recovery_report.lines()
            log = storage.log("t", 0)
            records = read_all(log, batch=500)
            assert [o for o, _ in records] == list(range(log.end_offset()))
            tags = {o: r.headers["tag"] for o, r in records}
            for offset, tag in all_confirmed.items():
                assert tags.get(offset) == tag, f"confirmed offset {offset} lost or changed"
            for o, r in records:
                assert r.value == tags[o].encode() + b"." * 300
            dupes = [t for t, n in Counter(tags.values()).items() if n > 1]
            assert not dupes, f"duplicated records: {dupes[:5]}"
