"""The fault suite (mqkit.testing.faults) against the real RabbitMQ (docker/brokers up rabbitmq).

Publisher confirms, durable queues, persistent delivery; every fault runs on
quorum and on classic group queues.
"""

from __future__ import annotations

import pytest

from mqkit.testing.faults import FaultSuite
from tests.brokers_plugin import ControlledBroker

pytestmark = [pytest.mark.fault, pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.slow]


class TestRabbitMQFaults(ControlledBroker, FaultSuite):
    broker = "rabbitmq"
    partitions = None
    connect_timeout = 3.0
    declare_before_drain = True
    drain_prefetch = 200
    producer_connect_timeout = 3.0
    batch_sizes = (200,)
    failed_pause = 0.1
    confirms_before_kill = (2000, 2000)
    confirms_after_restart = 1000
    confirm_timeout = recover_timeout = catch_up_timeout = producer_exit_timeout = 60.0
    work = 300
    crash_at = 60
    consumer_prefetch = 10
    consumer_exit_timeout = 120.0

    @pytest.fixture(params=["quorum", "classic"])
    def url(self, request: pytest.FixtureRequest) -> str:
        self.label = f"[{request.param}] "
        return f"{self.make_url()}?queue_type={request.param}"
