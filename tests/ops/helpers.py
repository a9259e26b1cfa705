"""What the ops tests share: filling a topic, reading one back, checking order."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

import mqkit
from mqkit.errors import Unsupported
from mqkit.message import Message
from mqkit.policies.deadletter import Reason, dead_letter_record

if TYPE_CHECKING:
    from tests.ops.conftest import Backend

__all__ = [
    "Seen",
    "assert_key_order",
    "dead_letter_backlog",
    "fill",
    "first_occurrences",
    "has_stats",
    "key_of",
    "read_all",
    "wait_for",
]


def key_of(i: int, keys: int = 37) -> str:
    return f"user-{i % keys}"


def fill(
    mq: mqkit.Client,
    topic: str,
    n: int,
    *,
    prefix: str = "m",
    keys: int = 37,
    size: int = 64,
    ttl: float | None = None,
    serial: bool = False,
) -> list[str]:
    """Send ``n`` messages with ids ``{prefix}{i}``, keys ``user-{i % keys}``, header seq.

    ``serial`` sends one at a time (a backend whose batch send may reorder a key).
    """
    p = mq.producer(mqkit.Policy(persistent=mq.capabilities.supports("persistent")))
    if serial:
        return [
            p.send(
                topic,
                b"v" * size,
                key=key_of(i, keys),
                id=f"{prefix}{i}",
                headers={"seq": str(i), "kind": "even" if i % 2 == 0 else "odd"},
                ttl=ttl,
            ).id
            for i in range(n)
        ]
    ids = []
    for start in range(0, n, 1000):
        batch = [
            mqkit.OutgoingMessage(
                b"v" * size,
                key=key_of(i, keys),
                id=f"{prefix}{i}",
                headers={"seq": str(i), "kind": "even" if i % 2 == 0 else "odd"},
                ttl=ttl,
            )
            for i in range(start, min(n, start + 1000))
        ]
        ids += [r.id for r in p.send_many(topic, batch)]
    return ids


class Seen:
    """Messages a handler saw, thread-safe; per-key sequence numbers in order of handling."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.by_key: dict[str | None, list[int]] = defaultdict(list)
        self.messages: list[Message] = []
        self._lock = threading.Lock()

    def __call__(self, m: Message) -> None:
        with self._lock:
            self.ids.append(m.id)
            self.messages.append(m)
            if "seq" in m.headers:
                self.by_key[m.key].append(int(m.headers["seq"]))

    def in_key_order(self, *, ignore_repeats: bool = False) -> bool:
        for seqs in self.by_key.values():
            order = first_occurrences(seqs) if ignore_repeats else seqs
            if order != sorted(order):
                return False
        return True


def first_occurrences(values: list[int]) -> list[int]:
    """``values`` without repeats (a re-moved batch), keeping the first of each."""
    seen: set[int] = set()
    out = []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def read_all(
    mq: mqkit.Client,
    topic: str,
    group: str = "default",
    *,
    ordered: bool = True,
    idle: float = 1.0,
    expect: int | None = None,
) -> Seen:
    """Consume everything ``group`` has on ``topic`` with one consumer.

    ``expect``: stop once that many are handled (``idle`` then only bounds the
    wait for stragglers, e.g. messages a broker hands back late).
    """
    seen = Seen()
    policy = mqkit.Policy(ordering="per_key" if ordered else "none", prefetch=1000)
    c = mq.consumer(topic, group=group, policy=policy)
    try:
        c.run(seen, idle_timeout=idle, max_messages=expect)
    finally:
        c.close()
    return seen


def has_stats(mq: mqkit.Client, topic: str, group: str) -> bool:
    """Whether the backend reports queue statistics (ActiveMQ over STOMP does not)."""
    try:
        mq.stats(topic, group)
    except Unsupported:
        return False
    return True


def wait_for(condition: Callable[[], bool], *, timeout: float = 15.0) -> bool:
    """Poll ``condition`` until true: brokers publish offsets and counts a little later."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def assert_key_order(backend: Backend, seen: Seen) -> None:
    """Each key's messages in send order."""
    if seen.in_key_order():
        return
    bad = {k: v for k, v in seen.by_key.items() if v != sorted(v)}
    example = next(iter(bad.items()))
    raise AssertionError(f"per-key order broken for {len(bad)} key(s), e.g. {example}")


def dead_letter_backlog(
    mq: mqkit.Client, topic: str, n: int, *, reason: Reason, prefix: str
) -> list[str]:
    """Write ``n`` dead letters of ``topic`` into ``topic.dlq``, as consumers do; their ids."""
    records = []
    for i in range(n):
        original = mqkit.Message(
            id=f"{prefix}{i}",
            topic=topic,
            value=b"v" * 64,
            key=key_of(i),
            headers={"seq": str(i)},
            timestamp=time.time(),
        ).to_record()
        records.append(
            dead_letter_record(
                original, topic=topic, group="g", reason=reason, error="boom", attempts=5
            )
        )
    persistent = mq.capabilities.supports("persistent")
    for start in range(0, n, 100):
        out = mq.adapter.publish(
            f"{topic}.dlq", records[start : start + 100], confirm=True, persistent=persistent
        )
        failed = [o for o in out if isinstance(o, BaseException)]
        if failed:
            raise failed[0]
    return [r.id for r in records]
