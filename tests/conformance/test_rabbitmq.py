"""The conformance suite over a real RabbitMQ 3.10 (``docker/brokers up rabbitmq``).

Run twice: with quorum queues (the default) and with classic queues.  The
broker hooks kill -9 and restart the real broker process through the
project's runner (``broker_control`` of tests/brokers_plugin.py), so C2 and C3
are proved against it.  The plugin fails these tests under CI when RabbitMQ
is not running, with the command that starts it.  Every queue and exchange a
test declares is deleted after it (quorum queues are not free to keep).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pika
import pytest

from mqkit.testing.conformance import ConformanceSuite
from tests.brokers_plugin import BrokerControl

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def declared(monkeypatch: pytest.MonkeyPatch) -> tuple[set[str], set[str]]:
    """Record the queues and exchanges the adapter declares during one test."""
    queues: set[str] = set()
    exchanges: set[str] = set()
    link = importlib.import_module("mqkit.adapters.rabbitmq._link").Link
    admin = link.admin

    def recording(self: Any, calls: Sequence[tuple[str, dict[str, Any]]]) -> list[Any]:
        for name, kw in calls:
            if name == "queue_declare" and not kw.get("passive"):
                queues.add(kw["queue"])
            elif name == "exchange_declare" and not kw.get("passive"):
                exchanges.add(kw["exchange"])
        result: list[Any] = admin(self, calls)
        return result

    monkeypatch.setattr(link, "admin", recording)
    return queues, exchanges


def delete_all(url: str, queues: set[str], exchanges: set[str]) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        for q in sorted(queues):
            ch.queue_delete(q)
        for x in sorted(exchanges):
            ch.exchange_delete(x)
    finally:
        conn.close()


class TestRabbitMQ(ConformanceSuite):
    settle = 1.0
    query: ClassVar[str] = ""

    @pytest.fixture(autouse=True)
    def _broker(
        self,
        broker_urls: dict[str, str],
        broker_control: BrokerControl,
        declared: tuple[set[str], set[str]],
    ) -> Iterator[None]:
        self._url = broker_urls["rabbitmq"]
        self._control = broker_control
        yield
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):  # cleanup only
            delete_all(self._url, *declared)

    def make_url(self) -> str:
        return self._url + self.query

    def stop_broker(self) -> None:
        self._control.kill9("rabbitmq")

    def kill_broker(self) -> None:
        self._control.kill9("rabbitmq")

    def restart_broker(self) -> None:
        self._control.restart("rabbitmq")


class TestRabbitMQClassic(TestRabbitMQ):
    """The same contract on classic queues (attempt counts are then emulated)."""

    query = "?queue_type=classic"
