"""Names and headers: how a topic, a group and a record look on ActiveMQ over STOMP.

A topic ``T`` is the virtual topic ``/topic/VirtualTopic.T``; group ``G`` reads
the queue ``/queue/Consumer.G.VirtualTopic.T`` that ActiveMQ's virtual-topic
interceptor fills with a copy of every message sent to the topic once that
queue exists.  A ``.`` in a group name would split the ``Consumer.*.`` match,
so it is written ``~`` (outside mqkit's name alphabet: the mapping is
one-to-one).

Record headers travel as STOMP headers (hence JMS properties).  A user header
whose name STOMP or ActiveMQ would interpret (``persistent``, ``expires``,
``JMSXGroupID``, ``AMQ_SCHEDULED_DELAY``...) is sent under ``x-mqkit-h-`` +
name, so it is carried, not obeyed; on the way back every name the broker adds
is dropped and the prefix removed.  (Escaping ``:``, newlines and ``\\`` in
names and values is the frame encoder's job: :mod:`._wire`.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mqkit.message import Record

__all__ = [
    "ATTEMPT_HEADER",
    "KEY_HEADER",
    "Names",
    "decode_record",
    "encode_headers",
]

KEY_HEADER = "x-mqkit-key"
"""The record key (JMSXGroupID also carries it, but ActiveMQ does not echo that back)."""

ATTEMPT_HEADER = "x-mqkit-attempt"
"""Attempt number of a copy the adapter re-sent for a ``nack`` (absent: 1)."""

ESCAPE_PREFIX = "x-mqkit-h-"

# Headers STOMP or ActiveMQ 5 interpret on SEND, or add to MESSAGE frames.
RESERVED = frozenset(
    {
        "ack",
        "accept-version",
        "browser",
        "content-encoding",
        "content-length",
        "content-type",
        "correlation-id",
        "destination",
        "dlqDeliveryFailureCause",
        "expires",
        "heart-beat",
        "host",
        "id",
        "login",
        "message",
        "message-id",
        "original-destination",
        "originalExpiration",
        "passcode",
        "persistent",
        "priority",
        "receipt",
        "receipt-id",
        "redelivered",
        "redeliveryDelay",
        "reply-to",
        "scheduledJobId",
        "server",
        "session",
        "subscription",
        "timestamp",
        "transaction",
        "transformation",
        "transformation-error",
        "type",
        "version",
    }
)
RESERVED_PREFIXES = ("JMS", "AMQ_", "_AMQ", "activemq.", ESCAPE_PREFIX)


def _reserved(name: str) -> bool:
    return not name or name in RESERVED or name.startswith(RESERVED_PREFIXES)


class Names:
    """Destination names for one broker's virtual-topic naming."""

    def __init__(
        self, topic_prefix: str = "VirtualTopic.", consumer_prefix: str = "Consumer."
    ) -> None:
        self.topic_prefix = topic_prefix
        self.consumer_prefix = consumer_prefix

    def topic(self, topic: str) -> str:
        return f"/topic/{self.topic_prefix}{topic}"

    def group_queue(self, topic: str, group: str) -> str:
        return f"/queue/{self.consumer_prefix}{group.replace('.', '~')}.{self.topic_prefix}{topic}"

    def group_queue_name(self, topic: str, group: str) -> str:
        """The queue's name without ``/queue/`` (statistics destinations use it)."""
        return self.group_queue(topic, group)[len("/queue/") :]


def encode_headers(
    record: Record,
    *,
    persistent: bool,
    delay: float | None = None,
    attempt: int | None = None,
) -> dict[str, str]:
    """The STOMP headers of a SEND carrying ``record``."""
    out: dict[str, str] = {}
    for name, value in record.headers.items():
        out[ESCAPE_PREFIX + name if _reserved(name) else name] = value
    if record.key is not None:
        out[KEY_HEADER] = record.key
        if record.key:
            out["JMSXGroupID"] = record.key  # message groups: one consumer owns a key
    if attempt is not None and attempt > 1:
        out[ATTEMPT_HEADER] = str(attempt)
    out["persistent"] = "true" if persistent else "false"
    if delay:
        out["AMQ_SCHEDULED_DELAY"] = str(max(1, math.ceil(delay * 1000)))
    return out


def decode_record(headers: Mapping[str, str], body: Any) -> tuple[Record, int]:
    """The record of a MESSAGE frame and its attempt number.

    ``attempt`` is the adapter's own count of re-sent copies (1 if none) plus one
    if ActiveMQ flags the delivery ``redelivered`` (a consumer before this one
    received it and did not ack): STOMP shows the flag, not ActiveMQ's counter.
    """
    user: dict[str, str] = {}
    key: str | None = None
    attempt = 1
    for name, value in headers.items():
        if name == KEY_HEADER:
            key = value
        elif name == ATTEMPT_HEADER:
            try:
                attempt = max(1, int(value))
            except ValueError:
                attempt = 1
        elif name.startswith(ESCAPE_PREFIX):
            user[name[len(ESCAPE_PREFIX) :]] = value
        elif not _reserved(name):
            user[name] = value
    if headers.get("redelivered") == "true":
        attempt += 1
    value_bytes = body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")
    return Record(key, value_bytes, user), attempt
