"""Kafka 4.x, one KRaft node (broker + controller in one JVM), jars from Maven Central."""

from __future__ import annotations

import base64
import os
import socket
import struct

from .base import Broker
from .common import (
    HOST,
    BrokerError,
    MavenArtifact,
    java_bin,
    maven_libs,
    recv_exact,
    run,
    spawn,
    write_pidfile,
)

LOG4J_VERSION = "2.25.3"
SLF4J_VERSION = "2.0.17"

LOG4J2_PROPERTIES = """\
# written by docker/brokers: console only, the runner captures it in kafka.log
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""

JVM_OPTS = [
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
]


def _kafka_request(sock: socket.socket, api_key: int, version: int, body: bytes) -> bytes:
    client = b"mqkit-brokers"
    header = struct.pack(">hhih", api_key, version, 7, len(client)) + client
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    resp = recv_exact(sock, size)
    return resp[4:]  # drop the correlation id


def kafka_probe(port: int, timeout: float = 3.0) -> bool:
    """ApiVersions, then Metadata: ready once the broker lists itself (it is unfenced)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        resp = _kafka_request(sock, 18, 0, b"")  # ApiVersions v0
        (error,) = struct.unpack_from(">h", resp, 0)
        if error != 0:
            return False
        (count,) = struct.unpack_from(">i", resp, 2)
        versions = {}
        for i in range(count):
            key, lo, hi = struct.unpack_from(">hhh", resp, 6 + 6 * i)
            versions[key] = (lo, hi)
        lo, hi = versions.get(3, (0, 0))
        version = max(lo, 4)
        if version > min(hi, 8):  # only the non-flexible v4..v8 encoding is spoken here
            return False
        body = struct.pack(">i", -1) + (b"\x01" if version >= 4 else b"")
        meta = _kafka_request(sock, 3, version, body)
        (brokers,) = struct.unpack_from(">i", meta, 4)  # after throttle_time_ms
        return int(brokers) > 0


def new_cluster_id() -> str:
    while True:
        cid = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class Kafka(Broker):
    ready_timeout = 120.0
    stop_timeout = 40.0

    @property
    def port(self) -> int:
        return self.spec.ports["broker"]

    @property
    def controller_port(self) -> int:
        return self.spec.ports["controller"]

    def maven_artifacts(self) -> list[MavenArtifact]:
        # Kafka's POMs leave the logging backend out: log4j2 behind slf4j 2.x
        return [
            MavenArtifact("org.apache.kafka", "kafka_2.13", self.spec.version),
            MavenArtifact("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
            MavenArtifact("org.apache.logging.log4j", "log4j-slf4j2-impl", LOG4J_VERSION),
            MavenArtifact("org.slf4j", "slf4j-api", SLF4J_VERSION),
        ]

    def prepare(self) -> None:
        self.libs = maven_libs(self.name, f"kafka-{self.spec.version}", self.maven_artifacts())

    def server_properties(self) -> str:
        settings: dict[str, str] = {str(k): str(v) for k, v in self.spec.raw["settings"].items()}
        settings.update(
            {
                "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:"
                f"{self.controller_port}",
                "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:"
                f"{self.controller_port}",
                "controller.quorum.bootstrap.servers": f"{HOST}:{self.controller_port}",
                "log.dirs": str(self.dir / "data"),
            }
        )
        lines = ["# written by docker/brokers from docker/versions.json"]
        lines += [f"{k}={v}" for k, v in settings.items()]
        return "\n".join(lines) + "\n"

    def java(self, main: str, *args: str) -> list[str]:
        return [
            java_bin(),
            *JVM_OPTS,
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            f"-Djava.io.tmpdir={self.dir / 'tmp'}",
            "-Dmqkit.broker=kafka",
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    def launch(self) -> None:
        if not hasattr(self, "libs"):
            self.prepare()
        d = self.dir
        (d / "data").mkdir(parents=True, exist_ok=True)
        (d / "tmp").mkdir(parents=True, exist_ok=True)
        props = d / "server.properties"
        props.write_text(self.server_properties())
        (d / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        cid_file = d / "cluster.id"
        if not cid_file.exists():
            cid_file.write_text(new_cluster_id() + "\n")
        if not (d / "data" / "meta.properties").exists():
            fmt = self.java(
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cid_file.read_text().strip(),
                "-c",
                str(props),
                "--ignore-formatted",
            )
            res = run(fmt, timeout=120)
            with self.log_paths()[0].open("a") as log:
                log.write(res.stdout + res.stderr)
            if res.returncode != 0:
                raise BrokerError(f"kafka-storage format failed: {res.stdout}{res.stderr}")
        proc = spawn(self.java("kafka.Kafka", str(props)), self.log_paths()[0], cwd=d)
        write_pidfile(self.pidfile("server"), proc.pid)

    def probe(self) -> bool:
        try:
            return kafka_probe(self.port)
        except (OSError, ConnectionError, struct.error):
            return False
