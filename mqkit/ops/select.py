"""Which messages a replay moves: reason, time range, header and key patterns.

Why a separate object: the same selection is built by the CLI from strings
and by Python callers from values, and it must judge a raw record (replay
never decodes payloads it does not need).  Every criterion given must hold.

Times are wall-clock seconds.  ``time_field="dead_lettered"`` uses the time
the consumer dead-lettered the message (hidden header ``x-mqkit-dlq-at``;
dead letters written before mqkit recorded it fall back to the send time),
``"sent"`` the producer's timestamp.  Header values and keys match as shell
patterns (``fnmatch``: ``user-4*``, ``*@example.com``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from typing import Literal

from mqkit.errors import ConfigError
from mqkit.message import DLQ_REASON, H_TS, Message, Record
from mqkit.policies.deadletter import H_DEAD_LETTERED

__all__ = ["Selection", "TimeField", "parse_header_match", "parse_when"]

TimeField = Literal["dead_lettered", "sent"]

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Selection:
    """Criteria for :func:`mqkit.ops.replay`; the default selects everything."""

    reason: str | None = None
    since: float | None = None
    until: float | None = None
    time_field: TimeField = "dead_lettered"
    headers: Mapping[str, str] = field(default_factory=dict)
    key: str | None = None
    where: Callable[[Message], bool] | None = None

    def __post_init__(self) -> None:
        if self.time_field not in ("dead_lettered", "sent"):
            raise ConfigError(
                f"must be 'dead_lettered' or 'sent', got {self.time_field!r}", field="time_field"
            )
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ConfigError("the time range is empty: since is after until", field="since")

    def matches(self, topic: str, record: Record) -> bool:
        h = record.headers
        if self.reason is not None and h.get(DLQ_REASON) != self.reason:
            return False
        if self.since is not None or self.until is not None:
            at = self._time(h)
            if at is None:
                return False
            if self.since is not None and at < self.since:
                return False
            if self.until is not None and at >= self.until:
                return False
        for name, pattern in self.headers.items():
            value = h.get(name)
            if value is None or not fnmatchcase(value, pattern):
                return False
        if self.key is not None and (record.key is None or not fnmatchcase(record.key, self.key)):
            return False
        return self.where is None or self.where(Message.from_record(topic, record))

    def _time(self, h: Mapping[str, str]) -> float | None:
        raw = h.get(H_DEAD_LETTERED) if self.time_field == "dead_lettered" else None
        raw = raw or h.get(H_TS)
        try:
            return float(raw) if raw else None
        except ValueError:
            return None


def parse_when(text: str, *, now: float | None = None, field_name: str = "since") -> float:
    """Seconds since the epoch from ``2h`` / ``30m`` / ``90s`` / ``1d`` ago, an ISO
    8601 time (local time if it has no offset) or epoch seconds."""
    s = text.strip()
    ago = _AGO.match(s)
    if ago:
        return (now if now is not None else time.time()) - float(ago[1]) * _UNIT[ago[2]]
    try:
        return float(s)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{text!r} is not a time: use e.g. 2h (ago), 30m, 2026-01-31T10:00, "
            "2026-01-31T10:00:00+08:00 or epoch seconds",
            field=field_name,
        ) from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # local time, as an operator types it
    return dt.astimezone(timezone.utc).timestamp()


def parse_header_match(pairs: list[str]) -> dict[str, str]:
    """``["k=v", "tenant=acme*"]`` -> ``{"k": "v", "tenant": "acme*"}``."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"{pair!r} is not name=value", field="header")
        out[name] = value
    return out
