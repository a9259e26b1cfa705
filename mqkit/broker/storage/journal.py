"""Length + CRC framing for the state journal and snapshot, and the entry codec.

A journal frame is ``u32 length, u32 crc32(payload), payload``.  Entries are
tiny binary payloads (the first byte names the operation) because the
engine records one per delivery and one per ack: they must cost about a
microsecond.  Groups are named by a number assigned at creation so the hot
entries carry no strings.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

__all__ = [
    "Ack",
    "Deliver",
    "Entry",
    "GroupCreated",
    "TopicCreated",
    "TopicDeleted",
    "decode",
    "encode_ack",
    "encode_deliver",
    "encode_group",
    "encode_topic_created",
    "encode_topic_deleted",
    "frame",
    "unframe",
]

_FRAME = struct.Struct(">II")
MAX_ENTRY = 64 * 2**20
_ACK = struct.Struct(">cIIQ")
_DELIVER = struct.Struct(">cIIQI")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


def frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def unframe(data: bytes) -> tuple[list[bytes], int, str | None]:
    """Payloads of the valid frames, where they end, and why reading stopped early."""
    out: list[bytes] = []
    p = 0
    n = len(data)
    while p < n:
        if n - p < _FRAME.size:
            return out, p, f"{n - p} trailing bytes, less than a frame header"
        length, crc = _FRAME.unpack_from(data, p)
        if length > MAX_ENTRY:
            return out, p, f"impossible entry length {length}"
        end = p + _FRAME.size + length
        if end > n:
            return out, p, f"entry of {length} bytes runs past the end"
        payload = data[p + _FRAME.size : end]
        if zlib.crc32(payload) != crc:
            return out, p, "CRC mismatch"
        out.append(payload)
        p = end
    return out, p, None


@dataclass(frozen=True, slots=True)
class TopicCreated:
    topic: str
    partitions: int


@dataclass(frozen=True, slots=True)
class TopicDeleted:
    topic: str


@dataclass(frozen=True, slots=True)
class GroupCreated:
    gid: int
    topic: str
    group: str
    start_offsets: list[int]


@dataclass(frozen=True, slots=True)
class Deliver:
    gid: int
    partition: int
    offset: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Ack:
    gid: int
    partition: int
    offset: int


Entry = TopicCreated | TopicDeleted | GroupCreated | Deliver | Ack


def encode_topic_created(topic: str, partitions: int) -> bytes:
    return b"T" + _U32.pack(partitions) + topic.encode()


def encode_topic_deleted(topic: str) -> bytes:
    return b"X" + topic.encode()


def encode_group(gid: int, topic: str, group: str, start_offsets: list[int]) -> bytes:
    t, g = topic.encode(), group.encode()
    starts = struct.pack(f">{len(start_offsets)}Q", *start_offsets)
    return b"".join(
        (
            b"G",
            _U32.pack(gid),
            _U16.pack(len(t)),
            t,
            _U16.pack(len(g)),
            g,
            _U32.pack(len(start_offsets)),
            starts,
        )
    )


def encode_deliver(gid: int, partition: int, offset: int, attempt: int) -> bytes:
    return _DELIVER.pack(b"D", gid, partition, offset, attempt)


def encode_ack(gid: int, partition: int, offset: int) -> bytes:
    return _ACK.pack(b"A", gid, partition, offset)


def decode(payload: bytes) -> Entry:
    """Decode one entry; raises ValueError on anything malformed."""
    try:
        op = payload[:1]
        if op == b"A":
            _, gid, p, off = _ACK.unpack(payload)
            return Ack(gid, p, off)
        if op == b"D":
            _, gid, p, off, att = _DELIVER.unpack(payload)
            return Deliver(gid, p, off, att)
        if op == b"T":
            (n,) = _U32.unpack_from(payload, 1)
            return TopicCreated(payload[5:].decode(), n)
        if op == b"X":
            return TopicDeleted(payload[1:].decode())
        if op == b"G":
            (gid,) = _U32.unpack_from(payload, 1)
            (tl,) = _U16.unpack_from(payload, 5)
            topic = payload[7 : 7 + tl].decode()
            p = 7 + tl
            (gl,) = _U16.unpack_from(payload, p)
            group = payload[p + 2 : p + 2 + gl].decode()
            p += 2 + gl
            (n,) = _U32.unpack_from(payload, p)
            starts = list(struct.unpack_from(f">{n}Q", payload, p + 4))
            if p + 4 + 8 * n != len(payload):
                raise ValueError("group entry has trailing bytes")
            return GroupCreated(gid, topic, group, starts)
    except (struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"malformed journal entry: {e}") from e
    raise ValueError(f"unknown journal entry type {op!r}")
