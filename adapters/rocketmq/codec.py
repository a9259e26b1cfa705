"""Record <-> rocketmq-python-client Message.

Headers travel as RocketMQ user properties, one per header, so other
RocketMQ tools see them.  What a property cannot carry exactly goes into one
adapter-private JSON property, ``x-mqkit-rmq``, instead: a header whose name
RocketMQ reserves for itself (``KEYS``, ``DELAY``, ``__*`` ...) or whose name or
value is empty or holds control characters (RocketMQ drops empty values and
uses \\x01/\\x02 as separators); a key that is empty, has whitespace (``KEYS``
is space-separated) or is long; and the fact that the value is empty (RocketMQ
refuses an empty body, so one NUL byte is sent instead).

The key also becomes the message's RocketMQ ``keys`` (searchable in the
dashboard) and, on FIFO-capable topics, its message group: ``message_group``
is the key itself when RocketMQ accepts it as one (1-64 characters, no
control characters), else ``k`` + 32 hex digits of its SHA-256.  A message
without the reserved ``x-mqkit-id`` header (sent by another RocketMQ client)
gets the RocketMQ message id as its mqkit id, and its born time as timestamp.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from mqkit.message import H_ID, H_TS, Record

__all__ = ["BLOB", "SYSTEM_PROPERTIES", "message_group", "to_message", "to_record"]

BLOB = "x-mqkit-rmq"

# org.apache.rocketmq.common.message.MessageConst (5.3.3): names the broker owns.
SYSTEM_PROPERTIES = frozenset(
    (
        "1ST_POP_TIME",
        "ARRIVE_TIME",
        "BORN_TIMESTAMP",
        "BUYER_ID",
        "CLUSTER",
        "CONSUME_START_TIME",
        "CORRECTION_FLAG",
        "CORRELATION_ID",
        "DELAY",
        "DLQ_ORIGIN_MESSAGE_ID",
        "DLQ_ORIGIN_TOPIC",
        "DUP_INFO",
        "EXTEND_UNIQ_INFO",
        "INNER_BASE",
        "INNER_MULTI_DISPATCH",
        "INNER_MULTI_QUEUE_OFFSET",
        "INNER_NUM",
        "INSTANCE_ID",
        "KEYS",
        "MAX_OFFSET",
        "MAX_RECONSUME_TIMES",
        "MIN_OFFSET",
        "MQ2_FLAG",
        "MSG_REGION",
        "MSG_TYPE",
        "ORIGIN_MESSAGE_ID",
        "PGROUP",
        "POP_CK",
        "POP_CK_OFFSET",
        "PUSH_REPLY_TIME",
        "REAL_QID",
        "REAL_TOPIC",
        "RECONSUME_TIME",
        "REPLY_TO_CLIENT",
        "RETRY_TOPIC",
        "TAGS",
        "TIMER_DELAY_LEVEL",
        "TIMER_DELAY_MS",
        "TIMER_DELAY_SEC",
        "TIMER_DELIVER_MS",
        "TIMER_DEL_UNIQKEY",
        "TIMER_DEQUEUE_MS",
        "TIMER_ENQUEUE_MS",
        "TIMER_OUT_MS",
        "TIMER_ROLL_TIMES",
        "TRACE_ON",
        "TRANSFER_FLAG",
        "TRAN_MSG",
        "TRAN_PREPARED_QUEUE_OFFSET",
        "TTL",
        "UNIQ_KEY",
        "WAIT",
    )
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_GROUP = 64
MAX_KEY = 128


def _reserved(name: str) -> bool:
    return name in SYSTEM_PROPERTIES or name.startswith("__") or name == BLOB


def _plain_property(name: str, value: str) -> bool:
    return (
        bool(name.strip())
        and bool(value.strip())
        and not _reserved(name)
        and not _CONTROL.search(name)
        and not _CONTROL.search(value)
    )


def _plain_key(key: str) -> bool:
    return (
        0 < len(key) <= MAX_KEY and not any(c.isspace() for c in key) and not _CONTROL.search(key)
    )


def message_group(key: str) -> str:
    """The FIFO message group of ``key``: the key itself when RocketMQ accepts it."""
    if 0 < len(key) <= MAX_GROUP and key.strip() and not _CONTROL.search(key):
        return key
    return "k" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def to_message(
    message_cls: Any,
    topic: str,
    record: Record,
    *,
    group: str | None = None,
    deliver_at: int | None = None,
) -> Any:
    """A driver Message for ``record`` on RocketMQ ``topic``."""
    msg = message_cls()
    msg.topic = topic
    extra: dict[str, Any] = {}
    if record.value:
        msg.body = record.value
    else:
        msg.body = b"\x00"
        extra["e"] = 1
    props: dict[str, str] = msg.properties
    spill: dict[str, str] = {}
    for name, value in record.headers.items():
        if _plain_property(name, value):
            props[name] = value
        else:
            spill[name] = value
    if spill:
        extra["h"] = spill
    if record.key is not None:
        if _plain_key(record.key):
            msg.keys = record.key
        else:
            extra["k"] = record.key
    if extra:
        props[BLOB] = json.dumps(extra, separators=(",", ":"), ensure_ascii=False)
    if group is not None:
        msg.message_group = group
    if deliver_at is not None:
        msg.delivery_timestamp = deliver_at
    return msg


def to_record(msg: Any) -> Record:
    """The Record of a received driver Message (see the module docstring)."""
    props: dict[str, str] = dict(msg.properties or {})
    raw = props.pop(BLOB, None)
    extra: dict[str, Any] = json.loads(raw) if raw else {}
    headers = {k: v for k, v in props.items() if not _reserved(k)}
    headers.update(extra.get("h", {}))
    if "k" in extra:
        key: str | None = extra["k"]
    else:
        keys = sorted(msg.keys or ())
        key = keys[0] if len(keys) == 1 else (msg.message_group or (" ".join(keys) or None))
    value = b"" if extra.get("e") else bytes(msg.body or b"")
    if H_ID not in headers and msg.message_id:
        headers[H_ID] = str(msg.message_id)
    if H_TS not in headers and msg.born_timestamp:
        headers[H_TS] = repr(msg.born_timestamp / 1000.0)
    return Record(key, value, headers)
