"""A thread-safe synchronous client of the broker server (``mqkit://``).

Why one socket and no reader thread: producers and consumers of one ``mq``
live in different threads, and each request is a round trip.  Every caller
writes its frame (under a send lock) and then waits for its reply; whichever
waiting caller finds nobody reading becomes the reader, dispatches every
reply it reads (waking their callers) and, once its own reply is in, hands
the reading over to another waiting caller.  A lone caller so reads its own
reply: no thread wakes another on the way back, which is most of a round
trip's cost on a busy machine.  Many threads still pipeline over one
connection without waiting for each other.

A lost connection fails every request in flight with
:class:`~mqkit.errors.ConnectionLost` (the caller cannot know whether the
broker applied it: a publish becomes a PublishError, never a silent loss).
The next request reconnects, with backoff, for up to ``reconnect_timeout``
seconds; :attr:`BrokerClient.generation` counts connections, so consumers
notice that the broker has let go of their group membership and rejoin.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from mqkit.broker import protocol as wire
from mqkit.errors import Closed, ConfigError, ConnectionLost, MQError

__all__ = ["BrokerClient", "Pending", "Reply"]

log = logging.getLogger("mqkit.broker.client")

READ_CHUNK = 256 * 1024
_SLACK = 64 * 1024  # replies may exceed the request cap by a delivery header


@dataclass(slots=True)
class Reply:
    """A successful reply: one payload, or several for a chunked FETCH reply."""

    parts: list[bytes]
    generation: int = 0  # the connection it came over (see BrokerClient.generation)

    @property
    def payload(self) -> bytes:
        return self.parts[-1]


class _Call:
    """A request awaiting its reply; ``event`` wakes its caller: reply in, or its turn to read."""

    __slots__ = ("done", "error", "event", "parts", "waiting")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.parts: list[bytes] = []
        self.error: BaseException | None = None
        self.done = False  # reply or error is in (set under the connection's lock)
        self.waiting = False  # its caller sleeps in wait(): a candidate to take over reading


Pending = tuple["_Conn", int, _Call]  # a submitted request: pass it to BrokerClient.wait


class _Plain:
    """A TCP socket: plain sockets may be read and written by two threads at once."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def handshake(self) -> None:
        pass

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def recv(self) -> bytes:
        return self.sock.recv(READ_CHUNK)

    def readable(self, timeout: float) -> bool:
        """Whether bytes (or EOF) can be read now or arrive within ``timeout`` seconds."""
        return bool(self._poll.poll(max(0, math.ceil(timeout * 1000))))

    def recv_within(self, timeout: float) -> bytes | None:
        """The next bytes (b"" at EOF), or None when none came within ``timeout``."""
        if not self.readable(timeout):
            return None
        return self.sock.recv(READ_CHUNK)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


class _TLS(_Plain):
    """TLS over memory BIOs, so the reader thread and writers never share an SSL socket.

    An ``ssl.SSLSocket`` must not be read and written from two threads at
    once; here the TLS state is touched only under ``_tls_lock`` and raw
    bytes go out under the send lock in the order TLS produced them.
    """

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, hostname: str | None) -> None:
        super().__init__(sock)
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_hostname=hostname)
        self._tls_lock = threading.Lock()

    def handshake(self) -> None:
        while True:
            try:
                with self._tls_lock:
                    self._obj.do_handshake()
                self._push()
                return
            except ssl.SSLWantReadError:
                pass
            self._push()
            data = self.sock.recv(READ_CHUNK)
            if not data:
                raise ConnectionError("the broker closed the connection during TLS setup")
            with self._tls_lock:
                self._in.write(data)

    def _push(self) -> None:
        with self._send_lock:
            with self._tls_lock:
                out = self._out.read()
            if out:
                self.sock.sendall(out)

    def send(self, data: bytes) -> None:
        with self._send_lock:
            with self._tls_lock:
                self._obj.write(data)
                out = self._out.read()
            self.sock.sendall(out)

    def recv(self) -> bytes:
        data = self.recv_within(None)
        assert data is not None
        return data

    def recv_within(self, timeout: float | None) -> bytes | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._tls_lock:
                try:
                    return self._obj.read(READ_CHUNK)
                except ssl.SSLWantReadError:
                    pending = self._out.pending
                except ssl.SSLZeroReturnError:
                    return b""
            if pending:
                self._push()  # e.g. a key update: rare, never while the handshake runs
            if deadline is not None and not self.readable(deadline - time.monotonic()):
                return None
            raw = self.sock.recv(READ_CHUNK)
            if not raw:
                return b""
            with self._tls_lock:
                self._in.write(raw)


