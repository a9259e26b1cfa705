"""pytest plugin: real brokers for tests marked redis / rabbitmq / kafka / activemq / rocketmq.

Load it with ``pytest -p tests.brokers_plugin`` or, in tests/conftest.py,
``pytest_plugins = ["tests.brokers_plugin"]``.

- With ``CI=true`` or ``--brokers-up`` it runs ``docker/brokers up <the brokers the collected
  tests are marked with>`` once, before the first test, and ``docker/brokers down <those>``
  at the end if it started them (keep them with ``--brokers-keep``).
- Before each marked test it checks that the broker's port answers. If not, the test FAILS
  under CI and is SKIPPED elsewhere, with the command that starts it
  (``docker/brokers up kafka``).
- Fixtures: ``broker_urls`` (broker name -> URL) and ``broker_control`` (kill9 / restart /
  wait_ready / up / down through docker/brokers, for fault tests); ``ControlledBroker``
  gives the conformance and fault suites their broker hooks from them.
- At the end, a non-daemon thread still running (a driver's, of a client a failed test did
  not close) is named with its stack and the process exits anyway, with a failing status:
  a CI job reports instead of hanging.

Standard library only (plus pytest); versions, ports and URLs come from docker/versions.json.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNNER = REPO_ROOT / "docker" / "brokers"
VERSIONS = REPO_ROOT / "docker" / "versions.json"
BROKERS = ("redis", "rabbitmq", "kafka", "activemq", "rocketmq")
HOST = "127.0.0.1"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def load_versions() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = json.loads(VERSIONS.read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def broker_url(name: str) -> str:
    return str(load_versions()[name]["url"])


def broker_port(name: str) -> int:
    """The port the broker's URL names (what mqkit connects to)."""
    url = broker_url(name)
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def reachable(name: str, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, broker_port(name)), timeout=timeout):
            return True
    except OSError:
        return False


def start_command(names: list[str] | tuple[str, ...] | str) -> str:
    listed = [names] if isinstance(names, str) else list(names)
    return f"docker/brokers up {' '.join(listed)}"


