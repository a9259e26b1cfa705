"""Command line of docker/brokers: bring mqkit's real brokers up on this host, no containers.

    docker/brokers up NAME... | all      install if missing, configure, start, wait until ready
    docker/brokers down NAME... | all    stop (SIGTERM, then SIGKILL after a timeout)
    docker/brokers status                state, PIDs, ports and RSS of each broker
    docker/brokers wipe NAME... | all    stop and delete the broker's data (jar caches stay)
    docker/brokers logs NAME [-n N]      last lines of the broker's log(s)
    docker/brokers kill9 NAME            kill -9 the broker's processes (fault tests)
    docker/brokers restart NAME          start again on the same data (after kill9 or not)
    docker/brokers wait NAME             wait until the running broker is ready
    docker/brokers rocketmq-topic TOPIC [--type NORMAL|FIFO|DELAY|TRANSACTION] [--queues N]
    docker/brokers rocketmq-group GROUP [--fifo] [--retries N]
        (both run MQAdminStartup; --via remoting sends the same request without a JVM)

Brokers: redis, rabbitmq, activemq, kafka, rocketmq. Everything (jars, data, pidfiles,
logs) lives in .brokers/ at the repository root, or in $MQKIT_BROKERS_DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from .activemq import ActiveMQ
from .base import Broker, UpResult
from .common import (
    BrokerError,
    BrokerSpec,
    apt_install,
    brokers_dir,
    die,
    in_local_repo,
    load_specs,
    rss_kib,
    say,
    tail,
)
from .kafka import Kafka
from .rabbitmq import RabbitMQ
from .redis import Redis
from .rocketmq import TOPIC_TYPES, RocketMQ, update_group, update_topic

BROKER_CLASSES: dict[str, type[Broker]] = {
    "redis": Redis,
    "rabbitmq": RabbitMQ,
    "activemq": ActiveMQ,
    "kafka": Kafka,
    "rocketmq": RocketMQ,
}
ORDER = list(BROKER_CLASSES)
JVM_BROKERS = ("activemq", "kafka", "rocketmq")
MAVEN_BROKERS = ("kafka", "rocketmq")
START_PRIORITY = ("rocketmq", "kafka", "rabbitmq", "activemq", "redis")


def make(name: str, specs: dict[str, BrokerSpec] | None = None) -> Broker:
    specs = specs or load_specs()
    if name not in BROKER_CLASSES:
        raise BrokerError(f"unknown broker {name!r}; choose from {', '.join(ORDER)} or all")
    return BROKER_CLASSES[name](specs[name])


def expand(names: Sequence[str]) -> list[str]:
    if not names or "all" in names:
        return list(ORDER)
    out: list[str] = []
    for n in names:
        if n not in BROKER_CLASSES:
            raise BrokerError(f"unknown broker {n!r}; choose from {', '.join(ORDER)} or all")
        if n not in out:
            out.append(n)
    return out


@contextlib.contextmanager
def runner_lock() -> Iterator[None]:
    """One runner at a time changes brokers (two pytest sessions may call `up` at once)."""
    root = brokers_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fmt_ports(ports: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in ports.items())


def print_table(results: Sequence[UpResult]) -> None:
    print(f"{'broker':<9} {'took':>7}  {'RSS':>8}  {'pids':<28} ports")
    for r in results:
        took = "running" if r.already_running else f"{r.seconds:.1f}s"
        pids = " ".join(f"{k}={v}" for k, v in r.pids.items())
        print(f"{r.name:<9} {took:>7}  {r.rss_kib // 1024:>5} MiB  {pids:<28} {fmt_ports(r.ports)}")


# ----------------------------------------------------------------------------- up


def cmd_up(names: Sequence[str], timeout: float | None) -> int:
    specs = load_specs()
    brokers = [make(n, specs) for n in expand(names)]
    results: dict[str, UpResult] = {}
    failures: dict[str, str] = {}
    todo: list[Broker] = []
    for b in brokers:
        if b.fully_running() and b.probe_quiet():
            say(b.name, "already running and ready")
            results[b.name] = b.result(0.0, True)
        else:
            todo.append(b)
    if not todo:
        print_table([results[b.name] for b in brokers])
        return 0

    packages = [p for b in todo for p in b.apt_packages]
    if any(b.name in JVM_BROKERS for b in todo) and shutil.which("java") is None:
        packages.append("default-jre-headless")
    if any(b.name in MAVEN_BROKERS for b in todo) and shutil.which("mvn") is None:
        packages.append("maven")
    apt_done = threading.Event()
    apt_error: list[str] = []
    # two Maven runs must not download into ~/.m2 at the same time; when it already holds
    # the jars (a machine that ran this before) they may copy them out in parallel
    warm = all(in_local_repo(a) for b in todo for a in b.maven_artifacts())
    maven_lock: contextlib.AbstractContextManager[object] = (
        contextlib.nullcontext() if warm else threading.Lock()
    )

    def apt_worker() -> None:
        try:
            apt_install(packages)
        except Exception as exc:  # reported by every broker that waits for apt
            apt_error.append(str(exc))
        finally:
            apt_done.set()

    def needs_apt(b: Broker) -> bool:
        if b.apt_packages:
            return True
        return (b.name in JVM_BROKERS and shutil.which("java") is None) or (
            b.name in MAVEN_BROKERS and shutil.which("mvn") is None
        )

    def broker_worker(b: Broker) -> None:
        t0 = time.monotonic()
        try:
            if needs_apt(b):
                apt_done.wait()
                if apt_error:
                    raise BrokerError(apt_error[0])
            if b.name in MAVEN_BROKERS:
                with maven_lock:
                    b.prepare()
            else:
                b.prepare()
            say(b.name, "starting")
            b.start()
            b.wait_ready(timeout)
            results[b.name] = b.result(time.monotonic() - t0, False)
            say(b.name, f"ready in {time.monotonic() - t0:.1f}s")
        except Exception as exc:  # any failure must fail `up`, with the log
            failures[b.name] = b.fail_report(exc)
            detail = str(exc) if isinstance(exc, BrokerError) else repr(exc)
            say(b.name, f"FAILED: {detail}")

    # slowest first: RocketMQ takes the Maven lock before Kafka
    slow_first = sorted(todo, key=lambda b: START_PRIORITY.index(b.name))
    threads = [threading.Thread(target=apt_worker, daemon=True)]
    threads += [threading.Thread(target=broker_worker, args=(b,), daemon=True) for b in slow_first]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if results:
        print_table([results[b.name] for b in brokers if b.name in results])
    for name in ORDER:
        if name in failures:
            print(f"\n===== {name} failed\n{failures[name]}", file=sys.stderr)
    if failures:
        return die(f"broker(s) not ready: {', '.join(failures)}")
    return 0


# ----------------------------------------------------------------------------- others


def cmd_down(names: Sequence[str]) -> int:
    brokers = [make(n) for n in expand(names)]

    def stop(b: Broker) -> None:
        t0 = time.monotonic()
        if b.stop():
            say(b.name, f"stopped in {time.monotonic() - t0:.1f}s")
        else:
            say(b.name, "was not running")

    threads = [threading.Thread(target=stop, args=(b,)) for b in brokers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


def status_rows() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    specs = load_specs()
    for name in ORDER:
        b = make(name, specs)
        live = b.live()
        if not live:
            state = "stopped"
        elif not b.fully_running():
            state = "partial"
        else:
            state = "ready" if b.probe_quiet() else "not-ready"
        rows.append(
            {
                "name": name,
                "state": state,
                "version": b.spec.version,
                "pids": {role: rec.pid for role, rec in live.items()},
                "ports": dict(b.spec.ports),
                "rss_kib": sum(rss_kib(r.pid) or 0 for r in live.values()),
                "url": b.spec.url,
            }
        )
    return rows


def cmd_status(as_json: bool) -> int:
    rows = status_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'broker':<9} {'version':<8} {'state':<9} {'RSS':>8}  {'pids':<28} url")
    for r in rows:
        pids = r["pids"]
        assert isinstance(pids, dict)
        rss = r["rss_kib"]
        assert isinstance(rss, int)
        pid_s = " ".join(f"{k}={v}" for k, v in pids.items()) or "-"
        print(
            f"{r['name']!s:<9} {r['version']!s:<8} {r['state']!s:<9} {rss // 1024:>5} MiB  "
            f"{pid_s:<28} {r['url']}"
        )
    print(f"data: {brokers_dir()}")
    return 0


def cmd_wipe(names: Sequence[str]) -> int:
    for name in expand(names):
        b = make(name)
        b.wipe()
        say(name, f"stopped and deleted {b.dir}")
    return 0


def cmd_logs(name: str, lines: int) -> int:
    b = make(name)
    for path in b.log_paths():
        print(f"===== {path}")
        print(tail(path, lines))
    return 0


def cmd_kill9(name: str) -> int:
    b = make(name)
    pids = b.kill9()
    if not pids:
        return die(f"{name} is not running (nothing killed)")
    say(name, f"kill -9 {' '.join(map(str, pids))}")
    return 0


def cmd_restart(name: str, timeout: float | None) -> int:
    b = make(name)
    t0 = time.monotonic()
    try:
        b.stop()
        b.prepare()
        b.start()
        b.wait_ready(timeout)
    except (BrokerError, OSError) as exc:
        print(b.fail_report(exc), file=sys.stderr)
        return 1
    print_table([b.result(time.monotonic() - t0, False)])
    return 0


def cmd_wait(name: str, timeout: float | None) -> int:
    b = make(name)
    if not b.live():
        return die(f"{name} is not running: docker/brokers up {name}")
    try:
        b.wait_ready(timeout)
    except (BrokerError, OSError) as exc:
        print(b.fail_report(exc), file=sys.stderr)
        return 1
    say(name, "ready")
    return 0


def cmd_rocketmq_topic(topic: str, topic_type: str, queues: int, via: str) -> int:
    print(update_topic(topic, topic_type, queues, via=via))
    return 0


def cmd_rocketmq_group(group: str, fifo: bool, retries: int, via: str) -> int:
    print(update_group(group, fifo=fifo, retries=retries, via=via))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="docker/brokers",
        description="Run mqkit's real brokers on this host (no containers).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="install, start and wait until ready")
    up.add_argument("names", nargs="+")
    up.add_argument("--timeout", type=float, default=None, help="readiness timeout, seconds")
    down = sub.add_parser("down", help="stop")
    down.add_argument("names", nargs="+")
    st = sub.add_parser("status", help="show state, PIDs, ports, RSS")
    st.add_argument("--json", action="store_true")
    wipe = sub.add_parser("wipe", help="stop and delete data")
    wipe.add_argument("names", nargs="+")
    logs = sub.add_parser("logs", help="show the end of a broker's log")
    logs.add_argument("name")
    logs.add_argument("-n", "--lines", type=int, default=100)
    k9 = sub.add_parser("kill9", help="kill -9 a broker (fault tests)")
    k9.add_argument("name")
    rs = sub.add_parser("restart", help="start again on the same data")
    rs.add_argument("name")
    rs.add_argument("--timeout", type=float, default=None)
    wt = sub.add_parser("wait", help="wait until a running broker is ready")
    wt.add_argument("name")
    wt.add_argument("--timeout", type=float, default=None)
    rt = sub.add_parser("rocketmq-topic", help="create/update a RocketMQ topic")
    rt.add_argument("topic")
    rt.add_argument("--type", default="NORMAL", choices=TOPIC_TYPES, type=str.upper)
    rt.add_argument("--queues", type=int, default=4)
    rt.add_argument(
        "--via",
        choices=("admin", "remoting"),
        default="admin",
        help="admin: MQAdminStartup (default); remoting: the same request, no JVM",
    )
    rg = sub.add_parser("rocketmq-group", help="create/update a RocketMQ consumer group")
    rg.add_argument("group")
    rg.add_argument("--fifo", action="store_true", help="consume orderly (FIFO topics)")
    rg.add_argument("--retries", type=int, default=16, help="max retries before %%DLQ%%")
    rg.add_argument("--via", choices=("admin", "remoting"), default="admin")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.cmd == "status":
            return cmd_status(args.json)
        if args.cmd == "logs":
            return cmd_logs(args.name, args.lines)
        if args.cmd == "rocketmq-topic":
            return cmd_rocketmq_topic(args.topic, args.type, args.queues, args.via)
        if args.cmd == "rocketmq-group":
            return cmd_rocketmq_group(args.group, args.fifo, args.retries, args.via)
        with runner_lock():
            if args.cmd == "up":
                return cmd_up(args.names, args.timeout)
            if args.cmd == "down":
                return cmd_down(args.names)
            if args.cmd == "wipe":
                return cmd_wipe(args.names)
            if args.cmd == "kill9":
                return cmd_kill9(args.name)
            if args.cmd == "restart":
                return cmd_restart(args.name, args.timeout)
            if args.cmd == "wait":
                return cmd_wait(args.name, args.timeout)
    except (BrokerError, OSError) as exc:
        return die(f"error: {exc}")
    except KeyboardInterrupt:
        return die("interrupted", 130)
    return die(f"unknown command {args.cmd}", 2)
