"""How one record lies on disk.

A frame, all integers big-endian::

    u32 length        bytes after this field: crc + body
    u32 crc           zlib.crc32 of the body
    body:
      u64 offset      the record's own offset: a frame found at the wrong place is caught
      i64 timestamp   broker append time in ms (retention by age must not trust
                      producer clocks; the producer's time stays in x-mqkit-ts)
      i32 key length  -1 = no key; then the key, utf-8
      u32 header count, then per header: u32 length + utf-8 name, u32 length + utf-8 value
      value           the rest of the frame

Encoding is split in two so the costly part (:func:`encode_tail`) runs
before the writer takes the log lock; under the lock only the offset is
prefixed and the CRC computed (:func:`seal`).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from mqkit.message import Record

__all__ = [
    "HEAD",
    "HEAD_SIZE",
    "MAX_LENGTH",
    "MIN_LENGTH",
    "FrameError",
    "FrameInfo",
    "check_frame",
    "decode_record",
    "encode_tail",
    "seal",
]

HEAD = struct.Struct(">IIQq")  # length, crc, offset, timestamp
HEAD_SIZE = HEAD.size  # 24
_PREFIX = struct.Struct(">IIQ")
_TS_KEY = struct.Struct(">qi")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
MIN_LENGTH = 4 + 8 + 8 + 4 + 4  # crc, offset, timestamp, key length, header count
MAX_LENGTH = 1 << 30  # a "length" beyond this is damage, not a record


def encode_tail(record: Record, timestamp_ms: int) -> bytes:
    """Everything of the frame after the offset (timestamp .. value)."""
    parts: list[bytes] = []
    if record.key is None:
        parts.append(_TS_KEY.pack(timestamp_ms, -1))
    else:
        kb = record.key.encode()
        parts.append(_TS_KEY.pack(timestamp_ms, len(kb)))
        parts.append(kb)
    parts.append(_U32.pack(len(record.headers)))
    for name, value in record.headers.items():
        nb = name.encode()
        vb = value.encode()
        parts.append(_U32.pack(len(nb)))
        parts.append(nb)
        parts.append(_U32.pack(len(vb)))
        parts.append(vb)
    parts.append(record.value)
    return b"".join(parts)


def seal(offset: int, tail: bytes) -> bytes:
    """The complete frame of ``tail`` at ``offset``."""
    off = offset.to_bytes(8, "big")
    crc = zlib.crc32(tail, zlib.crc32(off))
    return _PREFIX.pack(len(tail) + 12, crc, offset) + tail


@dataclass(frozen=True, slots=True)
class FrameInfo:
    offset: int
    timestamp_ms: int
    size: int  # whole frame, length field included


class FrameError(Exception):
    """The bytes at a position are not a valid frame; ``torn`` if they run past the end."""

    def __init__(self, reason: str, *, torn: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.torn = torn


def check_frame(buf: bytes | memoryview, pos: int, limit: int) -> FrameInfo:
    """Validate the frame at ``buf[pos:]`` (not past ``limit``) without decoding it."""
    if limit - pos < HEAD_SIZE:
        raise FrameError(f"{limit - pos} trailing bytes, less than a frame header", torn=True)
    length, crc, offset, ts = HEAD.unpack_from(buf, pos)
    if length < MIN_LENGTH or length > MAX_LENGTH:
        raise FrameError(f"impossible frame length {length}")
    end = pos + 4 + length
    if end > limit:
        raise FrameError(f"frame of {length + 4} bytes runs past the end", torn=True)
    if zlib.crc32(memoryview(buf)[pos + 8 : end]) != crc:
        raise FrameError("CRC mismatch")
    return FrameInfo(offset, ts, length + 4)


def decode_record(buf: bytes, body: int, end: int) -> Record:
    """Decode a CRC-checked frame; ``body`` points at the key length field."""
    (klen,) = _I32.unpack_from(buf, body)
    p = body + 4
    key: str | None = None
    if klen >= 0:
        key = buf[p : p + klen].decode()
        p += klen
    (count,) = _U32.unpack_from(buf, p)
    p += 4
    headers: dict[str, str] = {}
    u32 = _U32.unpack_from
    for _ in range(count):
        (n,) = u32(buf, p)
        p += 4
        name = buf[p : p + n].decode()
        p += n
        (n,) = u32(buf, p)
        p += 4
        headers[name] = buf[p : p + n].decode()
        p += n
    if p > end:
        raise ValueError("record fields run past the frame")
    return Record(key, buf[p:end], headers)
