"""TTL that never loses a message: an expired one is dead-lettered, not dropped.

The expiry is an absolute wall-clock time in a reserved header, checked when
the message reaches a consumer, so it behaves the same on every broker.
"""

from __future__ import annotations

import time

from mqkit.message import Record

__all__ = ["expires_at", "is_expired"]


def expires_at(ttl: float | None, now: float | None = None) -> float | None:
    if ttl is None:
        return None
    return (now if now is not None else time.time()) + ttl


def is_expired(record: Record, now: float | None = None) -> bool:
    at = record.expires_at
    return at is not None and (now if now is not None else time.time()) >= at
