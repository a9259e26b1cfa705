"""mqkit names -> RocketMQ names.

RocketMQ allows ``[%a-zA-Z0-9_-]`` in topic and group names (no '.'), at most
127 characters for a topic -- and the pop consumer's retry topic
``%RETRY%<group>_<topic>`` must fit in those 127 too.  mqkit names allow '.'
(every dead-letter topic is ``<topic>.dlq``), so a name that RocketMQ would
refuse, or that is too long, becomes: the invalid characters replaced by '_',
cut to fit, plus '_' and 8 hex digits of the SHA-1 of the original name.  The
hash keeps distinct mqkit names distinct (``a.b`` and ``a_b`` do not meet);
valid short names stay as they are, so topics made by other tools keep their
names.  Examples: ``orders`` -> ``orders``, ``orders.dlq`` ->
``orders_dlq_<8 hex>``.

A mqkit group is scoped to its topic (like Kafka's ``<topic>:<group>``): the
RocketMQ consumer group is ``group_id_format`` (``{topic}:{group}``) mapped the
same way, so ``billing`` on ``orders`` is ``orders_billing_<8 hex>``.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["GROUP_MAX", "TOPIC_MAX", "group_id", "rocket_name"]

TOPIC_MAX = 56  # 7 ("%RETRY%") + 62 + 1 + 56 = 126 < 127
GROUP_MAX = 62
_VALID = re.compile(r"^[A-Za-z0-9_-]+$")
_INVALID_CHAR = re.compile(r"[^A-Za-z0-9_-]")


def rocket_name(name: str, limit: int = TOPIC_MAX) -> str:
    """``name`` if RocketMQ accepts it as is, else a sanitised name with a hash suffix."""
    if _VALID.match(name) and len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    base = _INVALID_CHAR.sub("_", name)[: limit - 9]
    return f"{base}_{digest}"


def group_id(topic: str, group: str, fmt: str = "{topic}:{group}") -> str:
    """The RocketMQ consumer group of mqkit ``group`` on mqkit ``topic``."""
    return rocket_name(fmt.format(topic=topic, group=group), GROUP_MAX)
