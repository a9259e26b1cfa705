"""Dead letters: ``<topic>.dlq`` with the original record and why it ended there.

The original value, key, id and headers are kept byte for byte, so ``replay``
can put the message back exactly as it was sent.
"""

from __future__ import annotations

import time
from enum import Enum

from mqkit.message import (
    DLQ_ATTEMPTS,
    DLQ_ERROR,
    DLQ_GROUP,
    DLQ_HEADERS,
    DLQ_REASON,
    DLQ_TOPIC,
    H_DELIVER_AT,
    H_EXPIRES,
    Record,
)

__all__ = [
    "DLQ_SUFFIX",
    "H_DEAD_LETTERED",
    "Reason",
    "dead_letter_record",
    "dlq_topic",
    "restore_record",
]

DLQ_SUFFIX = ".dlq"
MAX_ERROR_TEXT = 2000
H_DEAD_LETTERED = "x-mqkit-dlq-at"  # wall-clock time it was dead-lettered (replay --since)


class Reason(str, Enum):
    FAILED = "failed"
    EXPIRED = "expired"
    INVALID = "invalid"
    REJECTED = "rejected"


def dlq_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


def dead_letter_record(
    record: Record,
    *,
    topic: str,
    group: str,
    reason: Reason | str,
    error: BaseException | str | None,
    attempts: int,
) -> Record:
    """The record to publish to the dead-letter topic."""
    headers = dict(record.headers)
    # An expired message must stay readable in the DLQ; its expiry is kept in the
    # reason, not re-applied.  A delay has already been served.
    headers.pop(H_EXPIRES, None)
    headers.pop(H_DELIVER_AT, None)
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error or ""
    headers[DLQ_TOPIC] = headers.get(DLQ_TOPIC, topic) if topic.endswith(DLQ_SUFFIX) else topic
    headers[DLQ_GROUP] = group
    headers[DLQ_REASON] = reason.value if isinstance(reason, Reason) else str(reason)
    headers[DLQ_ERROR] = text[:MAX_ERROR_TEXT]
    headers[DLQ_ATTEMPTS] = str(attempts)
    headers[H_DEAD_LETTERED] = repr(time.time())
    return Record(record.key, record.value, headers)


def restore_record(record: Record) -> tuple[str | None, Record]:
    """For replay: the original topic (if recorded) and the record without DLQ headers."""
    headers = dict(record.headers)
    original = headers.get(DLQ_TOPIC)
    for h in (*DLQ_HEADERS, H_DEAD_LETTERED):
        headers.pop(h, None)
    return original, Record(record.key, record.value, headers)
