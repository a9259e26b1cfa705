"""The wire protocol of the native broker server (``mqkit://``).

Why binary and length-prefixed: a reader learns a frame's size from four
bytes, rejects an oversized frame *before* allocating anything, and decodes
records with :mod:`struct` at a fraction of JSON's cost (values are bytes,
which JSON cannot carry without base64).

A frame, all integers big-endian::

    u32 length    bytes after this field (op + id + payload): 5 .. max_frame
    u8  op        request op, or RESULT / RESULT_MORE / ERROR in replies
    u32 id        request id chosen by the client; every reply echoes it
    payload

Requests may be pipelined: a client sends many before reading any reply, and
replies may come back in any order (match them by id).  A FETCH reply larger
than :data:`CHUNK` comes as RESULT_MORE frames followed by one RESULT, each a
self-contained list of deliveries, so no frame has to hold a whole batch.

Payload building blocks: ``str16`` = u16 length + UTF-8, ``str32`` = u32
length + UTF-8, ``f64`` = IEEE double.  A record in a FETCH reply::

    i32 key length (-1 = no key), key UTF-8
    u16 header count, per header: str16 name, str32 value
    u32 value length, value bytes

A record in a PUBLISH is a u32 length and the record's body exactly as the
log stores it (:mod:`mqkit.broker.body`): the server checks it and appends
those bytes, without decoding and re-encoding (protocol version 2).

Decoding never raises anything but :class:`ProtocolError`, and never
allocates more than the bytes it was given.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

from mqkit.broker.body import MIN_BODY, EncodedRecords, check_body, encode_body
from mqkit.errors import (
    Closed,
    ConfigError,
    ConnectionLost,
    MessageTooLarge,
    MQError,
    PublishError,
    Unsupported,
)
from mqkit.message import Record

__all__ = [
    "CHUNK",
    "DEFAULT_MAX_FRAME",
    "HEADER",
    "MAX_MESSAGE",
    "VERSION",
    "Ack",
    "Declare",
    "DeleteTopic",
    "Delivery",
    "ErrorKind",
    "ErrorReply",
    "Fetch",
    "Frame",
    "FrameDecoder",
    "Heartbeat",
    "Hello",
    "HelloReply",
    "Join",
    "Leave",
    "Nack",
    "Op",
    "ProtocolError",
    "Publish",
    "Request",
    "StatRow",
    "Stats",
    "decode_deliveries",
    "decode_error",
    "decode_hello_reply",
    "decode_member",
    "decode_placed",
    "decode_request",
    "decode_stats",
    "encode_deliveries",
    "encode_error",
    "encode_frame",
    "encode_hello_reply",
    "encode_member",
    "encode_placed",
    "encode_request",
    "encode_stats",
    "error_from_exception",
    "exception_from_error",
]

VERSION = 2  # 2: PUBLISH carries record bodies as the log stores them
MAX_MESSAGE = 16 * 1024 * 1024
DEFAULT_MAX_FRAME = MAX_MESSAGE + 1024 * 1024  # one maximal message plus its metadata
CHUNK = 1024 * 1024  # FETCH replies are split into frames of about this size
HEADER = struct.Struct(">IBI")  # length, op, id
_MIN_LENGTH = 5  # op + id

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_F64 = struct.Struct(">d")
_KEYHDR = struct.Struct(">iH")  # key length, header count
_PLACED = struct.Struct(">IQ")  # partition, offset
_DELIVERY = struct.Struct(">IQI")  # partition, offset, attempt
_STAT = struct.Struct(">IQId")  # partition, backlog, in flight, oldest timestamp (NaN: none)
_HELLO_REPLY = struct.Struct(">HBI")  # version, flags, max frame


_T = TypeVar("_T")


class ProtocolError(MQError):
    """A frame broke the protocol: the connection that sent it is closed."""


class Op(IntEnum):
    HELLO = 1
    DECLARE = 2
    PUBLISH = 3
    JOIN = 4
    FETCH = 5
    ACK = 6
    NACK = 7
    HEARTBEAT = 8
    LEAVE = 9
    STATS = 10
    DELETE_TOPIC = 11
    RESULT = 0x80
    RESULT_MORE = 0x81
    ERROR = 0x82


class ErrorKind(IntEnum):
    """What an ERROR frame means; maps back onto :mod:`mqkit.errors` classes."""

    INTERNAL = 1
    CONFIG = 2
    CLOSED = 3
    PUBLISH = 4
    UNSUPPORTED = 5
    PROTOCOL = 6
    AUTH = 7
    TOO_LARGE = 8
    UNAVAILABLE = 9


_OPS = frozenset(int(o) for o in Op)
_KINDS = frozenset(int(k) for k in ErrorKind)


# -- frames -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    op: int
    id: int
    payload: bytes


def encode_frame(op: int, rid: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload) + _MIN_LENGTH, op, rid) + payload


class FrameDecoder:
    """Incremental frame splitter: feed it bytes as they arrive, get whole frames.

    It holds at most one partial frame; a length field above ``max_frame`` is
    refused as soon as its four bytes are seen, before any buffer grows.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Whole frames completed by ``data``.

        Frames before damage are returned; the damage itself is raised (as
        ProtocolError) by :meth:`check`, or by the next ``feed``.
        """
        self.check()
        buf = self._buf
        buf += data
        out: list[Frame] = []
        pos = 0
        end = len(buf)
        with memoryview(buf) as view:
            while end - pos >= 4:
                (length,) = _U32.unpack_from(buf, pos)
                if length < _MIN_LENGTH or length > self.max_frame:
                    self._fail(
                        f"frame length {length} is outside {_MIN_LENGTH}..{self.max_frame} bytes"
                    )
                    break
                if end - pos < HEADER.size:
                    break
                op = buf[pos + 4]
                if op not in _OPS:
                    self._fail(f"unknown op {op}")
                    break
                total = 4 + length
                if end - pos < total:
                    break
                (rid,) = _U32.unpack_from(buf, pos + 5)
                out.append(Frame(op, rid, bytes(view[pos + HEADER.size : pos + total])))
                pos += total
        if self._error is not None:
            self._buf = bytearray()
            if not out:
                self.check()
        elif pos:
            del buf[:pos]
        return out

    def check(self) -> None:
        """Raise the ProtocolError met by an earlier :meth:`feed`, if any."""
        if self._error is not None:
            raise ProtocolError(self._error)

    def _fail(self, message: str) -> None:
        self._error = message


# -- payload reading ----------------------------------------------------------------


class _Reader:
    """Bounds-checked cursor over a payload; every failure is a ProtocolError."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)

    def _take(self, n: int) -> int:
        p = self.pos
        if n < 0 or self.end - p < n:
            raise ProtocolError(f"payload truncated: {n} bytes needed at {p}, {self.end - p} left")
        self.pos = p + n
        return p

    def u8(self) -> int:
        return int(self.buf[self._take(1)])

    def u16(self) -> int:
        v: int = _U16.unpack_from(self.buf, self._take(2))[0]
        return v

    def u32(self) -> int:
        v: int = _U32.unpack_from(self.buf, self._take(4))[0]
        return v

    def f64(self) -> float:
        v: float = _F64.unpack_from(self.buf, self._take(8))[0]
        return v

    def finite(self, what: str) -> float:
        v = self.f64()
        if not math.isfinite(v):
            raise ProtocolError(f"{what} must be a finite number, got {v}")
        return v

    def str16(self) -> str:
        n = self.u16()
        p = self._take(n)
        return _text(self.buf[p : p + n])

    def str32(self) -> str:
        n = self.u32()
        p = self._take(n)
        return _text(self.buf[p : p + n])

    def count(self, min_item: int) -> int:
        """A u32 item count, refused when the remaining bytes cannot hold that many."""
        n = self.u32()
        if n * min_item > self.end - self.pos:
            raise ProtocolError(f"count {n} exceeds what the remaining payload can hold")
        return n

    def record(self) -> Record:
        buf = self.buf
        klen, nh = _KEYHDR.unpack_from(buf, self._take(_KEYHDR.size))
        key: str | None = None
        if klen >= 0:
            p = self._take(klen)
            key = _text(buf[p : p + klen])
        elif klen != -1:
            raise ProtocolError(f"key length {klen} is invalid")
        if nh * 6 > self.end - self.pos:
            raise ProtocolError(f"header count {nh} exceeds the payload")
        headers: dict[str, str] = {}
        for _ in range(nh):
            name = self.str16()
            headers[name] = self.str32()
        n = self.u32()
        p = self._take(n)
        return Record(key, buf[p : p + n], headers)

    def bodies(self, n: int) -> EncodedRecords:
        """``n`` PUBLISH records: each a u32 length and a checked body (see the module doc)."""
        buf = self.buf
        end = self.end
        p = self.pos
        u32 = _U32.unpack_from
        keys: list[bytes | None] = []
        bodies: list[bytes] = []
        try:
            for _ in range(n):
                if end - p < 4:
                    raise ProtocolError(f"payload truncated: a record length needed at {p}")
                (size,) = u32(buf, p)
                p += 4
                if end - p < size:
                    raise ProtocolError(f"payload truncated: a record of {size} bytes at {p}")
                keys.append(check_body(buf, p, p + size))
                bodies.append(buf[p : p + size])
                p += size
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"invalid UTF-8 in a record: {exc}") from None
        except (ValueError, struct.error) as exc:
            raise ProtocolError(f"malformed record: {exc}") from None
        self.pos = p
        return EncodedRecords(keys, bodies)

    def done(self) -> None:
        if self.pos != self.end:
            raise ProtocolError(f"{self.end - self.pos} unexpected bytes after the payload")


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"invalid UTF-8 in a string: {exc}") from None


