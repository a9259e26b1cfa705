"""Run the broker server as a real subprocess, for tests and the fuzz script.

A subprocess, not a thread: kill -9, SIGTERM and the exit status are what
the tests are about, and a crash in the server must not take the test down.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlencode

__all__ = ["BrokerProcess", "storage_available"]


def storage_available() -> bool:
    """True once the on-disk storage (mqkit.broker.storage.Storage) can be imported."""
    try:
        from mqkit.broker.storage import Storage  # noqa: F401
    except ImportError:
        return False
    return True


class BrokerProcess:
    """``python -m mqkit.broker.server`` on 127.0.0.1; the port is kept across restarts."""

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        port: int = 0,
        token: str | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.token = token
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="mqkit-broker-", suffix=".log")[1])

    @property
    def memory(self) -> bool:
        return self.data_dir is None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "mqkit.broker.server", "--port", str(self.port)]
        cmd += ["--memory"] if self.data_dir is None else ["--data-dir", str(self.data_dir)]
        if self.token:
            cmd += ["--token", self.token]
        if self.tls_cert and self.tls_key:
            cmd += ["--tls-cert", str(self.tls_cert), "--tls-key", str(self.tls_key)]
        return cmd + list(self.extra)

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until the port is bound (the server prints it on stdout)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("MQKIT_BROKER_TOKEN", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=log, env=env
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                if b"listening on" in line:
                    self.port = int(line.decode().rsplit(":", 1)[1])
                    return
                if not line:
                    break
            if self.proc.poll() is not None:
                break
        self.kill()
        raise RuntimeError(
            f"the broker did not start ({line!r}); its log:\n{self.log_path.read_text()[-3000:]}"
        )

    def url(self, scheme: str | None = None, **query: object) -> str:
        scheme = scheme or ("mqkits" if self.tls_cert else "mqkit")
        q = {k: str(v) for k, v in query.items() if v is not None}
        return f"{scheme}://127.0.0.1:{self.port}" + (f"?{urlencode(q)}" if q else "")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the exit status (0 after a graceful shutdown)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reap()
        return code

    def kill(self) -> None:
        """kill -9: no flush, no goodbye."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reap()

    def restart(self) -> None:
        if self.alive():
            self.stop()
        self.start()

    def _reap(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def rss_kib(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def __enter__(self) -> BrokerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop()
        self.log_path.unlink(missing_ok=True)
