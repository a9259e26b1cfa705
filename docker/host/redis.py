"""Redis 7 from Debian's redis-server, run by us (not the system service)."""

from __future__ import annotations

import shutil
import socket

from .base import Broker
from .common import HOST, recv_exact, spawn, write_pidfile


def resp_ping(port: int, timeout: float = 2.0) -> bool:
    """RESP ``PING`` -> ``+PONG`` (a loading AOF answers ``-LOADING``: not ready)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        line = bytearray()
        while not line.endswith(b"\r\n"):
            line += recv_exact(sock, 1)
        return bytes(line) == b"+PONG\r\n"


class Redis(Broker):
    apt_packages = ("redis-server",)
    ready_timeout = 60.0
    stop_timeout = 30.0

    @property
    def port(self) -> int:
        return self.spec.ports["redis"]

    def launch(self) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = [str(a) for a in self.spec.raw.get("args", [])]
        cmd = [
            exe,
            "--bind", HOST,
            "--port", str(self.port),
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(data),
            "--logfile", "",
            *args,
        ]  # fmt: skip
        proc = spawn(cmd, self.log_paths()[0], cwd=data)
        write_pidfile(self.pidfile("server"), proc.pid)

    def probe(self) -> bool:
        try:
            return resp_ping(self.port)
        except (OSError, ConnectionError):
            return False
