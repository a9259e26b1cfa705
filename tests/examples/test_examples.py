"""Every example runs (scaled down) against the embedded native broker and passes its check.

Each runs as a subprocess in a fresh directory without ``MQKIT_URL``, so it
uses the embedded native broker in ``./.mqkit`` there (the ordered-events
example starts its own native broker server).  An example exits non-zero when
its own check fails; here it must exit 0 and print its summary line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.native, pytest.mark.timeout(300)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

CASES = {
    "order_pipeline.py": (
        ["--orders", "120"],
        r"^order_pipeline: OK sent=120 resent=12 charged=116 duplicates_absorbed=12 .*"
        r"dead_lettered=4 \(reason invalid\)$",
    ),
    "notifications.py": (
        ["--users", "100"],
        r"^notifications: OK users=100 .* sms=100 email=98 .* dead_lettered=2$",
    ),
    "crawler_pipeline.py": (
        ["--pages", "400"],
        r"^crawler_pipeline: OK crawled=400 recrawled=40 stored=\d+ indexed=\d+ .*"
        r"duplicates_absorbed=80 ",
    ),
    "ordered_user_events.py": (
        ["--users", "20", "--events", "10"],
        r"^ordered_user_events: OK users=20 events=200 handled=200 processes=2 "
        r"in_order=20/20 via mqkit://",
    ),
    "backlog_incident.py": (
        ["--messages", "2000", "--size", "256", "--expired", "0.01", "--baseline", "200"],
        r"^backlog_incident: OK messages=2000 .* speedup=\d+\.\dx expired_replayed=20 "
        r"lost=0 twice=0$",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs_and_passes_its_own_check(name: str, tmp_path: Path) -> None:
    args, summary = CASES[name]
    env = {k: v for k, v in os.environ.items() if k != "MQKIT_URL"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    last = done.stdout.strip().splitlines()[-1]
    assert re.search(summary, last), last


def test_every_example_is_tested() -> None:
    shipped = {p.name for p in EXAMPLES.glob("*.py")} - {"quickstart.py"}
    assert shipped == set(CASES)
