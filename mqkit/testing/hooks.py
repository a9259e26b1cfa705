"""The broker hooks both importable suites (conformance, faults) ask a backend for.

One base class so a test module that runs both suites against one broker
implements the hooks once (see tests/brokers_plugin.py's ``ControlledBroker``).
"""

from __future__ import annotations

import pytest

__all__ = ["BrokerHooks"]


class BrokerHooks:
    """Subclasses implement :meth:`make_url`; the others where their tests need them."""

    def make_url(self) -> str:
        raise NotImplementedError

    def kill_broker(self) -> None:
        """kill -9 every process of the broker; its data stays (C3, fault tests)."""
        raise NotImplementedError

    def restart_broker(self) -> None:
        """Start the broker again on the same data; return when it is ready."""
        raise NotImplementedError

    def stop_broker(self) -> None:
        """Make the broker unreachable (C2)."""
        raise NotImplementedError

    @pytest.fixture
    def url(self) -> str:
        return self.make_url()
