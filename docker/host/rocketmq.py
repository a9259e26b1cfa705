"""RocketMQ 5.x: a namesrv JVM plus a proxy JVM in local mode (the broker runs inside it).

Jars come from Maven Central (rocketmq-namesrv, rocketmq-proxy, rocketmq-tools). Admin
operations (create a topic, create a consumer group) are importable, so an adapter or a
test can call them directly (standard library only, no JVM with the default
``via="remoting"``; ``via="admin"`` wraps ``MQAdminStartup`` updateTopic/updateSubGroup)::

    import sys; sys.path.insert(0, "docker")
    from host.rocketmq import update_topic, update_group
    update_topic("orders", "FIFO")                 # NORMAL | FIFO | DELAY | TRANSACTION
    update_group("billing", fifo=True, retries=5)  # FIFO topics need an orderly group

The same from the shell: ``docker/brokers rocketmq-topic orders --type FIFO`` and
``docker/brokers rocketmq-group billing --fifo --retries 5``.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .base import Broker
from .common import (
    DOCKER_DIR,
    HOST,
    JAVA17_OPENS,
    BrokerError,
    BrokerSpec,
    MavenArtifact,
    brokers_dir,
    java_bin,
    load_specs,
    maven_libs,
    recv_exact,
    spawn,
    tcp_open,
    write_pidfile,
)

TOPIC_TYPES = ("NORMAL", "FIFO", "DELAY", "TRANSACTION")
READY_TOPIC = "mqkit_ready"

NAMESRV_OPTS = ["-Xms128m", "-Xmx256m"]
PROXY_OPTS = ["-Xms256m", "-Xmx768m", "-XX:MaxDirectMemorySize=512m"]
ADMIN_OPTS = ["-Xms32m", "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
COMMON_OPTS = [
    "-XX:+UseG1GC",
    "-XX:G1HeapRegionSize=4m",
    "-XX:-OmitStackTraceInFastThrow",
    "-XX:-UseLargePages",
    "-Djava.awt.headless=true",
]


def artifacts(spec: BrokerSpec) -> list[MavenArtifact]:
    v = spec.version
    return [
        MavenArtifact("org.apache.rocketmq", "rocketmq-proxy", v),
        MavenArtifact("org.apache.rocketmq", "rocketmq-namesrv", v),
        MavenArtifact("org.apache.rocketmq", "rocketmq-tools", v),
    ]


def libs_dir(spec: BrokerSpec) -> Path:
    """Resolve (once, cached under .brokers/cache) the RocketMQ jars."""
    return maven_libs(spec.name, f"rocketmq-{spec.version}", artifacts(spec))


def _spec() -> BrokerSpec:
    return load_specs()["rocketmq"]


def _admin(spec: BrokerSpec, *args: str, timeout: float = 60) -> tuple[bool, str]:
    """Run MQAdminStartup; it exits 0 even on failure, so success is read from its output.

    The tool prints its answer within a second, then spends ~5 s shutting its client down:
    once the answer is printed (or the process ends) we stop waiting and end it.
    """
    home = brokers_dir() / spec.name / "admin"
    home.mkdir(parents=True, exist_ok=True)
    cmd = [
        java_bin(),
        *ADMIN_OPTS,
        *JAVA17_OPENS,
        f"-Duser.home={home}",
        "-cp",
        f"{libs_dir(spec)}/*",
        "org.apache.rocketmq.tools.command.MQAdminStartup",
        *args,
    ]
    env = dict(os.environ, ROCKETMQ_HOME=str(home))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    )
    assert proc.stdout is not None
    lines: list[str] = []
    answered = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            low = line.lower()
            if "success" in low or "exception" in low or "failed" in low:
                answered.set()
        answered.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    answered.wait(timeout)
    try:
        proc.wait(0.5)  # the line after the answer (the config) comes right away
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    t.join(2)
    out = "\n".join(lines).strip()
    ok = "success" in out.lower() and "exception" not in out.lower()
    return ok, out


# ----------------------------------------------------------------------------- remoting
# RocketMQ's remoting protocol (the one MQAdminStartup speaks), just enough to create
# topics and groups without starting a JVM: a frame is int32 length, int32 header length
# (high byte: serialize type 0 = JSON), a JSON header, then the body.

REQUEST_UPDATE_AND_CREATE_TOPIC = 17
REQUEST_GET_ROUTEINFO_BY_TOPIC = 105
REQUEST_GET_BROKER_CLUSTER_INFO = 106
REQUEST_UPDATE_AND_CREATE_SUBSCRIPTIONGROUP = 200
REMOTING_VERSION = 479  # MQVersion.CURRENT_VERSION of the pinned RocketMQ (V5_3_3)
PERM_READ_WRITE = 6
_opaque = itertools.count(1)


def remoting_call(
    port: int,
    code: int,
    ext_fields: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    host: str = HOST,
    timeout: float = 10.0,
) -> tuple[int, str, bytes]:
    """Send one remoting request; returns (response code, remark, body). Code 0 = success."""
    header = json.dumps(
        {
            "code": code,
            "language": "PYTHON",
            "version": REMOTING_VERSION,
            "opaque": next(_opaque),
            "flag": 0,
            "extFields": ext_fields or {},
            "serializeTypeCurrentRPC": "JSON",
        }
    ).encode()
    frame = struct.pack(">ii", 4 + len(header) + len(body), len(header)) + header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(frame)
        (length,) = struct.unpack(">i", recv_exact(sock, 4))
        data = recv_exact(sock, length)
    (hlen,) = struct.unpack(">i", data[:4])
    hlen &= 0xFFFFFF
    resp: dict[str, Any] = json.loads(data[4 : 4 + hlen])
    return int(resp.get("code", -1)), str(resp.get("remark") or ""), data[4 + hlen :]


def remoting_update_topic(spec: BrokerSpec, topic: str, topic_type: str, queues: int) -> str:
    code, remark, _ = remoting_call(
        spec.ports["broker"],
        REQUEST_UPDATE_AND_CREATE_TOPIC,
        {
            "topic": topic,
            "defaultTopic": "TBW102",
            "readQueueNums": str(queues),
            "writeQueueNums": str(queues),
            "perm": str(PERM_READ_WRITE),
            "topicFilterType": "SINGLE_TAG",
            "topicSysFlag": "0",
            "order": "false",
            "attributes": f"+message.type={topic_type}",
            "force": "false",
        },
    )
    if code != 0:
        raise BrokerError(f"create topic {topic} failed: code {code} {remark}")
    return f"create topic to {HOST}:{spec.ports['broker']} success."


def remoting_update_group(spec: BrokerSpec, group: str, fifo: bool, retries: int) -> str:
    config = {
        "groupName": group,
        "consumeEnable": True,
        "consumeFromMinEnable": False,
        "consumeBroadcastEnable": False,
        "consumeMessageOrderly": fifo,
        "retryQueueNums": 1,
        "retryMaxTimes": retries,
        "brokerId": 0,
        "whichBrokerWhenConsumeSlowly": 1,
        "notifyConsumerIdsChangedEnable": True,
        "groupSysFlag": 0,
        "consumeTimeoutMinute": 15,
        "attributes": {},
    }
    code, remark, _ = remoting_call(
        spec.ports["broker"],
        REQUEST_UPDATE_AND_CREATE_SUBSCRIPTIONGROUP,
        {},
        json.dumps(config).encode(),
    )
    if code != 0:
        raise BrokerError(f"create group {group} failed: code {code} {remark}")
    return f"create subscription group to {HOST}:{spec.ports['broker']} success."


def topic_routable(topic: str, spec: BrokerSpec | None = None) -> bool:
    """True when namesrv has a route for ``topic`` (what the proxy asks before a send)."""
    spec = spec or _spec()
    code, _, _ = remoting_call(
        spec.ports["namesrv"], REQUEST_GET_ROUTEINFO_BY_TOPIC, {"topic": topic}
    )
    return code == 0


def broker_registered(spec: BrokerSpec | None = None) -> bool:
    """True when namesrv lists our broker (until then, created topics cannot be routed)."""
    spec = spec or _spec()
    code, _, body = remoting_call(spec.ports["namesrv"], REQUEST_GET_BROKER_CLUSTER_INFO)
    return code == 0 and f"{HOST}:{spec.ports['broker']}".encode() in body


# ----------------------------------------------------------------------------- admin API


def update_topic(
    topic: str,
    topic_type: str = "NORMAL",
    queues: int = 4,
    *,
    via: str = "remoting",
    spec: BrokerSpec | None = None,
) -> str:
    """Create or update ``topic`` with message type NORMAL, FIFO, DELAY or TRANSACTION.

    ``via="remoting"`` (default) speaks RocketMQ's remoting protocol to the broker (a few
    ms); ``via="admin"`` runs MQAdminStartup updateTopic (a JVM, ~1 s). Both send the same
    request. Raises BrokerError unless the broker reports success.
    """
    spec = spec or _spec()
    topic_type = topic_type.upper()
    if topic_type not in TOPIC_TYPES:
        raise BrokerError(f"topic type must be one of {', '.join(TOPIC_TYPES)}")
    if via == "remoting":
        return remoting_update_topic(spec, topic, topic_type, queues)
    ok, out = _admin(
        spec,
        "updateTopic",
        "-n", f"{HOST}:{spec.ports['namesrv']}",
        "-c", str(spec.raw.get("cluster", "DefaultCluster")),
        "-t", topic,
        "-r", str(queues),
        "-w", str(queues),
        "-a", f"+message.type={topic_type}",
    )  # fmt: skip
    if not ok:
        raise BrokerError(f"updateTopic {topic} failed:\n{out}")
    return out


def update_group(
    group: str,
    *,
    fifo: bool = False,
    retries: int = 16,
    via: str = "remoting",
    spec: BrokerSpec | None = None,
) -> str:
    """Create or update consumer ``group``: ``fifo`` consumes orderly (needed for FIFO
    topics), ``retries`` is the max redeliveries before %DLQ%<group>. ``via`` as in
    :func:`update_topic`. Raises BrokerError unless the broker reports success."""
    spec = spec or _spec()
    if via == "remoting":
        return remoting_update_group(spec, group, fifo, retries)
    ok, out = _admin(
        spec,
        "updateSubGroup",
        "-n", f"{HOST}:{spec.ports['namesrv']}",
        "-c", str(spec.raw.get("cluster", "DefaultCluster")),
        "-g", group,
        "-o", "true" if fifo else "false",
        "-r", str(retries),
    )  # fmt: skip
    if not ok:
        raise BrokerError(f"updateSubGroup {group} failed:\n{out}")
    return out


class RocketMQ(Broker):
    roles = ("namesrv", "proxy")
    ready_timeout = 180.0
    stop_timeout = 40.0

    def maven_artifacts(self) -> list[MavenArtifact]:
        return artifacts(self.spec)

    def prepare(self) -> None:
        self.libs = libs_dir(self.spec)

    def log_paths(self) -> list[Path]:
        return [self.dir / "namesrv.log", self.dir / "proxy.log"]

    def _java(self, role: str, opts: list[str], main: str, *args: str) -> list[str]:
        home = self.dir / role
        return [
            java_bin(),
            *opts,
            *COMMON_OPTS,
            *JAVA17_OPENS,
            f"-Duser.home={home}",
            f"-Djava.io.tmpdir={self.dir / 'tmp'}",
            f"-Dmqkit.broker=rocketmq-{role}",
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    def write_configs(self) -> tuple[Path, Path, Path]:
        d = self.dir
        ns = self.spec.ports["namesrv"]
        namesrv_conf = d / "namesrv.properties"
        namesrv_conf.write_text(f"listenPort={ns}\nbindAddress={HOST}\n")
        broker_conf = d / "broker.conf"
        store = d / "store"
        shared = (DOCKER_DIR / "rocketmq" / "broker.conf").read_text()
        broker_conf.write_text(
            shared
            + "\n# host runner additions\n"
            + f"namesrvAddr={HOST}:{ns}\n"
            + f"storePathRootDir={store}\n"
            + f"storePathCommitLog={store / 'commitlog'}\n"
            + f"bindAddress={HOST}\n"
        )
        proxy = json.loads((DOCKER_DIR / "rocketmq" / "rmq-proxy.json").read_text())
        proxy["namesrvAddr"] = f"{HOST}:{ns}"
        proxy_conf = d / "rmq-proxy.json"
        proxy_conf.write_text(json.dumps(proxy, indent=2) + "\n")
        return namesrv_conf, broker_conf, proxy_conf

    def launch(self) -> None:
        if not hasattr(self, "libs"):
            self.prepare()
        d = self.dir
        for sub in ("namesrv", "proxy", "store", "tmp", "home"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        namesrv_conf, broker_conf, proxy_conf = self.write_configs()
        env = {"ROCKETMQ_HOME": str(d / "home")}
        ns = spawn(
            self._java(
                "namesrv", NAMESRV_OPTS, "org.apache.rocketmq.namesrv.NamesrvStartup",
                "-c", str(namesrv_conf),
            ),
            d / "namesrv.log",
            env=env,
            cwd=d,
        )  # fmt: skip
        write_pidfile(self.pidfile("namesrv"), ns.pid)
        # the embedded broker registers with namesrv at start: give namesrv a head start
        port = self.spec.ports["namesrv"]
        for _ in range(200):
            if tcp_open(port, timeout=0.2) or ns.poll() is not None:
                break
            time.sleep(0.1)
        proxy = spawn(
            self._java(
                "proxy", PROXY_OPTS, "org.apache.rocketmq.proxy.ProxyStartup",
                "-pm", "local",
                "-bc", str(broker_conf),
                "-pc", str(proxy_conf),
                "-n", f"{HOST}:{port}",
            ),
            d / "proxy.log",
            env=env,
            cwd=d,
        )  # fmt: skip
        write_pidfile(self.pidfile("proxy"), proxy.pid)

    def probe(self) -> bool:
        ports = self.spec.ports
        if not all(
            tcp_open(ports[p]) for p in ("namesrv", "broker", "proxy_grpc", "proxy_remoting")
        ):
            return False
        try:
            # the broker must be registered with namesrv before a topic is created, or the
            # topic's incremental registration is refused until the next full one (30 s)
            if not broker_registered(self.spec):
                return False
            update_topic(READY_TOPIC, spec=self.spec)
            return topic_routable(READY_TOPIC, self.spec)
        except (BrokerError, ConnectionError, ValueError):
            return False
