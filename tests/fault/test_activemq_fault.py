"""The fault suite (mqkit.testing.faults) against the real ActiveMQ (docker/brokers up activemq).

Batches are confirmed as STOMP transactions (one COMMIT receipt per batch,
KahaDB synced on the commit); single sends by a receipt per SEND.  A consumer
in the test process runs through the broker kill and must resume by itself.
"""

from __future__ import annotations

import pytest

from mqkit.testing.faults import FaultSuite
from tests.brokers_plugin import ControlledBroker

pytestmark = [pytest.mark.fault, pytest.mark.activemq, pytest.mark.redis, pytest.mark.slow]


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
