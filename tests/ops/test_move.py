"""The mover itself: an unconfirmed batch is never acked, and a re-run resumes."""

from __future__ import annotations

import uuid
import warnings

import pytest

import mqkit
from mqkit import ops
from mqkit.backends.memory import reset
from mqkit.errors import ConfigError, PublishError
from tests.ops.helpers import read_all

pytestmark = [pytest.mark.memory, pytest.mark.timeout(60)]

FAILING = "tests.ops.failing_adapter:FailingTargetAdapter"


def test_an_unconfirmed_batch_stays_on_the_source() -> None:
    name = "move" + uuid.uuid4().hex
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mq = mqkit.connect(f"memory://{name}?adapter={FAILING}")
    try:
        mq.declare("t", groups=["g"])
        p = mq.producer(mqkit.Policy(persistent=False))
        values = [b"ok"] * 250 + [b"fail"] + [b"ok"] * 249
        p.send_many(
            "t", [mqkit.OutgoingMessage(v, key="k", id=f"m{i}") for i, v in enumerate(values)]
        )
        with pytest.raises(PublishError, match="run the same command again to resume"):
            ops.fanout(mq, "t", group="g", batch_size=100, idle_timeout=0.3)
        # 2 full batches + 50 of the third were confirmed and acked; nothing after m250
        assert ops.lag(mq, "t.fanout", "g").backlog == 250
        assert ops.lag(mq, "t", "g").backlog == 250
        assert ops.lag(mq, "t", "g").in_flight == 0
        moved = read_all(mq, "t.fanout", "g")
        assert moved.ids == [f"m{i}" for i in range(250)]
    finally:
        mq.close()
        reset(name)


def test_bad_arguments() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mq = mqkit.connect("memory://badargs")
    with mq:
        mq.declare("t", groups=["g"])
        for kwargs, field in (
            ({"batch_size": 0}, "batch_size"),
            ({"limit": 0}, "limit"),
            ({"idle_timeout": 0}, "idle_timeout"),
        ):
            with pytest.raises(ConfigError, match=field):
                ops.move(mq, "t", group="g", route=lambda r: ("x", r), **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="factor"):
            ops.fanout(mq, "t", group="g", factor=0)
    reset("badargs")
