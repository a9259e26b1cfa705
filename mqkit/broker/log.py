"""The storage seam of the native broker: a partition is an append-only log.

:class:`MemoryLog` keeps records in a list (the ``memory://`` backend);
:mod:`mqkit.broker.storage` keeps them in segment files (``native://``).
The queue semantics in :mod:`mqkit.broker.engine` only see this protocol.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mqkit.message import Record

__all__ = [
    "PREALLOCATE_BYTES",
    "GroupSnapshot",
    "LogFactory",
    "MemoryLog",
    "NullStateStore",
    "PartitionLog",
    "StateStore",
]

# Disk an on-disk partition's active segment reserves ahead of its writes (see
# mqkit.broker.storage.segment): the default of every layer that passes it on.
PREALLOCATE_BYTES = 2**20


class PartitionLog(Protocol):
    """One partition: offsets are dense, start at 0, and never change."""

    def append(self, records: Sequence[Record], *, durable: bool) -> int:
        """Append in order and return the first record's offset.

        With ``durable`` the call returns only once the records are as safe as
        the log's durability policy makes them (fsync="always": on disk).
        """
        ...

    def settle(self) -> None:
        """Return once every record appended so far is as safe as ``durable`` makes it.

        Lets a caller append without ``durable`` several times and wait once:
        one fsync then confirms all of them (the server's group commit).
        """
        ...

    def read(self, offset: int, max_count: int) -> list[tuple[int, Record]]:
        """Records from ``offset`` on (at most ``max_count``); skips what retention removed."""
        ...

    def start_offset(self) -> int:
        """The oldest offset still stored (retention moves it forward)."""
        ...

    def end_offset(self) -> int:
        """The offset the next append will get."""
        ...

    def close(self) -> None: ...


class LogFactory(Protocol):
    def __call__(self, topic: str, partition: int) -> PartitionLog: ...


class MemoryLog:
    """A partition held in a Python list: fast, and gone with the process."""

    def __init__(self, topic: str = "", partition: int = 0) -> None:
        self._records: list[Record] = []
        self._lock = threading.Lock()

    def append(self, records: Sequence[Record], *, durable: bool) -> int:
        rows = list(records)  # decoded here if they came as checked bodies
        with self._lock:
            first = len(self._records)
            self._records.extend(rows)
            return first

    def settle(self) -> None:
        pass  # nothing is safer than memory here

    def read(self, offset: int, max_count: int) -> list[tuple[int, Record]]:
        chunk = self._records[offset : offset + max_count]
        return [(offset + i, r) for i, r in enumerate(chunk)]

    def start_offset(self) -> int:
        return 0

    def end_offset(self) -> int:
        return len(self._records)

    def close(self) -> None:
        pass


@dataclass
class GroupSnapshot:
    """A group's durable state for one topic, as a StateStore reloads it."""

    start_offsets: list[int]
    committed: dict[int, int] = field(default_factory=dict)
    acked: dict[int, set[int]] = field(default_factory=dict)
    attempts: dict[int, dict[int, int]] = field(default_factory=dict)


class StateStore(Protocol):
    """Where the engine keeps what must survive a restart besides the records."""

    def load(self) -> tuple[dict[str, int], dict[tuple[str, str], GroupSnapshot]]:
        """Topics (name → partitions) and groups ((topic, group) → snapshot)."""
        ...

    def topic_created(self, topic: str, partitions: int) -> None: ...

    def topic_deleted(self, topic: str) -> None: ...

    def group_created(self, topic: str, group: str, start_offsets: list[int]) -> None: ...

    def delivered(self, topic: str, group: str, partition: int, offset: int, attempt: int) -> None:
        """A delivery attempt started (so attempt counts survive a restart)."""
        ...

    def acked(self, topic: str, group: str, partition: int, offset: int) -> None: ...

    def flush(self) -> None:
        """Make everything recorded so far durable."""
        ...

    def close(self) -> None: ...


class NullStateStore:
    """Keeps nothing: for the in-memory backend."""

    def load(self) -> tuple[dict[str, int], dict[tuple[str, str], GroupSnapshot]]:
        return {}, {}

    def topic_created(self, topic: str, partitions: int) -> None:
        pass

    def topic_deleted(self, topic: str) -> None:
        pass

    def group_created(self, topic: str, group: str, start_offsets: list[int]) -> None:
        pass

    def delivered(self, topic: str, group: str, partition: int, offset: int, attempt: int) -> None:
        pass

    def acked(self, topic: str, group: str, partition: int, offset: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
