"""A memory:// adapter that refuses chosen records: for confirm and registry tests.

Load it with ``options={"adapter": "tests.helpers.flaky_adapter:FlakyAdapter"}``.
A record whose value starts with ``b"fail"`` is not stored and its outcome is a
``ConnectionError``; every other record is stored and confirmed as usual.
"""

from __future__ import annotations

from collections.abc import Sequence

from mqkit.adapter import PublishOutcome
from mqkit.backends.memory import MemoryAdapter
from mqkit.message import Record

__all__ = ["FlakyAdapter"]


class FlakyAdapter(MemoryAdapter):
    published: list[Record]

    def open(self) -> None:
        super().open()
        self.published = []

    def publish(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        confirm: bool,
        persistent: bool,
        delay: float | None = None,
    ) -> list[PublishOutcome]:
        good = [r for r in records if not r.value.startswith(b"fail")]
        stored = iter(
            super().publish(topic, good, confirm=confirm, persistent=persistent, delay=delay)
            if good
            else []
        )
        self.published.extend(good)
        out: list[PublishOutcome] = []
        for r in records:
            if r.value.startswith(b"fail"):
                out.append(ConnectionError(f"broker refused {r.id}"))
            else:
                out.append(next(stored))
        return out
