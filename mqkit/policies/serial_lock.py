"""Serial lock: one handler per key at a time across application instances (Redis).

Why, when ``ordering="per_key"`` already gives a key one lane: the broker's
guarantee ends at delivery.  During a rebalance (Kafka), with competing queue
consumers (RabbitMQ without single-active-consumer), or when the same key's
events arrive on several topics, two instances can run a key's handler at
once -- the seed's "MQ集群怎么保证数据的串行处理" (a distributed lock).  With
``Policy(ordering="per_key", serial_lock="redis://...")`` the consumer takes
the key's lock around the handler; a key whose lock is taken elsewhere waits
in its lane (other keys go on), without using up an attempt.

The lock, and why each part:

* ``SET key owner NX PX lease`` in a Lua script that also ``INCR``\\s a fencing
  counter: the **fencing token** strictly increases with every grant, so a
  store that remembers the highest token it saw can refuse a write from a
  holder that was paused past its lease (``current_fence()`` in the handler);
* a **lease** (default 30 s) renewed by one background thread every third of
  it while the handler runs: a crashed instance frees the key after at most
  one lease; a holder whose renewal found the lease gone is told
  (``LockHandle.lost``) instead of believing it still holds it;
* **release only by the owner**: compare-and-delete in Lua, so a late release
  never deletes somebody else's lock.

Keys share one hash tag (``{mqkit:lock}``) so the script's two keys live in
one slot on Redis Cluster.  The fencing counter is one per namespace: tokens
increase across all keys, which is all fencing needs.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from mqkit.errors import ConfigError, ConnectionLost, MissingDriver, MQError

__all__ = [
    "LockHandle",
    "LockTimeout",
    "RedisSerialLock",
    "SerialBusy",
    "SerialLock",
    "current_fence",
    "holding",
    "open_serial_lock",
    "serial_key",
    "take",
]

log = logging.getLogger("mqkit.serial_lock")

NAMESPACE = "{mqkit:lock}"
DEFAULT_LEASE = 30.0

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('PTTL', KEYS[1])}
end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, fence}
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_fence: contextvars.ContextVar[int | None] = contextvars.ContextVar("mqkit_fence", default=None)


def current_fence() -> int | None:
    """The fencing token of the serial lock held around the running handler, if any.

    Pass it to the store your handler writes to, which refuses tokens lower
    than the highest it has seen for the key.  Set in the consumer's thread
    (synchronous handlers).
    """
    return _fence.get()


class LockTimeout(MQError):
    """The lock was not granted in time; someone else holds the key."""


@dataclass
class LockHandle:
    """A granted lock: ``fence`` is its fencing token; ``lost`` is set if the lease lapsed."""

    name: str
    owner: str
    fence: int
    lost: threading.Event = field(default_factory=threading.Event)

    @property
    def valid(self) -> bool:
        return not self.lost.is_set()


@runtime_checkable
class SerialLock(Protocol):
    """What the consumer needs from a lock; :class:`RedisSerialLock` is the one shipped."""

    def acquire(self, name: str, *, timeout: float | None = 0.0) -> LockHandle | None: ...

    def release(self, handle: LockHandle) -> bool: ...

    def retry_after(self, name: str) -> float: ...

    def close(self) -> None: ...


def serial_key(scope: str, topic: str, group: str, key: str) -> str:
    """The lock name of a message key: per topic and group, or the key alone."""
    return f"key:{key}" if scope == "key" else f"group:{topic}:{group}:{key}"


class RedisSerialLock:
    """A lease-based distributed lock with fencing tokens; see the module doc.

    ``scope="group"`` (default) serialises a key within one topic and group;
    ``scope="key"`` serialises the key everywhere this lock's namespace is
    used (events of one user on several topics).
    """

    def __init__(
        self,
        url: str,
        *,
        lease: float = DEFAULT_LEASE,
        scope: Literal["group", "key"] = "group",
        namespace: str = NAMESPACE,
    ) -> None:
        if lease <= 0:
            raise ConfigError(f"must be seconds > 0, got {lease}", field="serial_lock.lease")
        if scope not in ("group", "key"):
            raise ConfigError("must be 'group' or 'key'", field="serial_lock.scope")
        try:
            import redis
        except ModuleNotFoundError as exc:
            raise MissingDriver("redis serial lock", "redis", "redis") from exc
        try:
            self._client: Any = redis.Redis.from_url(url, socket_timeout=10.0)
        except ValueError as exc:
            raise ConfigError(f"{url!r}: {exc}", field="serial_lock") from exc
        self.url = url
        self.lease = lease
        self.scope = scope
        self._ns = namespace
        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        )
        self._acquire = self._client.register_script(_ACQUIRE)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self._me = uuid.uuid4().hex
        self._seq = itertools.count(1)
        self._held: dict[str, LockHandle] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._renewer: threading.Thread | None = None

    def _key(self, name: str) -> str:
        return f"{self._ns}:k:{name}"

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise ConnectionLost(
                f"the Redis serial lock at {self.url} is unreachable ({exc}); start Redis or "
                "fix Policy.serial_lock -- the message stays unacked and will be retried"
            ) from exc

    def _try(self, name: str) -> tuple[LockHandle | None, float]:
        owner = f"{self._me}:{next(self._seq)}"
        with self._reaching():
            granted, value = self._acquire(
                keys=[self._key(name), f"{self._ns}:fence"],
                args=[owner, max(1, int(self.lease * 1000))],
            )
        if int(granted) != 1:
            return None, max(0, int(value)) / 1000.0
        handle = LockHandle(name, owner, int(value))
        with self._lock:
            self._held[owner] = handle
        self._start_renewer()
        return handle, 0.0

    def acquire(self, name: str, *, timeout: float | None = 0.0) -> LockHandle | None:
        """The lock, or None if not granted within ``timeout`` seconds (None: wait forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        while True:
            handle, ttl = self._try(name)
            if handle is not None:
                return handle
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            wait = min(pause, ttl if ttl > 0 else pause)
            if deadline is not None:
                wait = min(wait, deadline - now)
            time.sleep(max(0.001, wait))
            pause = min(pause * 2, 0.2)

    @contextmanager
    def hold(self, name: str, *, timeout: float | None = None) -> Iterator[LockHandle]:
        """``with lock.hold("user-42") as h:`` -- raises :class:`LockTimeout` if not granted."""
        handle = self.acquire(name, timeout=timeout)
        if handle is None:
            raise LockTimeout(f"lock {name!r} is held elsewhere (waited {timeout} s)")
        token = _fence.set(handle.fence)
        try:
            yield handle
        finally:
            _fence.reset(token)
            self.release(handle)

    def retry_after(self, name: str) -> float:
        """Seconds worth waiting before trying a held lock again (short: holders finish fast)."""
        return 0.05

    def release(self, handle: LockHandle) -> bool:
        """Release if still ours; False if the lease had lapsed (someone may hold it now)."""
        with self._lock:
            self._held.pop(handle.owner, None)
        with self._reaching():
            released = int(self._release(keys=[self._key(handle.name)], args=[handle.owner]))
        if not released:
            handle.lost.set()
        return bool(released)

    def _start_renewer(self) -> None:
        with self._lock:
            if self._renewer is not None or self._closed:
                return
            self._renewer = threading.Thread(
                target=self._renew_loop, name="mqkit-serial-lock", daemon=True
            )
            self._renewer.start()

    def _renew_loop(self) -> None:
        every = self.lease / 3
        while not self._wake.wait(every):
            with self._lock:
                held = list(self._held.values())
            for h in held:
                try:
                    ok = int(
                        self._renew(
                            keys=[self._key(h.name)],
                            args=[h.owner, max(1, int(self.lease * 1000))],
                        )
                    )
                except self._errors:
                    continue  # Redis away: try again next round; the lease may run out
                if not ok:
                    h.lost.set()
                    with self._lock:
                        self._held.pop(h.owner, None)

    def abandon(self) -> None:
        """Stop renewing without releasing (what a crash does): for tests."""
        self._wake.set()

    def close(self) -> None:
        """Stop renewing, release what is still held, close the connection."""
        with self._lock:
            self._closed = True
            held = list(self._held.values())
        self._wake.set()
        for h in held:
            with contextlib.suppress(ConnectionLost):  # else its lease runs out on its own
                self.release(h)
        self._client.close()


class SerialBusy(Exception):
    """The key's lock is held elsewhere: the consumer keeps the message and tries later."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"the key's serial lock is held elsewhere; retry in {retry_after} s")
        self.retry_after = retry_after


def open_serial_lock(spec: Any) -> SerialLock | None:
    """A lock from ``Policy.serial_lock``: None, a Redis URL, or a :class:`SerialLock`."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return RedisSerialLock(spec)
    if isinstance(spec, SerialLock):
        return spec
    raise ConfigError(
        f"{type(spec).__name__} is not a serial lock; give a Redis URL or a RedisSerialLock",
        field="serial_lock",
    )


def take(lock: SerialLock, topic: str, group: str, key: str | None) -> LockHandle | None:
    """Before a handler: ``key``'s lock (None for a message without key); raises
    :class:`SerialBusy` if it is held elsewhere, ConnectionLost if Redis is away."""
    if key is None:
        return None
    name = serial_key(getattr(lock, "scope", "group"), topic, group, key)
    handle = lock.acquire(name, timeout=0.0)
    if handle is None:
        raise SerialBusy(lock.retry_after(name))
    return handle


@contextmanager
def holding(lock: SerialLock, handle: LockHandle | None) -> Iterator[None]:
    """Around the handler: the fence visible to it (:func:`current_fence`), then release.

    A release that cannot reach Redis is logged, not raised: the handler did
    its work, and the lease runs out on its own.
    """
    if handle is None:
        yield
        return
    token = _fence.set(handle.fence)
    try:
        yield
    finally:
        _fence.reset(token)
        try:
            lock.release(handle)
        except ConnectionLost as exc:
            log.warning("could not release serial lock %s: %s", handle.name, exc)
