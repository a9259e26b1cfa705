"""The conformance suite over ``mqkit://`` against a real broker server subprocess.

Two runs: the in-memory server (``--memory``: persistence is declared
unsupported and warned about, like memory://) and, once the on-disk storage
is importable, the server on a data directory, where C3 kills it with -9.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from mqkit.testing.conformance import ConformanceSuite
from tests.fuzz.broker_process import BrokerProcess, storage_available

pytestmark = pytest.mark.server


class _ServerSuite(ConformanceSuite):
    settle = 0.5
    on_disk: ClassVar[bool] = False
    broker: ClassVar[BrokerProcess]

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _server(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
        data_dir: Path | None = tmp_path_factory.mktemp("broker") if cls.on_disk else None
        cls.broker = BrokerProcess(data_dir=data_dir)
        with cls.broker:
            yield

    def make_url(self) -> str:
        # A short reconnect window: C2 waits for it before the send fails.
        return self.broker.url(reconnect_timeout=1)

    def stop_broker(self) -> None:
        self.broker.stop()

    def kill_broker(self) -> None:
        self.broker.kill()

    def restart_broker(self) -> None:
        self.broker.restart()


class TestServerMemory(_ServerSuite):
    """``mqkit broker serve --memory``."""


@pytest.mark.skipif(
    not storage_available(), reason="mqkit.broker.storage (on-disk storage) is not importable yet"
)
class TestServerDisk(_ServerSuite):
    """``mqkit broker serve --data-dir D``: C3 survives kill -9."""

    on_disk = True
