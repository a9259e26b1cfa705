"""Client.close closes everything it opened even when closing one part fails."""

from __future__ import annotations

import uuid

import pytest

import mqkit
from mqkit.backends.memory import reset


class _Boom(Exception):
    pass


def test_a_failing_consumer_close_still_closes_the_rest_and_is_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"close-{uuid.uuid4().hex}"
    mq = mqkit.connect(f"memory://{name}")
    mq.declare("t", groups=["g"])
    first = mq.consumer("t", group="g")
    second = mq.consumer("t", group="g")
    closed: list[str] = []

    def boom() -> None:
        raise _Boom("consumer close failed")

    real_second = second.close

    def second_close() -> None:
        closed.append("second")
        real_second()

    real_adapter = mq.adapter.close

    def adapter_close() -> None:
        closed.append("adapter")
        real_adapter()

    monkeypatch.setattr(first, "close", boom)
    monkeypatch.setattr(second, "close", second_close)
    monkeypatch.setattr(mq.adapter, "close", adapter_close)
    with pytest.raises(_Boom, match="consumer close failed"):
        mq.close()
    assert closed == ["second", "adapter"]
    mq.close()  # idempotent: nothing is closed twice, nothing raised again
    assert closed == ["second", "adapter"]
    reset(name)
