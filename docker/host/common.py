"""Shared machinery of the host runner: paths, specs, processes, probes, installs.

Standard library only: this runs before any ``pip install``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOCKER_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = DOCKER_DIR.parent
VERSIONS_FILE = DOCKER_DIR / "versions.json"
HOST = "127.0.0.1"
LOG_TAIL_LINES = 40

_print_lock = threading.Lock()
_t0 = time.monotonic()


class BrokerError(Exception):
    """A broker could not be installed, started, probed or stopped."""


def say(name: str, msg: str) -> None:
    """Print one progress line, prefixed with the broker name and elapsed seconds."""
    with _print_lock:
        print(f"[{time.monotonic() - _t0:6.1f}s] {name:<9} {msg}", flush=True)


def brokers_dir() -> Path:
    """The one git-ignored folder for jars, data, pidfiles and logs."""
    env = os.environ.get("MQKIT_BROKERS_DIR")
    return Path(env).resolve() if env else REPO_ROOT / ".brokers"


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class BrokerSpec:
    """One broker's entry in docker/versions.json."""

    name: str
    version: str
    source: str
    image: str
    ports: Mapping[str, int]
    url: str
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def main_port(self) -> int:
        """The port clients of mqkit connect to (the one in the URL)."""
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])


def load_specs(path: Path = VERSIONS_FILE) -> dict[str, BrokerSpec]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    specs: dict[str, BrokerSpec] = {}
    for name, entry in data.items():
        if name.startswith("_"):
            continue
        specs[name] = BrokerSpec(
            name=name,
            version=str(entry["version"]),
            source=str(entry["source"]),
            image=str(entry["image"]),
            ports={k: int(v) for k, v in entry["ports"].items()},
            url=str(entry["url"]),
            raw=entry,
        )
    return specs


# --------------------------------------------------------------------------- processes


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces
    rest = raw[raw.rfind(")") + 2 :].split()
    return [str(pid), "comm", *rest]


def proc_start_time(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    fields = _stat_fields(pid)
    return fields[21] if fields else None


def proc_alive(pid: int, start_time: str | None = None) -> bool:
    """True when PID runs (not a zombie) and, if given, started at ``start_time``.

    The start time guards against PID reuse: we only ever signal the process we started.
    """
    fields = _stat_fields(pid)
    if fields is None or fields[2] in ("Z", "X"):
        return False
    return start_time is None or fields[21] == start_time


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


@dataclass(frozen=True)
class PidRecord:
    pid: int
    start_time: str

    def alive(self) -> bool:
        return proc_alive(self.pid, self.start_time)


def write_pidfile(path: Path, pid: int) -> PidRecord:
    start = proc_start_time(pid)
    if start is None:
        raise BrokerError(f"process {pid} exited right after start")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid} {start}\n", encoding="ascii")
    tmp.replace(path)
    return PidRecord(pid, start)


def read_pidfile(path: Path) -> PidRecord | None:
    try:
        parts = path.read_text(encoding="ascii").split()
        return PidRecord(int(parts[0]), parts[1])
    except (OSError, ValueError, IndexError):
        return None


