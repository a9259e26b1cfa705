"""The fault suite (mqkit.testing.faults) against the real Kafka (``docker/brokers up kafka``).

Producers send with ``acks=all`` and idempotence.  Kafka commits acks
asynchronously, so each consumer kill also leaves acked-but-uncommitted messages
behind: they come back to the next member and dedupe must absorb them.
"""

from __future__ import annotations

import pytest

from mqkit.testing.faults import FaultSuite
from tests.brokers_plugin import ControlledBroker

pytestmark = [
    pytest.mark.fault,
    pytest.mark.kafka,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]


class TestKafkaFaults(ControlledBroker, FaultSuite):
    broker = "kafka"
    # Sends that cannot be confirmed fail after 20 s (the default is 30 s).
    producer_query = "delivery_timeout_ms=20000&max_block_ms=5000&request_timeout_ms=8000"
