"""How one record lies on disk.

A frame, all integers big-endian::

    u32 length        bytes after this field: crc + body
    u32 crc           zlib.crc32 of everything after it
    u64 offset        the record's own offset: a frame found at the wrong place is caught
    i64 timestamp     broker append time in ms (retention by age must not trust
                      producer clocks; the producer's time stays in x-mqkit-ts)
    record body       key, headers, value (:mod:`mqkit.broker.body`)

The record body is encoded before the writer takes the log lock (or arrives
encoded in a PUBLISH); under the lock only the head is put in front of it
(:func:`seal`).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from mqkit.broker.body import decode_body
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
    "seal",
]

HEAD = struct.Struct(">IIQq")  # length, crc, offset, timestamp
HEAD_SIZE = HEAD.size  # 24
_OFF_TS = struct.Struct(">Qq")
MIN_LENGTH = 4 + 8 + 8 + 4 + 4  # crc, offset, timestamp, key length, header count
MAX_LENGTH = 1 << 30  # a "length" beyond this is damage, not a record


def seal(offset: int, timestamp_ms: int, body: bytes) -> bytes:
    """The complete frame of a record body at ``offset``."""
    crc = zlib.crc32(body, zlib.crc32(_OFF_TS.pack(offset, timestamp_ms)))
    return HEAD.pack(len(body) + 20, crc, offset, timestamp_ms) + body


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
    """Decode a CRC-checked frame; ``body`` points at the record body (its key length)."""
    return decode_body(buf, body, end)
