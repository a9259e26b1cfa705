"""A memory:// adapter whose fanout topics refuse records with a value starting ``b"fail"``.

Load with ``memory://name?adapter=tests.ops.failing_adapter:FailingTargetAdapter``:
the source accepts everything, the move's target does not, so the tests can
see what a move does with an unconfirmed batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from mqkit.adapter import PublishOutcome
from mqkit.backends.memory import MemoryAdapter
from mqkit.errors import PublishError
from mqkit.message import Record

__all__ = ["FailingTargetAdapter"]


class FailingTargetAdapter(MemoryAdapter):
    def publish(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        confirm: bool,
        persistent: bool,
        delay: float | None = None,
    ) -> list[PublishOutcome]:
        if not topic.endswith(".fanout"):
            return super().publish(topic, records, confirm=confirm, persistent=persistent)
        out: list[PublishOutcome] = []
        for r in records:  # like the server adapter: nothing after the first failure
            if (out and isinstance(out[-1], BaseException)) or r.value.startswith(b"fail"):
                out.append(PublishError(f"refused {r.id}"))
            else:
                out += super().publish(topic, [r], confirm=confirm, persistent=persistent)
        return out