def run_runner(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run docker/brokers with this interpreter; output is captured and returned."""
    return subprocess.run(
        [sys.executable, str(RUNNER), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class BrokerControlError(RuntimeError):
    """docker/brokers returned non-zero."""


@dataclass
class BrokerControl:
    """Drives docker/brokers for fault tests (all calls block until done)."""

    calls: list[str] = field(default_factory=list)

    def _run(self, *args: str, timeout: float = 600) -> str:
        self.calls.append(" ".join(args))
        res = run_runner(*args, timeout=timeout)
        if res.returncode != 0:
            raise BrokerControlError(
                f"docker/brokers {' '.join(args)} failed ({res.returncode}):\n"
                f"{res.stdout}\n{res.stderr}"
            )
        return res.stdout

    def kill9(self, name: str) -> str:
        """kill -9 every process of the broker; its data stays."""
        return self._run("kill9", name)

    def restart(self, name: str, timeout: float = 180) -> str:
        """Start the broker again on the same data and wait until it is ready."""
        return self._run("restart", name, "--timeout", str(timeout), timeout=timeout + 60)

    def wait_ready(self, name: str, timeout: float = 180) -> str:
        return self._run("wait", name, "--timeout", str(timeout), timeout=timeout + 60)

    def up(self, *names: str) -> str:
        return self._run("up", *names)

    def down(self, *names: str) -> str:
        return self._run("down", *names)

    def status(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self._run("status", "--json"))
        return rows

    def url(self, name: str) -> str:
        return broker_url(name)


class ControlledBroker:
    """The broker hooks of the conformance and fault suites for a broker of docker/brokers.

    Mix it in before the suite: ``class TestKafkaFaults(ControlledBroker, FaultSuite)``
    with ``broker = "kafka"``.
    """

    broker: str = ""

    @pytest.fixture(autouse=True)
    def _controlled_broker(
        self, broker_urls: dict[str, str], broker_control: BrokerControl
    ) -> None:
        self._url = broker_urls[self.broker]
        self._control = broker_control

    def make_url(self) -> str:
        return self._url

    def kill_broker(self) -> None:
        self._control.kill9(self.broker)

    def restart_broker(self) -> None:
        self._control.restart(self.broker)


# ----------------------------------------------------------------------------- hooks


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("brokers", "real brokers (docker/brokers)")
    group.addoption(
        "--brokers-up",
        action="store_true",
        default=False,
        help="run `docker/brokers up` for the brokers the selected tests need (default under CI)",
    )
    group.addoption(
        "--brokers-keep",
        action="store_true",
        default=False,
        help="leave brokers started by --brokers-up running after the session",
    )


def pytest_configure(config: pytest.Config) -> None:
    # the markers are declared in pyproject.toml; declaring them here too keeps the plugin
    # usable on its own (--strict-markers) and is harmless when both do
    for name in BROKERS:
        config.addinivalue_line("markers", f"{name}: needs a real {name} broker (docker/brokers)")
    config.stash[_STARTED] = []
    config.stash[_UP_OUTPUT] = ""


_STARTED = pytest.StashKey[list[str]]()
_EXIT_STATUS = pytest.StashKey[int]()
#: seconds lingering non-daemon threads get to end after the session
THREAD_GRACE = 30.0
_UP_OUTPUT = pytest.StashKey[str]()


def _markers_of(item: pytest.Item) -> list[str]:
    names = [name for name in BROKERS if item.get_closest_marker(name) is not None]
    if (
        "redis" in names
        and "redis_url" in getattr(item, "fixturenames", ())
        and not os.environ.get("MQKIT_REDIS_URL")
    ):
        names.remove("redis")  # the redis_url fixture starts a Redis of its own
    return names


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if not (in_ci() or config.getoption("--brokers-up")):
        return
    needed = sorted(
        {name for item in session.items for name in _markers_of(item)}, key=BROKERS.index
    )
    if not needed or config.getoption("--collect-only"):
        return
    missing = [name for name in needed if not reachable(name)]
    res = run_runner("up", *needed)
    config.stash[_UP_OUTPUT] = res.stdout + res.stderr
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"brokers: {start_command(needed)} -> exit {res.returncode}")
        for line in res.stdout.splitlines()[-len(needed) - 1 :]:
            reporter.write_line(f"brokers: {line}")
        if res.returncode != 0:
            reporter.write_line(res.stderr[-4000:])
    # only stop at the end what was not running before we started it
    config.stash[_STARTED] = [name for name in missing if reachable(name)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    config.stash[_EXIT_STATUS] = int(exitstatus)
    started = config.stash.get(_STARTED, [])
    if started and not config.getoption("--brokers-keep"):
        run_runner("down", *started)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Never let a driver's leftover non-daemon thread keep the test process alive.

    Python waits for every non-daemon thread before it exits; one a failed test left
    behind (a gRPC or I/O loop of a client nobody closed) would hang a CI job forever
    instead of letting it report.  After a grace period such threads are named, with
    their stacks, on stderr and the process exits at once, with a failing status.
    """
    lingering = [
        t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon
    ]
    deadline = time.monotonic() + THREAD_GRACE
    for t in lingering:
        t.join(max(0.0, deadline - time.monotonic()))
    lingering = [t for t in lingering if t.is_alive()]
    if not lingering:
        return
    frames = sys._current_frames()
    lines = [f"brokers: {len(lingering)} non-daemon thread(s) still running; exiting anyway:"]
    for t in lingering:
        frame = frames.get(t.ident) if t.ident is not None else None
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        lines.append(f"--- {t.name}\n{stack}")
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(config.stash.get(_EXIT_STATUS, 0) or 1)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for name in _markers_of(item):
        if reachable(name):
            continue
        msg = (
            f"{name} is not reachable on {HOST}:{broker_port(name)}; start it with: "
            f"{start_command(name)}"
        )
        output = item.config.stash.get(_UP_OUTPUT, "")
        if in_ci():
            if output:
                msg += f"\n(docker/brokers up said:)\n{output[-3000:]}"
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def broker_urls() -> dict[str, str]:
    """Broker name -> URL, e.g. ``{"kafka": "kafka://127.0.0.1:9092", ...}``."""
    return {name: str(spec["url"]) for name, spec in load_versions().items()}


@pytest.fixture(scope="session")
def broker_control() -> BrokerControl:
    """kill9 / restart / wait_ready / up / down a broker through docker/brokers."""
    return BrokerControl()