class _Conn:
    """One live connection: its channel, its reply decoder and calls awaiting replies."""

    def __init__(
        self,
        channel: _Plain,
        generation: int,
        hello: wire.HelloReply,
        decoder: wire.FrameDecoder,
    ) -> None:
        self.channel = channel
        self.generation = generation
        self.hello = hello
        self.decoder = decoder  # used only by the caller that is reading
        self.lock = threading.Lock()
        self.pending: dict[int, _Call] = {}
        self.reading = False  # a caller is reading replies (at most one)
        self.dead = False
        self.reason: BaseException | None = None


class BrokerClient:
    """One connection to a broker server, shared by every thread of a client."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: str = "",
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = 10.0,
        reconnect_timeout: float | None = None,
        request_timeout: float = 60.0,
        client_name: str = "mqkit",
    ) -> None:
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self._token = token
        self._ssl = ssl_context
        self._hostname = server_hostname or host
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = connect_timeout if reconnect_timeout is None else reconnect_timeout
        self.request_timeout = request_timeout
        self._name = client_name
        self._conn: _Conn | None = None
        self._connect_lock = threading.Lock()
        self._generations = itertools.count(1)
        self._ids = itertools.count(1)
        self._closed = False
        self._failed_at = -1.0
        self._failure: MQError | None = None
        self._hello: wire.HelloReply | None = None

    # -- state -------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Number of the current connection (0 before the first); changes on reconnect."""
        conn = self._conn
        return conn.generation if conn is not None and not conn.dead else 0

    @property
    def persistent(self) -> bool:
        """Whether the broker keeps messages on disk (False for ``--memory``)."""
        return self._hello.persistent if self._hello is not None else True

    @property
    def max_frame(self) -> int:
        return self._hello.max_frame if self._hello is not None else wire.DEFAULT_MAX_FRAME

    # -- connecting --------------------------------------------------------------------

    def connect(self) -> None:
        """Open the first connection (one attempt: a wrong address should fail fast)."""
        with self._connect_lock:
            if self._conn is None or self._conn.dead:
                self._conn = self._open()

    def ensure(self) -> _Conn:
        """The live connection, reconnecting with backoff when it was lost."""
        conn = self._conn
        if conn is not None and not conn.dead:
            return conn
        asked = time.monotonic()
        with self._connect_lock:
            if self._closed:
                raise Closed("this mqkit broker client is closed")
            conn = self._conn
            if conn is not None and not conn.dead:
                return conn
            if self._failure is not None and self._failed_at >= asked:
                raise self._failure  # another thread just tried for the whole timeout
            deadline = time.monotonic() + self.reconnect_timeout
            delay = 0.05
            while True:
                try:
                    self._conn = self._open()
                    self._failure = None
                    return self._conn
                except ConnectionLost as exc:
                    if self._closed or time.monotonic() + delay > deadline:
                        self._failed_at = time.monotonic()
                        self._failure = exc
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)

    def _unreachable(self, why: object) -> ConnectionLost:
        return ConnectionLost(
            f"cannot reach the mqkit broker at {self.address} ({why}); is it running? "
            f"start one with: mqkit broker serve --port {self.port}"
        )

    def _open(self) -> _Conn:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise self._unreachable(exc) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            channel = _Plain(sock) if self._ssl is None else _TLS(sock, self._ssl, self._hostname)
            channel.handshake()
            hello = wire.Hello(wire.VERSION, self._token, self._name)
            op, payload = wire.encode_request(hello)
            channel.send(wire.encode_frame(op, 0, payload))
            decoder = wire.FrameDecoder(wire.DEFAULT_MAX_FRAME + _SLACK)
            frames: list[wire.Frame] = []
            while not frames:
                data = channel.recv()
                if not data:
                    raise ConnectionError("the broker closed the connection during HELLO")
                frames = decoder.feed(data)
            reply = frames[0]
            if reply.op == wire.Op.ERROR:
                raise wire.exception_from_error(wire.decode_error(reply.payload))
            info = wire.decode_hello_reply(reply.payload)
            sock.settimeout(self.request_timeout)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise ConfigError(
                f"the broker's TLS certificate at {self.address} was not accepted ({exc}); "
                "give its CA with ?cafile=/path/ca.pem (or ?verify=false for a test setup)",
                field="options.cafile",
            ) from exc
        except ConfigError:
            sock.close()
            raise
        except (OSError, wire.ProtocolError, MQError) as exc:
            sock.close()
            raise self._unreachable(exc) from exc
        if len(frames) > 1:  # nothing was asked yet: only a parting ERROR can follow
            channel.close()
            raise self._unreachable(
                wire.exception_from_error(wire.decode_error(frames[1].payload))
                if frames[1].op == wire.Op.ERROR
                else "an unexpected frame after HELLO"
            )
        self._hello = info
        decoder.max_frame = info.max_frame + _SLACK
        return _Conn(channel, next(self._generations), info, decoder)

    # -- requests ----------------------------------------------------------------------

    def call(self, req: wire.Request, *, timeout: float | None = None) -> Reply:
        """Send a request and wait for its reply; errors come back as mqkit exceptions."""
        conn, rid, c = self.submit(req)
        return self.wait(conn, rid, c, timeout)

    def submit(self, req: wire.Request) -> Pending:
        """Send without waiting (pipelining); pass the result to :meth:`wait`."""
        op, payload = wire.encode_request(req)
        if len(payload) + 5 > self.max_frame:
            raise wire.ProtocolError(
                f"a {op.name} request of {len(payload)} bytes exceeds the broker's frame limit "
                f"of {self.max_frame} bytes"
            )
        conn = self.ensure()
        rid = next(self._ids) & 0xFFFFFFFF or next(self._ids)
        c = _Call()
        with conn.lock:
            if conn.dead:
                raise self._lost_error(conn)
            conn.pending[rid] = c
        try:
            conn.channel.send(wire.encode_frame(op, rid, payload))
        except (OSError, ssl.SSLError) as exc:
            self._lose(conn, exc)
        return conn, rid, c

    def wait(self, conn: _Conn, rid: int, c: _Call, timeout: float | None = None) -> Reply:
        limit = self.request_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            with conn.lock:
                if c.done:
                    break
                expired = time.monotonic() >= deadline
                lead = not expired and not conn.reading
                if lead:
                    conn.reading = True
                elif not expired:
                    c.event.clear()
                    c.waiting = True
            if expired:
                self._timed_out(conn, rid, limit)
            if lead:
                self._read_until(conn, c, deadline)
                continue
            left = deadline - time.monotonic()
            if left > 0:
                c.event.wait(left)
            with conn.lock:
                c.waiting = False
        if c.error is not None:
            raise c.error
        return Reply(c.parts, conn.generation)

    def _timed_out(self, conn: _Conn, rid: int, limit: float) -> None:
        with conn.lock:
            conn.pending.pop(rid, None)
        err = ConnectionLost(
            f"the broker at {self.address} did not answer within {limit:.0f}s; the "
            "connection is reset (the request may or may not have been applied)"
        )
        self._lose(conn, err)
        raise err

    def _lost_error(self, conn: _Conn) -> ConnectionLost:
        return ConnectionLost(
            f"the connection to the broker at {self.address} was lost ({conn.reason}) while "
            "a request was in flight; it may or may not have been applied"
        )

    # -- reading replies (by a waiting caller) ----------------------------------------

    def _read_until(self, conn: _Conn, c: _Call, deadline: float) -> None:
        """Read and dispatch replies until ``c``'s is in, then hand reading to a waiter."""
        try:
            while not c.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    return  # wait() sees the deadline passed
                data = conn.channel.recv_within(left)
                if data is None:
                    continue
                if not data:
                    raise ConnectionError("the broker closed the connection")
                for f in conn.decoder.feed(data):
                    self._dispatch(conn, f)
                conn.decoder.check()
        except BaseException as exc:
            self._lose(conn, exc)
        finally:
            with conn.lock:
                conn.reading = False
                for other in conn.pending.values():
                    if other.waiting:
                        other.event.set()  # its turn to read
                        break

    def _dispatch(self, conn: _Conn, f: wire.Frame) -> None:
        if f.op == wire.Op.RESULT_MORE:
            with conn.lock:
                c = conn.pending.get(f.id)
            if c is not None:
                c.parts.append(f.payload)
            return
        err: MQError | None = None
        if f.op == wire.Op.ERROR:
            err = wire.exception_from_error(wire.decode_error(f.payload))
        with conn.lock:
            c = conn.pending.pop(f.id, None)
            if c is None:
                if err is not None:  # about the connection itself: it is closing
                    raise ConnectionError(str(err))
                return
            if err is not None:
                c.error = err
            else:
                c.parts.append(f.payload)
            c.done = True
            c.event.set()

    def _lose(self, conn: _Conn, exc: BaseException) -> None:
        with conn.lock:
            if conn.dead:
                return
            conn.dead = True
            conn.reason = exc
            pending, conn.pending = conn.pending, {}
        if not self._closed:
            log.warning("connection to the mqkit broker at %s lost: %s", self.address, exc)
        conn.channel.close()
        err = (
            Closed("this mqkit broker client was closed")
            if self._closed
            else self._lost_error(conn)
        )
        with conn.lock:
            for c in pending.values():
                c.error = err
                c.done = True
                c.event.set()

    def close(self) -> None:
        """Close the connection; requests still waiting fail with Closed.  Idempotent."""
        self._closed = True
        with self._connect_lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        self._lose(conn, Closed("closed by the client"))
