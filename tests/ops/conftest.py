"""Fixtures of the ops tests: one URL per backend, and a client per test.

``url`` / ``mq`` give the in-core backends (memory://, native://): the tests of
details that only they can show cheaply.  ``backend`` / ``bmq`` give every
backend that exists -- memory, native, and the real brokers of docker/brokers
(Kafka, RabbitMQ, RocketMQ, and ActiveMQ when its adapter is importable) --
for the behaviours every backend must have (counts in = counts out, per-key
order, lag, crash and resume).  A real broker that is not running fails the
test under CI (tests/brokers_plugin.py), it is never skipped silently there.
"""

from __future__ import annotations

import importlib.util
import logging
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import mqkit
from mqkit.backends.memory import reset
from mqkit.errors import MQError, Unsupported
from tests.brokers_plugin import broker_url

log = logging.getLogger("tests.ops")

REAL = ["kafka", "rabbitmq", "rocketmq"]
if importlib.util.find_spec("mqkit.adapters.activemq") is not None:
    REAL.append("activemq")  # reported on its own: the adapter is still being finished
ALL = ["memory", "native", *REAL]


@dataclass
class Backend:
    """One backend under test: its URL, and unique topic names cleaned up afterwards."""

    name: str
    url: str
    topics: list[str] = field(default_factory=list)

    @property
    def real(self) -> bool:
        return self.name in REAL

    def topic(self, base: str) -> str:
        """A fresh topic name (real brokers are shared by every test and engineer)."""
        name = f"{base}-{uuid.uuid4().hex[:8]}" if self.real else base
        self.topics += [name, f"{name}.dlq", f"{name}.fanout", f"{name}.fanout.dlq"]
        return name

    def connect(self) -> mqkit.Client:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="memory:// keeps messages")
            return mqkit.connect(self.url)

    def cleanup(self) -> None:
        """Delete the topics a test made, where the broker can (Kafka keeps them otherwise)."""
        if not self.real or not self.topics:
            return
        if self.name == "kafka":
            _delete_kafka_topics(self.url, self.topics)
            return
        with self.connect() as mq:
            for name in self.topics:
                try:
                    mq.adapter.delete_topic(name)
                except Unsupported:
                    return  # ActiveMQ: STOMP cannot delete destinations
                except MQError as exc:  # housekeeping only: the test's verdict stands
                    log.warning("could not delete test topic %s: %r", name, exc)


def _delete_kafka_topics(url: str, names: list[str]) -> None:
    """Topics only: the adapter's delete_topic also waits for its groups to empty (slow)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=url.split("://", 1)[1].split("?", 1)[0])
    try:
        existing = set(admin.list_topics())
        gone = [n for n in names if n in existing]
        if gone:
            admin.delete_topics(gone)
    except KafkaError as exc:  # housekeeping only
        log.warning("could not delete test topics %s: %r", names, exc)
    finally:
        admin.close()


def backend_url(name: str, tmp_path: Path) -> str:
    if name == "memory":
        return f"memory://ops{uuid.uuid4().hex}"
    if name == "native":
        return f"native://{tmp_path / 'broker'}"
    return broker_url(name)


@pytest.fixture(params=["memory", "native"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh broker of each in-core backend; the test is marked with the backend."""
    request.applymarker(getattr(pytest.mark, request.param))
    if request.param == "memory":
        name = "ops" + uuid.uuid4().hex
        yield f"memory://{name}"
        reset(name)
    else:
        yield f"native://{tmp_path / 'broker'}"


@pytest.fixture
def mq(url: str) -> Iterator[mqkit.Client]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="memory:// keeps messages")
        with mqkit.connect(url) as client:
            yield client


def backend_params(names: list[str]) -> list[object]:
    """Marked at collection, so CI starts those brokers and fails a test whose broker is down."""
    return [pytest.param(n, marks=getattr(pytest.mark, n), id=n) for n in names]


@pytest.fixture(params=backend_params(ALL))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every backend that exists."""
    b = Backend(request.param, backend_url(request.param, tmp_path))
    yield b
    if b.name == "memory":
        reset(b.url.removeprefix("memory://"))
    b.cleanup()


@pytest.fixture
def bmq(backend: Backend) -> Iterator[mqkit.Client]:
    with backend.connect() as client:
        yield client