# -- payload writing ----------------------------------------------------------------


def _s16(s: str) -> bytes:
    b = s.encode()
    if len(b) > 0xFFFF:
        raise ConfigError(f"{s[:40]!r}... is longer than 65535 bytes", field="name")
    return _U16.pack(len(b)) + b


def _s32(s: str) -> bytes:
    b = s.encode()
    return _U32.pack(len(b)) + b


def _put_record(parts: list[bytes], r: Record) -> None:
    if r.key is None:
        parts.append(_KEYHDR.pack(-1, len(r.headers)))
    else:
        kb = r.key.encode()
        parts.append(_KEYHDR.pack(len(kb), len(r.headers)))
        parts.append(kb)
    if len(r.headers) > 0xFFFF:
        raise ConfigError("a message may carry at most 65535 headers", field="headers")
    for k, v in r.headers.items():
        parts.append(_s16(k))
        parts.append(_s32(v))
    parts.append(_U32.pack(len(r.value)))
    parts.append(r.value)


# -- requests -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    version: int = VERSION
    token: str = ""
    client: str = ""


@dataclass(frozen=True, slots=True)
class Declare:
    topic: str
    partitions: int | None = None
    groups: tuple[str, ...] = ()
    ordered: bool = False


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    records: Sequence[Record]
    durable: bool = True


