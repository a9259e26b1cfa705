"""RabbitMQ 3.10 from Debian's rabbitmq-server, run by us as node mqkit@localhost.

Everything the node writes lives under .brokers/rabbitmq (mnesia, cookie, pid file,
plugins expansion); the system service's /var/lib/rabbitmq and /etc/rabbitmq files are
not used (RABBITMQ_CONF_ENV_FILE points to our own empty file).
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

from .base import Broker
from .common import (
    DOCKER_DIR,
    HOST,
    BrokerError,
    listening_pid,
    read_pidfile,
    recv_exact,
    run,
    spawn,
    stop_records,
    write_pidfile,
)

RABBIT_SBIN_GLOB = "/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"
NODENAME = "mqkit@localhost"
EPMD_PORT = 4369


def amqp_probe(port: int, timeout: float = 3.0) -> bool:
    """Send the AMQP 0-9-1 protocol header; ready when the broker answers connection.start."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        header = recv_exact(sock, 7)
        if header[0] != 1:  # method frame
            return False
        payload = recv_exact(sock, 4)
        return payload == b"\x00\x0a\x00\x0a"  # class connection(10), method start(10)


def sbin_dir() -> Path:
    found = sorted(Path("/").glob(RABBIT_SBIN_GLOB.lstrip("/")))
    if not found:
        raise BrokerError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    return found[-1]


class RabbitMQ(Broker):
    apt_packages = ("rabbitmq-server",)
    roles = ("wrapper", "beam")
    ready_timeout = 120.0
    stop_timeout = 40.0

    @property
    def port(self) -> int:
        return self.spec.ports["amqp"]

    def env(self) -> dict[str, str]:
        d = self.dir
        return {
            "HOME": str(d),  # the Erlang cookie lives here, for the server and rabbitmqctl
            "RABBITMQ_NODENAME": NODENAME,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + 20000),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_PID_FILE": str(self.run_dir / "beam.os.pid"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": HOST,
        }

    def launch(self) -> None:
        d = self.dir
        for sub in ("mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DOCKER_DIR / "rabbitmq" / "rabbitmq.conf", d / "rabbitmq.conf")
        plugins = ",".join(str(p) for p in self.spec.raw.get("plugins", []))
        (d / "enabled_plugins").write_text(f"[{plugins}].\n")
        (d / "rabbitmq-env.conf").write_text("# mqkit: settings come from the environment\n")
        (self.run_dir / "beam.os.pid").unlink(missing_ok=True)
        if listening_pid(EPMD_PORT) is None:
            (self.run_dir / "epmd.ours").touch()  # our node will start epmd: stop it on down
        proc = spawn(
            [str(sbin_dir() / "rabbitmq-server")], self.log_paths()[0], env=self.env(), cwd=d
        )
        write_pidfile(self.pidfile("wrapper"), proc.pid)

    def probe(self) -> bool:
        try:
            return amqp_probe(self.port)
        except (OSError, ConnectionError):
            return False

    def ctl(self, *args: str, timeout: float = 120) -> str:
        res = run([str(sbin_dir() / "rabbitmqctl"), "-n", NODENAME, *args], env=self.env(),
                  timeout=timeout)  # fmt: skip
        if res.returncode != 0:
            raise BrokerError(f"rabbitmqctl {' '.join(args)} failed: {res.stdout}{res.stderr}")
        return res.stdout

    def after_ready(self) -> None:
        self.ctl("await_startup", "--timeout", "60")
        raw = (self.run_dir / "beam.os.pid").read_text().strip()
        write_pidfile(self.pidfile("beam"), int(raw))
        marker = self.run_dir / "epmd.ours"
        epmd = listening_pid(EPMD_PORT)
        if marker.exists() and epmd and epmd > 0:
            write_pidfile(self.run_dir / "epmd.pid", epmd)
        marker.unlink(missing_ok=True)

    def fully_running(self) -> bool:
        # the beam pidfile is written once ready; the wrapper alone means "starting"
        return "beam" in self.live()

    def stop(self, *, quiet: bool = False) -> bool:
        stopped = super().stop(quiet=quiet)
        epmd = read_pidfile(self.run_dir / "epmd.pid")
        if epmd is not None:
            # epmd was started by our node; end it once no node is left (graceful stop only)
            time.sleep(0.2)
            stop_records(self.name, [epmd], 5)
            (self.run_dir / "epmd.pid").unlink(missing_ok=True)
        return stopped
