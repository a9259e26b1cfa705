"""ActiveMQ Classic 5.17 from Debian's activemq package, one instance under .brokers/activemq.

Run in the foreground (no wrapper scripts: /usr/share/activemq/activemq-options would
force a 512 MiB heap) as ``java ... -jar /usr/share/activemq/bin/activemq.jar start
xbean:file:<instance>/conf/activemq.xml``; the configuration is docker/activemq/activemq.xml.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from .base import Broker
from .common import DOCKER_DIR, HOST, BrokerError, java_bin, spawn, write_pidfile

ACTIVEMQ_HOME = "/usr/share/activemq"

# the --add-opens/--add-exports list of /usr/bin/activemq for Java > 8
ACTIVEMQ_JAVA_OPENS = [
    "--add-reads=java.xml=java.logging",
    "--add-opens=java.base/java.security=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.naming/javax.naming.spi=ALL-UNNAMED",
    "--add-opens=java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.www.protocol.http=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.www.protocol.https=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.www.protocol.jar=ALL-UNNAMED",
    "--add-exports=jdk.xml.dom/org.w3c.dom.html=ALL-UNNAMED",
    "--add-exports=jdk.naming.rmi/com.sun.jndi.url.rmi=ALL-UNNAMED",
]

LOG4J_PROPERTIES = """\
# written by docker/brokers: console only, the runner captures it in activemq.log
log4j.rootLogger=INFO, stdout
log4j.logger.org.apache.activemq.spring=WARN
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=%d{ISO8601} | %-5p | %m | %c | %t%n
"""


def stomp_probe(port: int, timeout: float = 3.0) -> bool:
    """STOMP 1.2 CONNECT; ready when the broker answers CONNECTED."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\n\n\x00")
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(256)
            if not chunk:
                return False
            data += chunk
        ok = data.startswith(b"CONNECTED")
        if ok:
            sock.sendall(b"DISCONNECT\n\n\x00")
        return ok


class ActiveMQ(Broker):
    apt_packages = ("activemq",)
    ready_timeout = 120.0
    stop_timeout = 30.0
    heap = ("-Xms128m", "-Xmx256m")

    @property
    def port(self) -> int:
        return self.spec.ports["stomp"]

    def launch(self) -> None:
        jar = f"{ACTIVEMQ_HOME}/bin/activemq.jar"
        if not Path(jar).exists():
            raise BrokerError("activemq is not installed (apt-get install activemq)")
        base = self.dir
        conf = base / "conf"
        data = base / "data"
        tmp = base / "tmp"
        for d in (conf, data, tmp):
            d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DOCKER_DIR / "activemq" / "activemq.xml", conf / "activemq.xml")
        (conf / "log4j.properties").write_text(LOG4J_PROPERTIES)
        cmd = [
            java_bin(),
            *self.heap,
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            "-Dorg.apache.activemq.UseDedicatedTaskRunner=false",
            *ACTIVEMQ_JAVA_OPENS,
            f"-Djava.io.tmpdir={tmp}",
            f"-Dlog4j.configuration=file:{conf / 'log4j.properties'}",
            f"-Dactivemq.classpath={conf}",
            f"-Dactivemq.home={ACTIVEMQ_HOME}",
            f"-Dactivemq.base={base}",
            f"-Dactivemq.conf={conf}",
            f"-Dactivemq.data={data}",
            f"-Dmqkit.bind={HOST}",
            "-Dmqkit.broker=activemq",
            "-jar", jar,
            "start",
            f"xbean:file:{conf / 'activemq.xml'}",
        ]  # fmt: skip
        proc = spawn(cmd, self.log_paths()[0], cwd=base)
        write_pidfile(self.pidfile("server"), proc.pid)

    def probe(self) -> bool:
        try:
            return stomp_probe(self.port)
        except (OSError, ConnectionError):
            return False
