"""The life cycle every broker shares: configure, launch, probe, stop, kill -9, wipe."""

from __future__ import annotations

import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from .common import (
    BrokerError,
    BrokerSpec,
    MavenArtifact,
    PidRecord,
    brokers_dir,
    port_owner,
    read_pidfile,
    rss_kib,
    say,
    signal_pid,
    stop_records,
    tail,
    wait_gone,
    wait_until,
)


@dataclass(frozen=True)
class UpResult:
    name: str
    pids: dict[str, int]
    ports: dict[str, int]
    seconds: float
    already_running: bool
    rss_kib: int


class Broker:
    """One broker run on this host by us. Subclasses fill in the hooks."""

    #: Debian packages it needs (installed by the runner in one apt-get call).
    apt_packages: tuple[str, ...] = ()
    #: Process roles; each has a pidfile run/<role>.pid.
    roles: tuple[str, ...] = ("server",)
    ready_timeout: float = 120.0
    stop_timeout: float = 30.0

    def __init__(self, spec: BrokerSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.dir = brokers_dir() / spec.name

    # ------------------------------------------------------------------ hooks

    def prepare(self) -> None:
        """Install what apt does not (e.g. Maven jars). Runs before ``launch``."""

    def maven_artifacts(self) -> list[MavenArtifact]:
        """Maven artifacts ``prepare`` resolves (with their runtime dependencies)."""
        return []

    def launch(self) -> None:
        """Write the configuration and start the process(es) in the background."""
        raise NotImplementedError

    def probe(self) -> bool:
        """One protocol-level readiness check; True when clients can use the broker."""
        raise NotImplementedError

    def after_ready(self) -> None:
        """Runs once the probe passed (e.g. record a child's pid)."""

    def log_paths(self) -> list[Path]:
        return [self.dir / f"{self.name}.log"]

    # ------------------------------------------------------------------ pidfiles

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    def pidfile(self, role: str) -> Path:
        return self.run_dir / f"{role}.pid"

    def records(self) -> dict[str, PidRecord]:
        recs: dict[str, PidRecord] = {}
        for role in self.roles:
            rec = read_pidfile(self.pidfile(role))
            if rec is not None:
                recs[role] = rec
        return recs

    def live(self) -> dict[str, PidRecord]:
        return {role: rec for role, rec in self.records().items() if rec.alive()}

    def clear_pidfiles(self) -> None:
        for role in self.roles:
            self.pidfile(role).unlink(missing_ok=True)

    def main_record(self) -> PidRecord | None:
        """The process whose RSS/PID is reported (the broker itself)."""
        live = self.live()
        return live.get(self.roles[-1]) or next(iter(live.values()), None)

    # ------------------------------------------------------------------ life cycle

    def fully_running(self) -> bool:
        live = self.live()
        return all(role in live for role in self.roles)

    def check_ports_free(self) -> None:
        for port_name, port in self.spec.ports.items():
            owner = port_owner(port)
            if owner:
                hint = (
                    f" (a system service? `service {self.apt_packages[0]} stop`)"
                    if self.apt_packages
                    else ""
                )
                raise BrokerError(
                    f"port {port} ({port_name}) is already taken by {owner}, which is not a "
                    f"{self.name} started by docker/brokers; stop it first{hint}"
                )

    def start(self) -> None:
        """Start (not wait). Cleans up a partial/stale previous instance first."""
        if self.live():
            self.stop(quiet=True)
        self.clear_pidfiles()
        self.check_ports_free()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.launch()

    def _died(self) -> str | None:
        live = self.live()
        missing = [role for role in self.roles if role not in live and self.pidfile(role).exists()]
        if missing:
            return f"{self.name} process ({', '.join(missing)}) exited during start-up"
        return None

    def wait_ready(self, timeout: float | None = None) -> None:
        limit = self.ready_timeout if timeout is None else timeout
        if not wait_until(self.probe, limit, interval=0.25, abort=self._died):
            raise BrokerError(f"{self.name} not ready after {limit:.0f}s")
        self.after_ready()

    def up(self, timeout: float | None = None) -> UpResult:
        t0 = time.monotonic()
        already = False
        if self.fully_running() and self.probe_quiet():
            already = True
        else:
            self.start()
            self.wait_ready(timeout)
        return self.result(time.monotonic() - t0, already)

    def probe_quiet(self) -> bool:
        try:
            return self.probe()
        except OSError:
            return False

    def result(self, seconds: float, already: bool) -> UpResult:
        live = self.live()
        rss = sum(rss_kib(r.pid) or 0 for r in live.values())
        return UpResult(
            name=self.name,
            pids={role: r.pid for role, r in live.items()},
            ports=dict(self.spec.ports),
            seconds=seconds,
            already_running=already,
            rss_kib=rss,
        )

    def stop(self, *, quiet: bool = False) -> bool:
        """SIGTERM our processes (last role first), SIGKILL after ``stop_timeout``."""
        recs = self.records()
        live = [recs[r] for r in reversed(self.roles) if r in recs and recs[r].alive()]
        if not live:
            self.clear_pidfiles()
            return False
        if not quiet:
            say(self.name, f"stopping pid {' '.join(str(r.pid) for r in live)}")
        self.graceful_stop(live)
        self.clear_pidfiles()
        return True

    def graceful_stop(self, live: list[PidRecord]) -> None:
        # all processes of the broker at once (e.g. RocketMQ's namesrv and proxy, RabbitMQ's
        # beam.smp -- a clean `rabbitmqctl stop` -- and its wrapper shell)
        stop_records(self.name, live, self.stop_timeout)

    def kill9(self) -> list[int]:
        """kill -9 every process of this broker (for fault tests); data stays."""
        live = list(self.live().values())
        for rec in live:
            signal_pid(rec, signal.SIGKILL)
        wait_gone(live, 10)
        return [r.pid for r in live]

    def wipe(self) -> None:
        self.stop()
        if self.dir.exists():
            shutil.rmtree(self.dir)

    def fail_report(self, exc: BaseException) -> str:
        parts = [f"{self.name}: {exc}"]
        for path in self.log_paths():
            parts.append(f"----- last lines of {path}\n{tail(path)}")
        return "\n".join(parts)
