"""What recovery found and did, for the broker to log and expose.

Every repair adds a :class:`RecoveryEntry` (structured) that also renders
as one human-readable line.  Severity says how worried to be:

* ``info``    -- routine (an index rebuilt, a stale temp file removed);
* ``warning`` -- an unconfirmed tail was dropped (a crash mid-write: expected);
* ``error``   -- records that were complete on disk were damaged and dropped.
  Under ``fsync="always"`` they may have been confirmed to producers, so
  only disk damage explains it: look at the disk.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["RecoveryEntry", "RecoveryReport", "Severity"]

Severity = Literal["info", "warning", "error"]
_log = logging.getLogger("mqkit.broker.storage")
_LEVEL = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass(frozen=True, slots=True)
class RecoveryEntry:
    severity: Severity
    kind: str  # torn_tail, corrupt_records, index_rebuilt, journal_tail, snapshot_corrupt, ...
    path: str
    detail: str
    first_offset: int | None = None  # dropped offsets, inclusive, when known
    last_offset: int | None = None
    bytes_dropped: int = 0

    def line(self) -> str:
        span = ""
        if self.first_offset is not None:
            last = "?" if self.last_offset is None else str(self.last_offset)
            span = f" offsets {self.first_offset}..{last}"
        dropped = f" ({self.bytes_dropped} bytes dropped)" if self.bytes_dropped else ""
        return f"{self.severity.upper()} {self.kind} {self.path}:{span}{dropped} {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RecoveryReport:
    """Entries collected at open (and by repairs later); logged as they are added."""

    def __init__(self) -> None:
        self._entries: list[RecoveryEntry] = []
        self._lock = threading.Lock()

    def add(self, entry: RecoveryEntry) -> None:
        with self._lock:
            self._entries.append(entry)
        _log.log(_LEVEL[entry.severity], "storage recovery: %s", entry.line())

    @property
    def entries(self) -> list[RecoveryEntry]:
        with self._lock:
            return list(self._entries)

    def lines(self) -> list[str]:
        return [e.line() for e in self.entries]

    @property
    def errors(self) -> list[RecoveryEntry]:
        return [e for e in self.entries if e.severity == "error"]

    @property
    def clean(self) -> bool:
        """Nothing was dropped or repaired."""
        return not self.entries

    def __len__(self) -> int:
        return len(self.entries)
