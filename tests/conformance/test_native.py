"""The conformance suite over the embedded native broker (native:///dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqkit.backends import native
from mqkit.testing.conformance import ConformanceSuite

pytestmark = pytest.mark.native


class TestNative(ConformanceSuite):
    settle = 0.5

    @pytest.fixture(autouse=True)
    def _data_dir(self, tmp_path: Path) -> None:
        self._dir = tmp_path / "broker"

    def make_url(self) -> str:
        return f"native://{self._dir}"

    def _drop(self, *, clean: bool) -> None:
        """Forget the in-process broker of this dir, closing it cleanly or not at all."""
        with native._open_lock:
            shared = native._open.pop(self._dir.resolve(), None)
        if shared is None:
            return
        if clean:
            shared.engine.close()
            shared.storage.close()
        else:
            shared.storage.abandon()

    def stop_broker(self) -> None:
        self._drop(clean=True)

    def kill_broker(self) -> None:
        # The embedded broker lives in this process: abandon it without flushing
        # or closing anything (what a crash leaves).  Real kill -9 of a separate
        # process is in tests/fault/.
        self._drop(clean=False)

    def restart_broker(self) -> None:
        """The next connect() opens the data dir again and recovers it."""