@dataclass(frozen=True, slots=True)
class Join:
    topic: str
    group: str
    ordered: bool = False
    prefetch: int = 100


@dataclass(frozen=True, slots=True)
class Fetch:
    member: str
    max_count: int
    timeout: float


@dataclass(frozen=True, slots=True)
class Ack:
    member: str
    items: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Nack:
    member: str
    items: tuple[tuple[int, int], ...]
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    member: str


@dataclass(frozen=True, slots=True)
class Leave:
    member: str


@dataclass(frozen=True, slots=True)
class Stats:
    topic: str
    group: str


@dataclass(frozen=True, slots=True)
class DeleteTopic:
    topic: str


Request = (
    Hello | Declare | Publish | Join | Fetch | Ack | Nack | Heartbeat | Leave | Stats | DeleteTopic
)


def _items(parts: list[bytes], items: Sequence[tuple[int, int]]) -> None:
    parts.append(_U32.pack(len(items)))
    parts.extend(_PLACED.pack(p, o) for p, o in items)


def encode_request(req: Request) -> tuple[Op, bytes]:
    """The op and payload of a request (the caller frames it with its id)."""
    parts: list[bytes] = []
    if isinstance(req, Publish):
        parts.append(_s16(req.topic))
        parts.append(_U8.pack(1 if req.durable else 0))
        parts.append(_U32.pack(len(req.records)))
        pack = _U32.pack
        if isinstance(req.records, EncodedRecords):
            bodies = req.records.bodies
        else:
            bodies = [encode_body(r) for r in req.records]
        for b in bodies:
            parts += (pack(len(b)), b)
        return Op.PUBLISH, b"".join(parts)
    if isinstance(req, Fetch):
        return Op.FETCH, b"".join(
            [_s16(req.member), _U32.pack(req.max_count), _F64.pack(req.timeout)]
        )
    if isinstance(req, Ack):
        parts.append(_s16(req.member))
        _items(parts, req.items)
        return Op.ACK, b"".join(parts)
    if isinstance(req, Nack):
        parts += [_s16(req.member), _F64.pack(req.delay)]
        _items(parts, req.items)
        return Op.NACK, b"".join(parts)
    if isinstance(req, Hello):
        return Op.HELLO, _U16.pack(req.version) + _s16(req.token) + _s16(req.client)
    if isinstance(req, Declare):
        parts += [_s16(req.topic), _U32.pack(req.partitions or 0), _U8.pack(int(req.ordered))]
        parts.append(_U16.pack(len(req.groups)))
        parts.extend(_s16(g) for g in req.groups)
        return Op.DECLARE, b"".join(parts)
    if isinstance(req, Join):
        return Op.JOIN, b"".join(
            [_s16(req.topic), _s16(req.group), _U8.pack(int(req.ordered)), _U32.pack(req.prefetch)]
        )
    if isinstance(req, Heartbeat):
        return Op.HEARTBEAT, _s16(req.member)
    if isinstance(req, Leave):
        return Op.LEAVE, _s16(req.member)
    if isinstance(req, Stats):
        return Op.STATS, _s16(req.topic) + _s16(req.group)
    return Op.DELETE_TOPIC, _s16(req.topic)


