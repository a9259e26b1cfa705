"""The fault suite (mqkit.testing.faults) against the real RocketMQ 5.3 proxy and broker.

The broker kill is a SIGKILL of the proxy JVM (the broker runs inside it) and of
namesrv; producers get a SendReceipt after a SYNC_FLUSH.  The restarted proxy has
forgotten its settings: the adapter replaces the live consumer's SimpleConsumer.
A killed consumer's messages come back when their leases end (``invisible_time=3``,
plus RocketMQ's ~3 s revive), so the consumers wait longer before calling it done.

``test_a_refused_restart_fails_the_test_and_pytest_exits``: the last CI run hung
after ``docker/brokers restart rocketmq`` was refused -- the test failed, but the
live RocketMQ client's threads kept pytest from exiting.  It runs the broker-kill
test in a child pytest whose hooks refuse the restart, and asserts that the child
reports the failure and exits by itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mqkit.testing.faults import FaultSuite
from tests.brokers_plugin import BrokerControlError, ControlledBroker

pytestmark = [
    pytest.mark.fault,
    pytest.mark.rocketmq,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

REPO = Path(__file__).resolve().parents[2]
REFUSED = "docker/brokers restart rocketmq failed (1): refused (simulated)"


class TestRocketMQFaults(ControlledBroker, FaultSuite):
    broker = "rocketmq"
    recover_timeout = catch_up_timeout = 180.0
    consumer_query = "invisible_time=3"
    consumer_idle = 12.0
    drain_idle = 8.0


class RefusedRestart(TestRocketMQFaults):
    """Run only by the test below, in a child pytest: the broker is never really killed."""

    __test__ = False
    confirms_before_kill = (500, 500)

    def kill_broker(self) -> None:
        """The shared broker stays up: only the refused restart is simulated."""

    def restart_broker(self) -> None:
        raise BrokerControlError(REFUSED)


def test_a_refused_restart_fails_the_test_and_pytest_exits(tmp_path: Path) -> None:
    case = tmp_path / "test_refused_restart.py"
    case.write_text(
        "from tests.fault.test_rocketmq_fault import RefusedRestart\n\n\n"
        "class TestRefusedRestart(RefusedRestart):\n"
        "    __test__ = True\n"
    )
    cmd = [sys.executable, "-m", "pytest", "-p", "tests.brokers_plugin", "-p", "no:cacheprovider"]
    cmd += ["-q", "--rootdir", str(tmp_path), "-k", "kill9", str(case)]
    try:
        done = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=400, check=False
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it by its PID
        pytest.fail(f"the child pytest did not exit after the failure:\n{exc.stdout!s}")
    output = done.stdout + done.stderr
    print(output[-3000:])
    assert done.returncode == 1, output[-5000:]
    assert "1 failed" in output, output[-5000:]
    assert REFUSED in output, output[-5000:]
    # the suite's teardown closed every client: neither the per-test thread check nor the
    # plugin's last-resort exit (tests/brokers_plugin.py) had anything to do
    assert "non-daemon threads still run" not in output, output[-5000:]
    assert "still running; exiting anyway" not in output, output[-5000:]
