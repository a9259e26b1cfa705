"""Dedupe: the idempotent consumer -- a message id's handler runs to completion once.

Marker states per (topic, group, id), and why there are two:

* absent            -> never seen, or a crashed run's lease ran out: run the handler.
* ``processing:<owner>`` with a lease (``Policy.processing_timeout``)
                    -> a handler is running right now.  A second copy that arrives
                       meanwhile (a duplicate send, or a redelivery to another member)
                       is put back with a delay instead of running concurrently.  If the
                       runner crashes, the lease expires and the next delivery runs it
                       again: *started but never finished is retried*.
* ``done``          -> written right after the handler returned and BEFORE the ack.
                       A consumer killed between the two gets the message redelivered,
                       sees ``done`` and acks without running: *finished is never run
                       again*.  Kept for ``Policy.dedupe_ttl``.

A failing handler releases its ``processing`` marker (only if it still owns it) so
the retry can claim it.  The one window left -- a crash after the handler's side
effect but before ``done`` is written -- is a few microseconds wide; handlers whose
effect must be exactly-once write it in the same transaction as their own marker.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from mqkit.errors import ConfigError, ConnectionLost, MissingDriver

__all__ = [
    "Claim",
    "ClaimResult",
    "DedupeStore",
    "MemoryDedupeStore",
    "RedisDedupeStore",
    "dedupe_key",
    "open_store",
]


class Claim(str, Enum):
    CLAIMED = "claimed"
    DUPLICATE = "duplicate"
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class ClaimResult:
    state: Claim
    retry_after: float = 0.0


@runtime_checkable
class DedupeStore(Protocol):
    def claim(self, key: str, owner: str, lease: float) -> ClaimResult: ...

    def complete(self, key: str, owner: str, ttl: float) -> None: ...

    def release(self, key: str, owner: str) -> None: ...

    def close(self) -> None: ...


def dedupe_key(topic: str, group: str, message_id: str) -> str:
    return f"mqkit:dedupe:{topic}:{group}:{message_id}"


def new_owner() -> str:
    return uuid.uuid4().hex


DONE = "done"
PROCESSING = "processing:"


class MemoryDedupeStore:
    """In-process store: for tests and single-process apps; lost on restart."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _get(self, key: str, now: float) -> str | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= now:
            del self._data[key]
            return None
        return item[0]

    def claim(self, key: str, owner: str, lease: float) -> ClaimResult:
        now = time.monotonic()
        with self._lock:
            value = self._get(key, now)
            if value is None:
                self._data[key] = (PROCESSING + owner, now + lease)
                return ClaimResult(Claim.CLAIMED)
            if value == DONE:
                return ClaimResult(Claim.DUPLICATE)
            if value == PROCESSING + owner:
                self._data[key] = (value, now + lease)  # the owner renews its lease
                return ClaimResult(Claim.CLAIMED)
            return ClaimResult(Claim.BUSY, max(0.0, self._data[key][1] - now))

    def complete(self, key: str, owner: str, ttl: float) -> None:
        with self._lock:
            self._data[key] = (DONE, time.monotonic() + ttl)

    def release(self, key: str, owner: str) -> None:
        with self._lock:
            item = self._data.get(key)
            if item is not None and item[0] == PROCESSING + owner:
                del self._data[key]

    def close(self) -> None:
        pass


_PROCESS_STORE = MemoryDedupeStore()  # "memory://" is shared by every consumer of the process

_CLAIM = """
local ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if ok then return {1, 0} end
local v = redis.call('GET', KEYS[1])
if v == 'done' then return {2, 0} end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, 0}
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then ttl = 0 end
return {3, ttl}
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisDedupeStore:
    """Redis store: shared by every consumer of a group, survives consumer crashes.

    Claim is one Lua script (SET NX or inspect), so two consumers can never both
    claim an id.  Run Redis with ``appendfsync always`` if markers must survive a
    Redis crash too.  Redis being unreachable is a :class:`ConnectionLost` (the
    message stays unacked and comes back), never a silent skip of dedupe.
    """

    def __init__(self, url: str) -> None:
        try:
            import redis
        except ModuleNotFoundError as exc:
            raise MissingDriver("redis dedupe", "redis", "redis") from exc
        try:
            self._client: Any = redis.Redis.from_url(url, socket_timeout=10.0)
        except ValueError as exc:
            raise ConfigError(f"{url!r}: {exc}", field="dedupe") from exc
        self._url = url
        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        )
        self._claim = self._client.register_script(_CLAIM)
        self._release = self._client.register_script(_RELEASE)

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise ConnectionLost(
                f"the Redis dedupe store at {self._url} is unreachable ({exc}); start Redis "
                "or fix Policy.dedupe -- the message stays unacked and will be redelivered"
            ) from exc

    def claim(self, key: str, owner: str, lease: float) -> ClaimResult:
        with self._reaching():
            code, ttl_ms = self._claim(
                keys=[key], args=[PROCESSING + owner, max(1, int(lease * 1000))]
            )
        if code == 1:
            return ClaimResult(Claim.CLAIMED)
        if code == 2:
            return ClaimResult(Claim.DUPLICATE)
        return ClaimResult(Claim.BUSY, int(ttl_ms) / 1000.0)

    def complete(self, key: str, owner: str, ttl: float) -> None:
        with self._reaching():
            self._client.set(key, DONE, px=max(1, int(ttl * 1000)))

    def release(self, key: str, owner: str) -> None:
        with self._reaching():
            self._release(keys=[key], args=[PROCESSING + owner])

    def close(self) -> None:
        self._client.close()


def open_store(spec: Any) -> DedupeStore | None:
    """A store from ``Policy.dedupe``: None, 'memory://', a Redis URL, or a store object."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec == "memory://":
            return _PROCESS_STORE
        return RedisDedupeStore(spec)
    if isinstance(spec, DedupeStore):
        return spec
    raise ConfigError(
        f"{type(spec).__name__} is not a dedupe store; give a Redis URL or an object with "
        "claim/complete/release/close",
        field="dedupe",
    )
