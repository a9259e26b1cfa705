"""A real Redis for the tests: the ``redis_url`` session fixture.

With ``MQKIT_REDIS_URL`` set (e.g. by ``docker/brokers up redis``) that server
is used.  Otherwise a private ``redis-server`` (the Debian package) is started
on a free port of 127.0.0.1 with its own data directory, fsyncing every write
(``--appendonly yes --appendfsync always``, no RDB snapshots), and stopped by
its PID when the session ends.  A missing ``redis-server`` skips the Redis
tests on a developer machine and FAILS them under ``CI=true``.

Wire it into a conftest with ``from tests.redis_server import redis_url``
(or ``pytest_plugins = ["tests.redis_server"]`` in the top-level conftest).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

__all__ = ["INSTALL_HINT", "RedisServer", "ping", "redis_url"]

INSTALL_HINT = "apt-get install -y redis-server"
START_TIMEOUT = 15.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(message: str) -> None:
    """Fail under CI (never a silent skip there); skip on a developer machine."""
    if _in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a Redis answers PING on host:port (raw RESP, no client library needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process on 127.0.0.1 with its own data dir; stopped by PID."""

    def __init__(self, executable: str, data_dir: Path) -> None:
        self.executable = executable
        self.data_dir = data_dir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "redis-server is not running"
        return self.proc.pid

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    def start(self, port: int | None = None) -> None:
        """Start (a few tries on a fresh free port: another process may grab one)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tries = 1 if port is not None else 5
        for _ in range(tries):
            self.port = port if port is not None else _free_port()
            self.proc = subprocess.Popen(
                [
                    self.executable,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--dir",
                    str(self.data_dir),
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                    "--daemonize",
                    "no",
                    "--logfile",
                    str(self.log_file),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                if ping("127.0.0.1", self.port, timeout=0.5):
                    return
                time.sleep(0.05)
            self.stop()
        log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
        raise RuntimeError(f"redis-server did not answer PING on 127.0.0.1; its log:\n{log}")

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL if it does not exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def kill(self) -> None:
        """kill -9 (for fault tests); ``start(port=self.port)`` brings it back with its data."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a real Redis for the whole session."""
    external = os.environ.get("MQKIT_REDIS_URL")
    if external:
        parts = urlsplit(external)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        if not ping(host, port) and not parts.password:
            pytest.fail(
                f"MQKIT_REDIS_URL={external} does not answer PING; start it with "
                "'docker/brokers up redis', or unset MQKIT_REDIS_URL to let the tests start "
                "their own redis-server",
                pytrace=False,
            )
        yield external
        return
    executable = shutil.which("redis-server")
    if executable is None:
        _unavailable(
            f"redis-server is not installed; install it with: {INSTALL_HINT} "
            "(or set MQKIT_REDIS_URL to a running Redis)"
        )
        return  # pragma: no cover - skip/fail raise
    server = RedisServer(executable, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
