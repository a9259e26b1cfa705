"""The producer: validates, encodes, stamps ids, and sends with the confirm policy."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mqkit.codecs import BYTES, encode
from mqkit.errors import Closed, ConfigError, MessageTooLarge
from mqkit.message import H_CONTENT_TYPE, H_EXPIRES, H_ID, H_TS, RESERVED_PREFIX, Receipt, Record
from mqkit.policies.confirm import receipts_or_raise
from mqkit.policy import Policy

if TYPE_CHECKING:
    from mqkit.client import Client

__all__ = ["OutgoingMessage", "Producer", "check_topic"]

_RESERVED_NAMES = len(H_ID) + len(H_TS) + len(H_CONTENT_TYPE)
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def check_topic(topic: Any, field: str = "topic") -> str:
    if not isinstance(topic, str) or not _TOPIC.match(topic) or topic in (".", ".."):
        raise ConfigError(
            f"{topic!r} is not a valid topic name: use 1-200 characters of letters, digits, "
            "'.', '_' and '-' (every broker accepts these)",
            field=field,
        )
    return topic


class _Ids:
    """Random 128-bit message ids (as random as uuid4's) from pooled ``os.urandom`` bytes.

    One ``getrandom`` call per 256 ids instead of one per send: the syscall was
    a tenth of a single send's cost.  The pool is dropped in a forked child, so
    parent and child never hand out the same ids.
    """

    _POOL = 4096  # bytes: 256 ids

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hex = ""
        self._pos = 0

    def take(self, n: int) -> str:
        """``n`` ids as one hex string, 32 characters each."""
        need = 32 * n
        with self._lock:
            if self._pos + need > len(self._hex):
                self._hex = os.urandom(max(self._POOL, 16 * n)).hex()
                self._pos = 0
            start = self._pos
            self._pos = start + need
            return self._hex[start : start + need]

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._hex = ""
        self._pos = 0


_ids = _Ids()
os.register_at_fork(after_in_child=_ids.reset)


def _not_seconds(value: object) -> bool:
    """True unless ``value`` is a real number of seconds (bool is an int, but not that)."""
    return isinstance(value, bool) or not isinstance(value, (int, float))


@dataclass(slots=True)
class OutgoingMessage:
    """One message of a ``send_many`` batch."""

    value: Any
    key: str | None = None
    headers: Mapping[str, str] | None = None
    id: str | None = None
    ttl: float | None = None


class Producer:
    """Sends messages; with ``confirm`` a send returns only once the broker has them."""

    def __init__(self, client: Client, policy: Policy) -> None:
        self._client = client
        self.policy = policy
        self._closed = False
        self._lock = threading.Lock()

    def send(
        self,
        topic: str,
        value: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        id: str | None = None,
        ttl: float | None = None,
        delay: float | None = None,
    ) -> Receipt:
        """Send one message; raises PublishError if the broker did not confirm it."""
        return self.send_many(topic, [OutgoingMessage(value, key, headers, id, ttl)], delay=delay)[
            0
        ]

    def send_many(
        self,
        topic: str,
        messages: Iterable[OutgoingMessage | Any],
        *,
        delay: float | None = None,
    ) -> list[Receipt]:
        """Send a batch in one round trip where the backend can; per-message outcome."""
        if self._closed:
            raise Closed("this producer is closed; get a new one from mq.producer()")
        check_topic(topic)
        if delay is not None and (_not_seconds(delay) or delay < 0):
            raise ConfigError(f"must be seconds >= 0, got {delay!r}", field="delay")
        items = list(messages)
        if not items:
            return []
        ids = _ids.take(len(items))
        limit = self._client.max_message_size
        now = time.time()
        ts = repr(now)  # one send time for the batch: repr of a float is not free
        records = [
            self._record(m, ids[32 * i : 32 * i + 32], now, ts, limit)
            for i, m in enumerate(items)
        ]
        self._client.ensure_topic(topic)
        outcomes = self._client.adapter.publish(
            topic,
            records,
            confirm=self.policy.confirm,
            persistent=self.policy.persistent,
            delay=delay or None,
        )
        return receipts_or_raise(topic, [r.id for r in records], outcomes)

    def _record(
        self, m: OutgoingMessage | Any, fresh_id: str, now: float, ts: str, limit: int
    ) -> Record:
        """The wire record of one message (validated, reserved headers stamped, size checked)."""
        # The usual batch item, bytes with nothing else: the checks below cannot fail but
        # for the size, and that is the same sum.
        if (
            type(m) is bytes
            and self.policy.ttl is None
            and len(m) + _RESERVED_NAMES + len(fresh_id) + len(ts) + len(BYTES) <= limit
        ):
            return Record(None, m, {H_ID: fresh_id, H_TS: ts, H_CONTENT_TYPE: BYTES})
        if not isinstance(m, OutgoingMessage):
            m = OutgoingMessage(m)
        value, content_type = encode(m.value)
        key = m.key
        if key is not None and not isinstance(key, str):
            raise ConfigError(f"must be a str or None, got {type(key).__name__}", field="key")
        headers: dict[str, str] = {}
        size = len(value) + (len(key) if key else 0)
        if m.headers:
            if not isinstance(m.headers, Mapping):
                raise ConfigError(
                    f"must be a dict of str to str, got {type(m.headers).__name__}",
                    field="headers",
                )
            for k, v in m.headers.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise ConfigError(
                        f"headers must map str to str; {k!r}: {v!r} is not "
                        "(convert values with str())",
                        field="headers",
                    )
                if k.startswith(RESERVED_PREFIX):
                    raise ConfigError(
                        f"{k!r} uses the reserved prefix {RESERVED_PREFIX!r}", field="headers"
                    )
                headers[k] = v
                size += len(k) + len(v)
        elif m.headers is not None and not isinstance(m.headers, Mapping):
            raise ConfigError(
                f"must be a dict of str to str, got {type(m.headers).__name__}", field="headers"
            )
        mid = m.id
        if mid is None:
            mid = fresh_id
        elif not isinstance(mid, str) or not mid or len(mid) > 256:
            raise ConfigError("must be a non-empty str of at most 256 characters", field="id")
        ttl = m.ttl if m.ttl is not None else self.policy.ttl
        if ttl is not None and (_not_seconds(ttl) or ttl <= 0):
            raise ConfigError(f"must be seconds > 0, got {ttl!r}", field="ttl")
        headers[H_ID] = mid
        headers[H_TS] = ts
        headers[H_CONTENT_TYPE] = content_type
        size += _RESERVED_NAMES + len(mid) + len(ts) + len(content_type)
        if ttl is not None:
            exp = repr(now + ttl)
            headers[H_EXPIRES] = exp
            size += len(H_EXPIRES) + len(exp)
        if size > limit:
            raise MessageTooLarge(
                f"message {mid} is {size} bytes; the {self._client.scheme} backend "
                f"accepts at most {limit} (raise max_message_size, or store the payload "
                "elsewhere and send a reference)",
                field="value",
            )
        return Record(key, value, headers)

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def batch(values: Sequence[Any]) -> list[OutgoingMessage]:
    return [v if isinstance(v, OutgoingMessage) else OutgoingMessage(v) for v in values]
