"""The conformance suite over the in-process memory:// backend."""

from __future__ import annotations

import uuid

import pytest

from mqkit.backends.memory import reset
from mqkit.testing.conformance import ConformanceSuite

pytestmark = pytest.mark.memory


class TestMemory(ConformanceSuite):
    settle = 0.5

    def make_url(self) -> str:
        self._name = uuid.uuid4().hex
        return f"memory://{self._name}"

    def stop_broker(self) -> None:
        reset(self._name)

    def restart_broker(self) -> None:
        """A new client of the same name gets a fresh (empty) broker."""
