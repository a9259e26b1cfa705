"""Every example runs (scaled down) and passes its own check: on the embedded native broker
and once more on the real broker its docstring names (through ``MQKIT_URL``).

Each runs as a subprocess in a fresh directory.  Without ``MQKIT_URL`` it uses the
embedded native broker in ``./.mqkit`` there (the ordered-events example starts its own
native broker server); with it, the real broker.  Real brokers are shared and keep their
data between runs, so every run gets a fresh ``--prefix`` for its topic names (groups,
dead-letter queues, fan-out lanes and dedupe keys all derive from the topic).  An example
exits non-zero when its own check fails; here it must exit 0 and print its summary line,
which names the backend it ran on -- an example that ignored ``MQKIT_URL`` would fail.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.brokers_plugin import broker_url

pytestmark = pytest.mark.timeout(300)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

CASES = {
    "order_pipeline.py": (
        ["--orders", "120"],
        r"^order_pipeline: OK on native sent=120 resent=12 charged=116 duplicates_absorbed=12 .*"
        r"dead_lettered=4 \(reason invalid\)$",
    ),
    "notifications.py": (
        ["--users", "100"],
        r"^notifications: OK on native users=100 .* sms=100 email=98 .* dead_lettered=2$",
    ),
    "crawler_pipeline.py": (
        ["--pages", "400"],
        r"^crawler_pipeline: OK on native crawled=400 recrawled=40 stored=\d+ indexed=\d+ .*"
        r"duplicates_absorbed=80 ",
    ),
    "ordered_user_events.py": (
        ["--users", "20", "--events", "10"],
        r"^ordered_user_events: OK users=20 events=200 handled=200 processes=2 "
        r"in_order=20/20 via mqkit://",
    ),
    "backlog_incident.py": (
        ["--messages", "2000", "--size", "256", "--expired", "0.01", "--baseline", "200"],
        r"^backlog_incident: OK on native messages=2000 .* speedup=\d+\.\dx "
        r"expired_replayed=20 lost=0 twice=0$",
    ),
}

#: The ActiveMQ adapter may not be installed; the crawler then runs on RabbitMQ.
HAS_ACTIVEMQ = importlib.util.find_spec("mqkit.adapters.activemq") is not None


@dataclass(frozen=True)
class OnBroker:
    """One example on one real broker: its arguments and the summary it must print."""

    broker: str
    args: list[str]
    summary: str


ON_BROKERS = {
    # --dedupe is added by the test: a real Redis, as the docstring shows
    "order_pipeline.py": OnBroker(
        "rabbitmq",
        ["--orders", "120"],
        r"^order_pipeline: OK on amqp sent=120 resent=12 charged=116 duplicates_absorbed=12 .*"
        r"dead_lettered=4 \(reason invalid\)$",
    ),
    "notifications.py": OnBroker(
        "kafka",
        ["--users", "100"],
        r"^notifications: OK on kafka users=100 .* sms=100 email=98 .* dead_lettered=2$",
    ),
    "crawler_pipeline.py": OnBroker(
        "activemq" if HAS_ACTIVEMQ else "rabbitmq",
        ["--pages", "400"],
        rf"^crawler_pipeline: OK on {'stomp' if HAS_ACTIVEMQ else 'amqp'} crawled=400 "
        r"recrawled=40 stored=\d+ indexed=\d+ .*duplicates_absorbed=80 ",
    ),
    "ordered_user_events.py": OnBroker(
        "kafka",
        ["--users", "20", "--events", "10"],
        r"^ordered_user_events: OK users=20 events=200 handled=200 processes=2 "
        r"in_order=20/20 via kafka://",
    ),
    # Kafka rather than RocketMQ: the same story in ~20 s instead of ~50 s
    "backlog_incident.py": OnBroker(
        "kafka",
        ["--messages", "2000", "--size", "256", "--expired", "0.01", "--baseline", "200"],
        r"^backlog_incident: OK on kafka messages=2000 .* speedup=\d+\.\dx "
        r"expired_replayed=20 lost=0 twice=0$",
    ),
}


def run_example(name: str, args: list[str], cwd: Path, url: str | None) -> str:
    """Run one example to its end; return its summary line (it must have exited 0)."""
    env = {k: v for k, v in os.environ.items() if k != "MQKIT_URL"}
    if url is not None:
        env["MQKIT_URL"] = url
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.native
@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs_and_passes_its_own_check(name: str, tmp_path: Path) -> None:
    args, summary = CASES[name]
    last = run_example(name, [*args, "--prefix", f"ex-{uuid.uuid4().hex}-"], tmp_path, None)
    assert re.search(summary, last), last


def _delete_kafka_topics(url: str, prefix: str) -> None:
    """Kafka keeps every topic's log until deleted: don't let runs pile them up."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=url.split("://", 1)[1], bootstrap_timeout_ms=5000)
    try:
        names = [t for t in admin.list_topics() if t.startswith(prefix)]
        if names:
            admin.delete_topics(names, raise_errors=False)
    finally:
        admin.close()


def _marked(name: str) -> object:
    """The broker's marker makes CI start it, and fail (never skip) when it is down."""
    broker = ON_BROKERS[name].broker
    marks = [getattr(pytest.mark, broker)]
    if name == "order_pipeline.py":
        marks.append(pytest.mark.redis)
    return pytest.param(name, marks=marks, id=f"{name}-{broker}")


@pytest.mark.slow
@pytest.mark.parametrize("name", [_marked(n) for n in sorted(ON_BROKERS)])
def test_example_passes_its_own_check_on_a_real_broker(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    case = ON_BROKERS[name]
    url = broker_url(case.broker)
    prefix = f"ex-{uuid.uuid4().hex[:12]}-"
    args = [*case.args, "--prefix", prefix]
    if name == "order_pipeline.py":
        args += ["--dedupe", request.getfixturevalue("redis_url")]
    try:
        last = run_example(name, args, tmp_path, url)
    finally:
        if case.broker == "kafka":
            _delete_kafka_topics(url, prefix)
    assert re.search(case.summary, last), last


def test_every_example_is_tested() -> None:
    shipped = {p.name for p in EXAMPLES.glob("*.py")} - {"quickstart.py"}
    assert shipped == set(CASES) == set(ON_BROKERS)
