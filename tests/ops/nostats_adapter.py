"""A memory:// adapter without statistics or topic deletion, like some real brokers.

Load with ``memory://name?adapter=tests.ops.nostats_adapter:NoStatsAdapter``.
"""

from __future__ import annotations

from mqkit.adapter import Adapter, TopicStats
from mqkit.backends.memory import MemoryAdapter

__all__ = ["NoStatsAdapter"]


class NoStatsAdapter(MemoryAdapter):
    def stats(self, topic: str, group: str) -> list[TopicStats]:
        return Adapter.stats(self, topic, group)  # raises Unsupported

    def delete_topic(self, topic: str) -> None:
        Adapter.delete_topic(self, topic)  # raises Unsupported
