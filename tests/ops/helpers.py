"""What the ops tests share: filling a topic, reading one back, checking order."""

from __future__ import annotations

import threading
from collections import defaultdict

import mqkit
from mqkit.message import Message

__all__ = ["Seen", "fill", "first_occurrences", "key_of", "read_all"]


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
) -> list[str]:
    """Send ``n`` messages with ids ``{prefix}{i}``, keys ``user-{i % keys}``, header seq."""
    p = mq.producer(mqkit.Policy(persistent=mq.capabilities.supports("persistent")))
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
) -> Seen:
    """Consume everything ``group`` has on ``topic`` with one consumer."""
    seen = Seen()
    policy = mqkit.Policy(ordering="per_key" if ordered else "none", prefetch=1000)
    c = mq.consumer(topic, group=group, policy=policy)
    try:
        c.run(seen, idle_timeout=idle)
    finally:
        c.close()
    return seen