def _read_items(r: _Reader) -> tuple[tuple[int, int], ...]:
    n = r.count(_PLACED.size)
    buf = r.buf
    out = []
    for _ in range(n):
        out.append(_PLACED.unpack_from(buf, r._take(_PLACED.size)))
    return tuple(out)


def decode_request(op: int, payload: bytes) -> Request:
    """Parse a request frame's payload; anything malformed is a ProtocolError."""
    r = _Reader(payload)
    try:
        req = _decode_request(op, r)
    except ProtocolError:
        raise
    except (struct.error, ValueError, IndexError, OverflowError) as exc:
        raise ProtocolError(f"malformed {_op_name(op)} payload: {exc}") from None
    r.done()
    return req


def _decode_request(op: int, r: _Reader) -> Request:
    if op == Op.PUBLISH:
        topic = r.str16()
        durable = bool(r.u8() & 1)
        n = r.count(4 + MIN_BODY)
        return Publish(topic, r.bodies(n), durable)
    if op == Op.FETCH:
        return Fetch(r.str16(), r.u32(), r.finite("fetch timeout"))
    if op == Op.ACK:
        return Ack(r.str16(), _read_items(r))
    if op == Op.NACK:
        member = r.str16()
        delay = r.finite("nack delay")
        return Nack(member, _read_items(r), delay)
    if op == Op.HELLO:
        return Hello(r.u16(), r.str16(), r.str16())
    if op == Op.DECLARE:
        topic = r.str16()
        parts = r.u32()
        ordered = bool(r.u8() & 1)
        ng = r.u16()
        return Declare(topic, parts or None, tuple(r.str16() for _ in range(ng)), ordered)
    if op == Op.JOIN:
        return Join(r.str16(), r.str16(), bool(r.u8() & 1), r.u32())
    if op == Op.HEARTBEAT:
        return Heartbeat(r.str16())
    if op == Op.LEAVE:
        return Leave(r.str16())
    if op == Op.STATS:
        return Stats(r.str16(), r.str16())
    if op == Op.DELETE_TOPIC:
        return DeleteTopic(r.str16())
    raise ProtocolError(f"op {_op_name(op)} is not a request")


def _op_name(op: int) -> str:
    return Op(op).name if op in _OPS else str(op)


# -- replies ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloReply:
    version: int
    persistent: bool
    max_frame: int
    server: str = ""


def encode_hello_reply(h: HelloReply) -> bytes:
    return _HELLO_REPLY.pack(h.version, int(h.persistent), h.max_frame) + _s16(h.server)


def decode_hello_reply(payload: bytes) -> HelloReply:
    def parse(r: _Reader) -> HelloReply:
        version, flags, max_frame = _HELLO_REPLY.unpack_from(r.buf, r._take(_HELLO_REPLY.size))
        return HelloReply(version, bool(flags & 1), max_frame, r.str16())

    return _parse(payload, parse)


def encode_placed(placed: Sequence[tuple[int, int]]) -> bytes:
    parts: list[bytes] = []
    _items(parts, placed)
    return b"".join(parts)


def decode_placed(payload: bytes) -> list[tuple[int, int]]:
    return _parse(payload, lambda r: list(_read_items(r)))


def encode_member(member: str) -> bytes:
    return _s16(member)


def decode_member(payload: bytes) -> str:
    return _parse(payload, lambda r: r.str16())


@dataclass(slots=True)
class Delivery:
    partition: int
    offset: int
    attempt: int
    record: Record


def encode_deliveries(deliveries: Sequence[Delivery], chunk: int = CHUNK) -> list[bytes]:
    """FETCH reply payloads: one per ~``chunk`` bytes (RESULT_MORE ... RESULT)."""
    payloads: list[bytes] = []
    parts: list[bytes] = []
    count = 0
    size = 0
    for d in deliveries:
        if count and size >= chunk:
            payloads.append(_U32.pack(count) + b"".join(parts))
            parts, count, size = [], 0, 0
        start = len(parts)
        parts.append(_DELIVERY.pack(d.partition, d.offset, d.attempt))
        _put_record(parts, d.record)
        size += sum(len(p) for p in parts[start:])
        count += 1
    payloads.append(_U32.pack(count) + b"".join(parts))
    return payloads


