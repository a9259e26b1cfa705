"""How mqkit names and routes things on RabbitMQ: pure functions, no driver.

Layout (``:``, ``#`` and ``@`` cannot occur in mqkit topic or group names, so
no two names below can collide)::

    exchange <topic>               fanout, durable: every group gets every message
      queue  <topic>:<group>       one per unordered group; members compete
      exchange <topic>:<group>#lanes   direct, bound to <topic>: an ordered group
        queue <topic>:<group>#<i>  lane i, x-single-active-consumer
    exchange <topic>@delay-<ms>    fanout, auto-delete: delayed sends
      queue  <topic>@delay-<ms>    x-message-ttl=<ms>, dead-letters into <topic>

Every message is published with routing key ``slot(key)``: one of ``SLOTS``
numbers computed from the key (CRC-32, so any client can reproduce it).  An
ordered group binds slot ``s`` to lane ``s % lanes``, so a key always lands in
the same lane without the producer knowing how many lanes a group has, and a
delayed message keeps its slot when it is dead-lettered back into the topic.
"""

from __future__ import annotations

import math
import zlib

from mqkit.errors import ConfigError

__all__ = [
    "MAX_DELAY_MS",
    "SLOTS",
    "delay_bucket_ms",
    "delay_name",
    "group_queue",
    "lane_of_slot",
    "lane_queue",
    "lanes_exchange",
    "slot",
]

SLOTS = 32
"""Routing slots per topic; also the most lanes an ordered group can have."""

MAX_DELAY_MS = 2**32 - 1
"""RabbitMQ's limit for x-message-ttl (about 49 days)."""

_MAX_NAME = 255  # AMQP short string: exchange and queue names


def _checked(name: str, field: str) -> str:
    if len(name.encode()) > _MAX_NAME:
        raise ConfigError(
            f"the RabbitMQ name {name[:60]!r}... would be {len(name.encode())} bytes; "
            f"AMQP allows {_MAX_NAME}: use a shorter topic or group name",
            field=field,
        )
    return name


def slot(key: str | None, message_id: str) -> str:
    """The routing key of a message: its key's slot (keyless messages spread by id)."""
    basis = key if key is not None else message_id
    return str(zlib.crc32(basis.encode("utf-8", "surrogatepass")) % SLOTS)


def lane_of_slot(s: int, lanes: int) -> int:
    return s % lanes


def group_queue(topic: str, group: str) -> str:
    return _checked(f"{topic}:{group}", "group")


def lanes_exchange(topic: str, group: str) -> str:
    return _checked(f"{topic}:{group}#lanes", "group")


def lane_queue(topic: str, group: str, lane: int) -> str:
    return _checked(f"{topic}:{group}#{lane}", "group")


def delay_name(topic: str, ms: int) -> str:
    return _checked(f"{topic}@delay-{ms}", "topic")


def delay_bucket_ms(delay: float) -> int:
    """Milliseconds of the delay queue used for ``delay`` seconds: never shorter.

    Rounded UP to two significant digits (at most 10% later than asked), so a
    topic needs a handful of delay queues rather than one per distinct value.
    """
    if not math.isfinite(delay) or delay <= 0:
        raise ConfigError(f"must be seconds > 0, got {delay!r}", field="delay")
    ms = max(1, math.ceil(delay * 1000))
    if ms >= 100:
        mag = 10 ** (len(str(ms)) - 2)
        ms = -(-ms // mag) * mag
    if ms > MAX_DELAY_MS:
        raise ConfigError(
            f"{delay!r} s is longer than RabbitMQ's longest message TTL ({MAX_DELAY_MS // 1000} s)",
            field="delay",
        )
    return ms