def spawn(
    cmd: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a detached process (own session) whose stdout+stderr append to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with log_path.open("ab") as log:
        log.write(f"\n===== {time.strftime('%F %T')} start: {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            close_fds=True,
        )


def wait_gone(recs: Sequence[PidRecord], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(r.alive() for r in recs):
            return True
        time.sleep(0.1)
    return not any(r.alive() for r in recs)


def signal_pid(rec: PidRecord, sig: int) -> bool:
    """Send ``sig`` to our process only (PID and start time must both match)."""
    if not rec.alive():
        return False
    try:
        os.kill(rec.pid, sig)
    except ProcessLookupError:
        return False
    return True


def stop_records(name: str, recs: Sequence[PidRecord], timeout: float) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL whatever is left."""
    live = [r for r in recs if r.alive()]
    if not live:
        return
    for r in live:
        signal_pid(r, signal.SIGTERM)
    if wait_gone(live, timeout):
        return
    for r in live:
        if signal_pid(r, signal.SIGKILL):
            say(name, f"pid {r.pid} ignored SIGTERM for {timeout:.0f}s: sent SIGKILL")
    wait_gone(live, 10)


# --------------------------------------------------------------------------- probes


def tcp_open(port: int, host: str = HOST, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf += chunk
    return bytes(buf)


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes


def listening_pid(port: int) -> int | None:
    """PID of the process listening on TCP ``port`` (any address), or None."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(proc.name)
        except OSError:
            continue
    return -1


def port_owner(port: int) -> str | None:
    """Describe the process listening on TCP ``port`` (best effort), or None."""
    pid = listening_pid(port)
    if pid is None:
        return None
    if pid < 0:
        return "an unknown process"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        cmd = "?"
    return f"pid {pid} ({cmd.strip()[:160]})"


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(data.splitlines()[-lines:])


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.25,
    abort: Callable[[], str | None] | None = None,
) -> bool:
    """Poll ``check`` until it returns True or ``timeout`` passes.

    ``abort`` may return a reason to stop early (e.g. the process died): it raises BrokerError.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except OSError:
            pass
        if abort is not None:
            reason = abort()
            if reason:
                raise BrokerError(reason)
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --------------------------------------------------------------------------- installs


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        list(cmd),
        env=full_env,
        cwd=str(cwd) if cwd else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def deb_installed(pkg: str) -> bool:
    res = run(["dpkg-query", "-W", "-f=${Status}", pkg])
    return res.returncode == 0 and "install ok installed" in res.stdout


def _privileged(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return cmd
    if shutil.which("sudo"):
        return ["sudo", "-n", *cmd]
    raise BrokerError(f"need root to run: {' '.join(cmd)}")


def _apt_lists_fresh() -> bool:
    lists = Path("/var/lib/apt/lists")
    newest = max((p.stat().st_mtime for p in lists.glob("*_Packages*")), default=0.0)
    return time.time() - newest < 24 * 3600


_POLICY_RC = Path("/usr/sbin/policy-rc.d")
_POLICY_RC_BODY = "#!/bin/sh\n# written by mqkit docker/brokers during apt-get install\nexit 101\n"


def apt_install(packages: Sequence[str]) -> None:
    """Install Debian packages in ONE apt-get call, never letting them start their services.

    A temporary /usr/sbin/policy-rc.d that exits 101 stops invoke-rc.d from starting the
    redis-server / rabbitmq-server / activemq system services, which would grab our ports.
    """
    missing = [p for p in packages if not deb_installed(p)]
    if not missing:
        return
    say("apt", f"installing {' '.join(missing)}")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    wrote_policy = False
    if os.geteuid() == 0 and not _POLICY_RC.exists():
        _POLICY_RC.write_text(_POLICY_RC_BODY)
        _POLICY_RC.chmod(0o755)
        wrote_policy = True
    try:
        if not _apt_lists_fresh():
            say("apt", "apt-get update")
            run(_privileged(["apt-get", "update", "-q"]), env=env)
        install = _privileged(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
        )
        res = run(install, env=env, timeout=1200)
        if res.returncode != 0:
            say("apt", "install failed; running apt-get update and retrying once")
            run(_privileged(["apt-get", "update", "-q"]), env=env)
            res = run(install, env=env, timeout=1200)
        if res.returncode != 0:
            raise BrokerError(
                f"apt-get install {' '.join(missing)} failed:\n{res.stdout[-3000:]}{res.stderr}"
            )
    finally:
        if wrote_policy and _POLICY_RC.read_text() == _POLICY_RC_BODY:
            _POLICY_RC.unlink()
    say("apt", "installed")


def java_bin() -> str:
    java = shutil.which("java")
    if java is None:
        raise BrokerError("java not found (apt-get install default-jre-headless)")
    return java


JAVA17_OPENS = [
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.security=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
]


@dataclass(frozen=True)
class MavenArtifact:
    group: str
    artifact: str
    version: str

    def xml(self) -> str:
        return (
            f"<dependency><groupId>{self.group}</groupId>"
            f"<artifactId>{self.artifact}</artifactId>"
            f"<version>{self.version}</version></dependency>"
        )


def in_local_repo(artifact: MavenArtifact) -> bool:
    """True when ~/.m2 already holds the artifact's jar (then Maven downloads nothing)."""
    repo = Path.home() / ".m2" / "repository"
    a = artifact
    jar = f"{a.artifact}-{a.version}.jar"
    return (repo / a.group.replace(".", "/") / a.artifact / a.version / jar).is_file()


DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies"


def maven_libs(name: str, key: str, artifacts: Sequence[MavenArtifact]) -> Path:
    """Resolve ``artifacts`` with their runtime dependencies into .brokers/cache/KEY/libs.

    A throw-away pom plus maven-dependency-plugin copy-dependencies; ~/.m2 is reused. The
    folder is complete once the ``.complete`` marker exists, so a later ``up`` skips Maven.
    """
    cache = brokers_dir() / "cache" / key
    libs = cache / "libs"
    marker = cache / ".complete"
    if marker.exists() and any(libs.glob("*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("mvn not found (apt-get install maven)")
    say(name, f"resolving jars from Maven Central into {libs}")
    t0 = time.monotonic()
    if libs.exists():
        shutil.rmtree(libs)
    cache.mkdir(parents=True, exist_ok=True)
    deps = "\n    ".join(a.xml() for a in artifacts)
    (cache / "pom.xml").write_text(
        f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>mqkit.brokers</groupId><artifactId>{key}</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    {deps}
  </dependencies>
</project>
""",
        encoding="utf-8",
    )
    res = run(
        [
            mvn,
            "-B",
            "-q",
            DEPENDENCY_PLUGIN,
            "-DincludeScope=runtime",
            f"-DoutputDirectory={libs}",
        ],
        cwd=cache,
        timeout=1200,
    )
    if res.returncode != 0 or not any(libs.glob("*.jar")):
        raise BrokerError(f"maven resolution of {key} failed:\n{res.stdout[-4000:]}{res.stderr}")
    jars = sorted(p.name for p in libs.glob("*.jar"))
    marker.write_text("\n".join(jars) + "\n")
    say(name, f"{len(jars)} jars resolved in {time.monotonic() - t0:.1f}s")
    return libs


def die(msg: str, code: int = 1) -> int:
    print(msg, file=sys.stderr, flush=True)
    return code
