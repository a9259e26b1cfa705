"""The few kafka-python 3.0 internals the subscription relies on, in one place.

kafka-python 3 runs rebalance listeners on its IO thread, where the blocking
consumer API raises; the async listener has to ``await`` the coroutines behind
``commit()`` and ``committed()`` instead.  Two driver quirks are worked around
here too (both seen with 3.0.12 against Kafka 4.3):

* a group leader whose first JoinGroup ran before the topic's metadata arrived
  assigns with an empty metadata snapshot and rebalances the group again as
  soon as the metadata lands -- :func:`refresh_metadata` loads it first;
* a join that completes between two ``poll()`` calls is dropped when
  ``need_rejoin()`` has meanwhile turned false; the member then waits with its
  heartbeats off until the broker evicts it.  :func:`nudge_rejoin` marks the
  group for rejoining, which makes the next ``poll()`` finish the join.

Pinned by ``kafka-python>=3.0.11,<4``; each helper fails loudly if the internals move.
"""

from __future__ import annotations

from typing import Any

__all__ = ["commit_now", "nudge_rejoin", "read_committed", "refresh_metadata", "sleep"]


def refresh_metadata(consumer: Any, timeout_ms: int) -> None:
    """Fetch metadata for the subscribed topics now (blocking; not on the IO thread)."""
    future = consumer._cluster.request_update()
    consumer._net.run(consumer._manager.wait_for, future, timeout_ms)


def nudge_rejoin(consumer: Any) -> None:
    """Ask the coordinator to (re)join on the next poll (no-op while a join is in flight)."""
    consumer._coordinator.request_rejoin()


async def commit_now(consumer: Any, offsets: dict[Any, Any], timeout_ms: int) -> None:
    """``commit(offsets)`` from a rebalance listener (the IO thread)."""
    await consumer._coordinator._commit_offsets_sync_async(offsets, timeout_ms=timeout_ms)


async def read_committed(consumer: Any, partitions: set[Any], timeout_ms: int) -> dict[Any, Any]:
    """``committed(tp, metadata=True)`` for several partitions, from the IO thread."""
    result: dict[Any, Any] = await consumer._coordinator.fetch_committed_offsets_async(
        partitions, timeout_ms=timeout_ms
    )
    return result


async def sleep(consumer: Any, seconds: float) -> None:
    """Yield the IO loop (heartbeats go on) for ``seconds``."""
    await consumer._net.sleep(seconds)