def decode_deliveries(payload: bytes) -> list[Delivery]:
    def parse(r: _Reader) -> list[Delivery]:
        n = r.count(_DELIVERY.size + 10)
        out = []
        for _ in range(n):
            p, o, a = _DELIVERY.unpack_from(r.buf, r._take(_DELIVERY.size))
            out.append(Delivery(p, o, a, r.record()))
        return out

    return _parse(payload, parse)


@dataclass(frozen=True, slots=True)
class StatRow:
    partition: int
    backlog: int
    in_flight: int
    oldest_timestamp: float | None


def encode_stats(rows: Sequence[StatRow]) -> bytes:
    parts = [_U32.pack(len(rows))]
    for s in rows:
        oldest = math.nan if s.oldest_timestamp is None else s.oldest_timestamp
        parts.append(_STAT.pack(s.partition, s.backlog, s.in_flight, oldest))
    return b"".join(parts)


def decode_stats(payload: bytes) -> list[StatRow]:
    def parse(r: _Reader) -> list[StatRow]:
        out = []
        for _ in range(r.count(_STAT.size)):
            p, b, f, t = _STAT.unpack_from(r.buf, r._take(_STAT.size))
            out.append(StatRow(p, b, f, None if math.isnan(t) else t))
        return out

    return _parse(payload, parse)


# -- errors -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorReply:
    kind: int
    message: str
    field: str = ""


def encode_error(kind: ErrorKind, message: str, name: str | None = None) -> bytes:
    """ERROR payload; ``name`` is the offending field (ConfigError) or feature."""
    return _U8.pack(kind) + _s16((name or "")[:1000]) + _s32(message[:65536])


def decode_error(payload: bytes) -> ErrorReply:
    def parse(r: _Reader) -> ErrorReply:
        kind = r.u8()
        fld = r.str16()
        return ErrorReply(kind if kind in _KINDS else ErrorKind.INTERNAL, r.str32(), fld)

    return _parse(payload, parse)


def error_from_exception(exc: BaseException) -> tuple[ErrorKind, str, str | None]:
    """How the server reports an exception raised by the engine."""
    if isinstance(exc, ProtocolError):
        return ErrorKind.PROTOCOL, str(exc), None
    if isinstance(exc, MessageTooLarge):
        return ErrorKind.TOO_LARGE, _bare(exc), exc.field
    if isinstance(exc, ConfigError):
        return ErrorKind.CONFIG, _bare(exc), exc.field
    if isinstance(exc, Closed):
        return ErrorKind.CLOSED, str(exc), None
    if isinstance(exc, PublishError):
        return ErrorKind.PUBLISH, str(exc), None
    if isinstance(exc, Unsupported):
        return ErrorKind.UNSUPPORTED, str(exc), exc.feature
    if isinstance(exc, OSError):
        return ErrorKind.UNAVAILABLE, f"the broker could not store or read data: {exc}", None
    return ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}", None


def _bare(exc: ConfigError) -> str:
    """ConfigError's text without the ``field:`` prefix (the client adds it back)."""
    text = str(exc)
    prefix = f"{exc.field}: "
    return text[len(prefix) :] if exc.field and text.startswith(prefix) else text


def exception_from_error(err: ErrorReply, backend: str = "mqkit") -> MQError:
    """The mqkit exception a client raises for an ERROR frame."""
    kind, msg, fld = err.kind, err.message, err.field or None
    if kind == ErrorKind.CONFIG:
        return ConfigError(msg, field=fld)
    if kind == ErrorKind.TOO_LARGE:
        return MessageTooLarge(msg, field=fld)
    if kind == ErrorKind.AUTH:
        return ConfigError(msg, field=fld or "token")
    if kind == ErrorKind.CLOSED:
        return Closed(msg)
    if kind == ErrorKind.PUBLISH:
        return PublishError(msg)
    if kind == ErrorKind.UNSUPPORTED:
        return Unsupported(backend, fld or "this operation", msg)
    if kind == ErrorKind.PROTOCOL:
        return ProtocolError(f"the broker refused a frame: {msg}")
    if kind == ErrorKind.UNAVAILABLE:
        return ConnectionLost(msg)
    return MQError(f"the broker failed: {msg}")


def _parse(payload: bytes, fn: Callable[[_Reader], _T]) -> _T:
    r = _Reader(payload)
    try:
        out = fn(r)
    except ProtocolError:
        raise
    except (struct.error, ValueError, IndexError, OverflowError) as exc:
        raise ProtocolError(f"malformed reply: {exc}") from None
    r.done()
    return out
