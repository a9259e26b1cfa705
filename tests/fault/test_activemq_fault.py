"""The fault suite (mqkit.testing.faults) against the real ActiveMQ (docker/brokers up activemq).

Batches are confirmed as STOMP transactions (one COMMIT receipt per batch,
KahaDB synced on the commit); single sends by a receipt per SEND.  A consumer
in the test process runs through the broker kill and must resume by itself.

Then a kill -9 scenario the suite cannot reach in reasonable time on the shared
broker (it needs KahaDB's housekeeping to have run): a private ActiveMQ on its
own ports and data, with docker/activemq/activemq.xml as shipped except for
faster housekeeping.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import mqkit
from mqkit.testing.faults import FaultSuite
from tests.brokers_plugin import REPO_ROOT, ControlledBroker, in_ci

HOST = "127.0.0.1"


@pytest.mark.fault
@pytest.mark.activemq
@pytest.mark.redis
@pytest.mark.slow
class TestActiveMQFaults(ControlledBroker, FaultSuite):
    broker = "activemq"
    partitions = None
    connect_timeout = 3.0
    declare_before_drain = True
    delete_topics = False  # the STOMP adapter cannot delete destinations
    drain_prefetch = 500
    producer_connect_timeout = 3.0
    batch_sizes = (200,)
    failed_pause = 0.1
    confirms_before_kill = (2000, 2000)
    confirms_after_restart = 1000
    confirm_timeout = recover_timeout = catch_up_timeout = producer_exit_timeout = 120.0
    work = 300
    crash_at = 60
    consumer_prefetch = 10
    consumer_exit_timeout = 180.0


# -- a private broker with the shipped configuration ---------------------------------------


def _host_activemq() -> ModuleType:
    docker_dir = str(REPO_ROOT / "docker")
    if docker_dir not in sys.path:
        sys.path.insert(0, docker_dir)
    return importlib.import_module("host.activemq")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class _PrivateActiveMQ:
    """docker/activemq/activemq.xml on free ports and its own data, run and killed by PID.

    KahaDB's housekeeping is sped up: a cleanup every 0.5 s (default 30 s), ack
    compaction (when enabled) after one cleanup that removed no journal file (default
    10, so 5 minutes), and 128 KiB journal files (32 MiB).
    """

    def __init__(self, base: Path) -> None:
        self.host = _host_activemq()
        self.base = base
        self.stomp = _free_port()
        openwire = _free_port()
        xml = (REPO_ROOT / "docker" / "activemq" / "activemq.xml").read_text()
        xml = xml.replace(":61616?", f":{openwire}?").replace(":61613?", f":{self.stomp}?")
        xml, n = re.subn(
            r"<kahaDB ",
            '<kahaDB cleanupInterval="500" compactAcksAfterNoGC="1" '
            'compactAcksIgnoresStoreGrowth="true" ',
            xml,
        )
        assert n == 1, "expected one <kahaDB> element in activemq.xml"
        xml = xml.replace('journalMaxFileLength="32mb"', 'journalMaxFileLength="128kb"')
        self.conf = base / "conf"
        self.data = base / "data"
        for d in (self.conf, self.data, base / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        (self.conf / "activemq.xml").write_text(xml)
        (self.conf / "log4j.properties").write_text(self.host.LOG4J_PROPERTIES)
        self.log = base / "activemq.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"stomp://{HOST}:{self.stomp}"

    def start(self, timeout: float = 120.0) -> None:
        home = self.host.ACTIVEMQ_HOME
        cmd = [
            "java", "-Xms128m", "-Xmx256m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            *self.host.ACTIVEMQ_JAVA_OPENS,
            f"-Djava.io.tmpdir={self.base / 'tmp'}",
            f"-Dlog4j.configuration=file:{self.conf / 'log4j.properties'}",
            f"-Dactivemq.classpath={self.conf}", f"-Dactivemq.home={home}",
            f"-Dactivemq.base={self.base}", f"-Dactivemq.conf={self.conf}",
            f"-Dactivemq.data={self.data}", f"-Dmqkit.bind={HOST}",
            "-jar", f"{home}/bin/activemq.jar", "start",
            f"xbean:file:{self.conf / 'activemq.xml'}",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.base, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the private ActiveMQ exited during start-up; see {self.log}")
            try:
                if self.host.stomp_probe(self.stomp, timeout=1.0):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail(f"the private ActiveMQ did not answer STOMP within {timeout:g} s")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def journal_tail_is_ack_compaction(self) -> bool:
        """Is the highest-numbered journal file a copy of acks made by ack compaction?"""
        files = sorted((self.data / "kahadb").glob("db-*.log"), key=lambda f: int(f.name[3:-4]))
        if not files:
            return False
        head = files[-1].read_bytes()[:34]
        # a 28-byte batch header, then the first record: [int length][type 1][KahaEntryType]
        # -- 16 is KAHA_REWRITTEN_DATA_FILE_COMMAND, the marker ack compaction writes first
        return len(head) == 34 and head[32] == 1 and head[33] == 16


@pytest.fixture
def private_activemq(tmp_path: Path) -> Iterator[_PrivateActiveMQ]:
    host = _host_activemq()
    if not Path(host.ACTIVEMQ_HOME, "bin", "activemq.jar").exists():
        msg = "activemq is not installed (docker/brokers up activemq installs it)"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    broker = _PrivateActiveMQ(tmp_path)
    try:
        yield broker
    finally:
        broker.kill9()


@pytest.mark.fault
@pytest.mark.activemq  # installed and started by the plugin: the private one uses its files
@pytest.mark.slow
def test_confirmed_sends_right_after_a_restart_survive_the_next_kill(
    private_activemq: _PrivateActiveMQ,
) -> None:
    """Kill -9 after KahaDB compacted acks; restart; confirmed sends; kill -9; restart.

    With ack compaction (KahaDB's default) the restarted broker appends to the
    compaction's copy, the highest-numbered journal file, and the next replay skips
    that file while the file it copied exists: all 50 confirmed sends were lost.
    docker/activemq/activemq.xml turns ack compaction off.
    """
    broker = private_activemq
    broker.start()
    with mqkit.connect(broker.url) as mq:
        # Journal files each holding an unread message and acks of older files' messages:
        # the kind ack compaction copies (a file whose acks pin older files).
        mq.declare("hold", groups=["g"])
        mq.declare("work", groups=["g"])
        producer = mq.producer()
        consumer = mq.consumer("work", group="g")
        try:
            deliveries = consumer.iter(timeout=30)
            for round_ in range(12):
                producer.send_many("work", [b"x" * 4000] * 20)
                producer.send("hold", b"never read")
                if round_:
                    for _ in range(20):  # the previous round's: acks land in later files
                        next(deliveries).ack()
        finally:
            consumer.close()
    deadline = time.monotonic() + 5.0  # cleanups run every 0.5 s
    while not broker.journal_tail_is_ack_compaction() and time.monotonic() < deadline:
        time.sleep(0.01)
    compacted = broker.journal_tail_is_ack_compaction()
    broker.kill9()

    broker.start()
    topic = f"restart-{uuid.uuid4().hex[:10]}"
    with mqkit.connect(broker.url) as mq:
        mq.declare(topic, groups=["g1"])
        sent = mq.producer().send_many(topic, [f"m{i}".encode() for i in range(50)])
        assert all(r.confirmed for r in sent)
    broker.kill9()  # within a second of the restart: before KahaDB's first index checkpoint

    broker.start()
    got: list[str] = []
    with mqkit.connect(broker.url) as mq:
        consumer = mq.consumer(topic, group="g1")
        try:
            for d in consumer.iter(timeout=10):
                got.append(d.message.id)
                d.ack()
                if len(got) == len(sent):
                    break
        finally:
            consumer.close()
    assert sorted(got) == sorted(r.id for r in sent), (
        f"{len(got)} of {len(sent)} confirmed messages survived the second kill -9"
        + (" (the journal's last file was an ack-compaction copy)" if compacted else "")
    )
