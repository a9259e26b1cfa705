"""A record's body: the bytes a PUBLISH carries and the log stores as they came.

Layout, integers big-endian::

    i32 key length    -1 = no key; then the key, utf-8
    u32 header count, then per header: u32 length + utf-8 name, u32 length + utf-8 value
    value             the rest

Why one form for both: a log frame is its head (length, CRC, offset,
timestamp) followed by this body, so the server checks what a client sent
(:func:`check_body`) and appends it without building records and encoding
them again -- that round trip was a third of the server's work per message.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import overload

from mqkit.message import Record

__all__ = ["MIN_BODY", "EncodedRecords", "check_body", "decode_body", "encode_body"]

_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
MIN_BODY = 8  # key length + header count


_NAMES: dict[str, bytes] = {}  # header name -> its encoded length + bytes (names repeat)
_NAMES_MAX = 1024  # a bound: applications may invent names without end


def encode_body(record: Record) -> bytes:
    key = record.key
    headers = record.headers
    pack = _U32.pack
    names = _NAMES
    parts: list[bytes]
    if key is None:
        parts = [_I32.pack(-1), pack(len(headers))]
    else:
        kb = key.encode()
        parts = [_I32.pack(len(kb)), kb, pack(len(headers))]
    for name, value in headers.items():
        nb = names.get(name)
        if nb is None:
            raw = name.encode()
            nb = pack(len(raw)) + raw
            if len(names) < _NAMES_MAX:
                names[name] = nb
        vb = value.encode()
        parts += (nb, pack(len(vb)), vb)
    parts.append(record.value)
    return b"".join(parts)


def check_body(buf: bytes, start: int, end: int) -> bytes | None:
    """Validate the body at ``buf[start:end]`` as a reader will decode it; its key's bytes.

    Raises ValueError (UnicodeDecodeError included) for anything a reader
    could not decode: such a record must never reach the log.  The lengths are
    walked first; when everything before the value is ASCII (the usual case:
    ids, times, content types) every string in it is valid UTF-8 and one
    ``isascii`` replaces decoding each of them.
    """
    if end - start < MIN_BODY:
        raise ValueError(f"a record body of {end - start} bytes is shorter than {MIN_BODY}")
    (klen,) = _I32.unpack_from(buf, start)
    p = start + 4
    key: bytes | None = None
    if klen >= 0:
        if end - p < klen + 4:
            raise ValueError(f"key of {klen} bytes runs past the record")
        key = buf[p : p + klen]
        p += klen
    elif klen != -1:
        raise ValueError(f"key length {klen} is invalid")
    (count,) = _U32.unpack_from(buf, p)
    p += 4
    if count * 8 > end - p:
        raise ValueError(f"header count {count} exceeds the record")
    u32 = _U32.unpack_from
    for _ in range(count):
        if end - p < 4:
            raise ValueError("a header runs past the record")
        (n,) = u32(buf, p)
        p += 4 + n
        if end - p < 4:
            raise ValueError("a header name runs past the record")
        (n,) = u32(buf, p)
        p += 4 + n
        if p > end:
            raise ValueError("a header value runs past the record")
    if not buf[start + 4 : p].isascii():
        _check_text(buf, start, count)
    return key


def _check_text(buf: bytes, start: int, count: int) -> None:
    """Decode the key and every header of a body whose lengths were checked."""
    (klen,) = _I32.unpack_from(buf, start)
    p = start + 4
    if klen >= 0:
        buf[p : p + klen].decode()
        p += klen
    p += 4
    u32 = _U32.unpack_from
    for _ in range(count * 2):
        (n,) = u32(buf, p)
        p += 4
        buf[p : p + n].decode()
        p += n


def decode_body(buf: bytes, start: int, end: int) -> Record:
    """The record of a checked body (a log frame's, or a checked PUBLISH's)."""
    (klen,) = _I32.unpack_from(buf, start)
    p = start + 4
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


class EncodedRecords(Sequence[Record]):
    """Records still as checked bodies, with their keys (for partitioning) beside them.

    A log that stores bodies appends them as they are; anything else reads
    them as records, decoded on access.
    """

    __slots__ = ("bodies", "keys")

    def __init__(self, keys: list[bytes | None], bodies: list[bytes]) -> None:
        self.keys = keys
        self.bodies = bodies

    def __len__(self) -> int:
        return len(self.bodies)

    @overload
    def __getitem__(self, i: int) -> Record: ...

    @overload
    def __getitem__(self, i: slice) -> EncodedRecords: ...

    def __getitem__(self, i: int | slice) -> Record | EncodedRecords:
        if isinstance(i, slice):
            return EncodedRecords(self.keys[i], self.bodies[i])
        b = self.bodies[i]
        return decode_body(b, 0, len(b))

    def __iter__(self) -> Iterator[Record]:
        for b in self.bodies:
            yield decode_body(b, 0, len(b))

    def take(self, indexes: Sequence[int]) -> EncodedRecords:
        """The records at ``indexes``, in that order (one partition's share of a batch)."""
        keys, bodies = self.keys, self.bodies
        return EncodedRecords([keys[i] for i in indexes], [bodies[i] for i in indexes])
