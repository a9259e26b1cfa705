"""The fault suite (mqkit.testing.faults) against the native broker server, a real process.

The server (``python -m mqkit.broker.server``, fsync per batch) is killed with
SIGKILL at a random moment, five times over, while three producer processes send
batches of 1, 5 or 20 keyed messages with confirms; after each restart on the same
data dir they must get confirms again.  At the end every confirmed message is in
the log exactly once, and a consumer running through the kills (it reconnects,
rejoins its group, and acks what it handled through the new membership) gets them
all.  The consumer kill runs with a small prefetch and a short
idle time: the broker hands back a dead consumer's leases as soon as its
connection drops.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mqkit.testing.faults import FaultSuite
from tests.fuzz.broker_process import BrokerProcess

pytestmark = [pytest.mark.fault, pytest.mark.server, pytest.mark.redis]


class TestNativeServerFaults(FaultSuite):
    partitions = 3
    producers = 3
    batch_sizes = (1, 5, 20)
    keys = 7
    kill_rounds = 5
    confirms_before_kill = (1000, 8000)
    confirms_after_restart = 1000
    exactly_once = True
    drain_idle = 2.0
    work = 40
    crash_at = 7
    consumer_prefetch = 10
    consumer_idle = 2.0

    @pytest.fixture(autouse=True)
    def _broker(self, tmp_path: Path) -> Iterator[None]:
        self._server = BrokerProcess(data_dir=tmp_path / "data")
        self._server.start()
        try:
            yield
        finally:
            self._server.stop()

    def make_url(self) -> str:
        return self._server.url()

    def kill_broker(self) -> None:
        self._server.kill()

    def restart_broker(self) -> None:
        self._server.start()
