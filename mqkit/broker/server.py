"""The native broker as a network server: one :class:`Engine` behind asyncio TCP.

Why this shape:

* The engine *is* the semantics (the same one ``native://`` runs in-process);
  the server only exposes it, so ``mqkit://`` behaves like ``native://``.
* Publish, ack, nack and heartbeat run on the loop itself: a thread hop (and
  the wake-up back) costs more than appending to a page-cached file or
  in-memory bookkeeping.  A durable publish is appended without waiting; its
  reply is held until the end of the loop turn, when one fsync per touched
  partition (``settle``) confirms every publish read in that turn, from every
  connection -- group commit.  Requests arriving during that fsync wait in
  the socket buffers and make up the next group.  Calls that may wait
  (fetches, joins, declares) run in a thread pool.
* Requests are pipelined and each reply carries its request's id.  A FETCH
  runs beside everything else (a slow fetch never holds up an ack behind
  it); the other requests of a connection take effect in the order sent (a
  PUBLISH right behind its DECLARE finds the topic).  Replies finished in the
  same loop turn are written with one call.
* Bounded everything: frame size (checked before allocating), requests in
  flight per connection and unsent reply bytes (the connection is not read
  while either is over its bound), number of connections.
* A connection is a trust boundary: it may only act for the group members it
  joined, a malformed frame closes only that connection (after an ERROR
  frame), and its disconnect makes its members leave, so the messages they
  held are redelivered to the rest of their groups.

Run it with ``python -m mqkit.broker.server --data-dir D`` (or ``--memory``);
``mqkit broker serve`` is the same entry point.  SIGTERM/SIGINT stop it
gracefully: no new connections or requests, requests in flight finish, the
engine is closed (flushed), exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import math
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqkit.broker import protocol as wire
from mqkit.broker.engine import Engine
from mqkit.broker.log import PREALLOCATE_BYTES, MemoryLog, PartitionLog
from mqkit.errors import Closed, ConfigError, MQError, PublishError
from mqkit.producer import check_topic

__all__ = ["DEFAULT_PORT", "BrokerServer", "Hosted", "main", "open_hosted", "serve"]

log = logging.getLogger("mqkit.broker.server")

DEFAULT_PORT = 7600
READ_CHUNK = 256 * 1024
MAX_FETCH_WAIT = 300.0  # seconds a single FETCH may wait on the server
MAX_NACK_DELAY = 30 * 86400.0
MAX_PARTITIONS = 4096  # a topic's logs are created eagerly: bound what one request can ask for
FETCH_BYTES = 4 * 1024 * 1024  # a FETCH stops collecting past this many bytes
# Requests run on the loop (see the module docstring): none of them waits.
_INLINE = (wire.Publish, wire.Ack, wire.Nack, wire.Heartbeat)


@dataclass
class Hosted:
    """The engine a server hosts, what it can promise, and how to release it."""

    engine: Engine
    persistent: bool
    settles: bool = False  # a durable publish must wait for an fsync (fsync="always")
    on_delete_topic: Callable[[str], None] | None = None
    on_close: list[Callable[[], None]] = field(default_factory=list)
    _closed: bool = False

    def close(self) -> None:
        """Close the engine (it flushes), then what it runs on; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.engine.close()
        finally:
            for fn in self.on_close:
                fn()


def open_hosted(
    data_dir: Path | None,
    *,
    fsync: str = "always",
    memory: bool = False,
    session_timeout: float = 30.0,
    preallocate_bytes: int = PREALLOCATE_BYTES,
) -> Hosted:
    """An engine over memory (``memory``) or over the on-disk storage in ``data_dir``."""
    if memory:
        return Hosted(Engine(MemoryLog, session_timeout=session_timeout), persistent=False)
    if data_dir is None:
        raise ConfigError(
            "give the data directory (--data-dir D), or --memory for a broker that keeps "
            "nothing across restarts",
            field="data_dir",
        )
    try:
        from mqkit.broker.storage import Storage
    except ImportError as exc:
        raise ConfigError(
            f"on-disk storage is not available in this installation ({exc}); run the broker "
            "with --memory instead",
            field="data_dir",
        ) from exc
    if fsync not in ("always", "interval", "never"):
        raise ConfigError("must be always, interval or never", field="fsync")
    storage = Storage(
        Path(data_dir),
        fsync=fsync,  # type: ignore[arg-type]
        preallocate_bytes=preallocate_bytes,
    )
    try:
        engine = Engine(storage.log, storage.state, session_timeout=session_timeout)
    except BaseException:
        storage.close()
        raise
    return Hosted(engine, True, fsync == "always", storage.delete_topic, [storage.close])


class _Connection:
    """One client connection: reads frames, runs requests, writes replies."""

    def __init__(
        self, server: BrokerServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.peer = writer.get_extra_info("peername")
        self.members: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.fetches: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(server.max_inflight)
        self.greeted = False
        self.closed = False
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._reading: asyncio.Task[None] | None = None
        self._last: asyncio.Task[None] | None = None  # latest request that is not a FETCH
        writer.transport.set_write_buffer_limits(high=server.max_pending_bytes)

    async def serve(self) -> None:
        self._reading = asyncio.ensure_future(self._read_loop())
        try:
            await self._reading
        except asyncio.CancelledError:
            pass  # shutdown: the server finishes in-flight work and closes us
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.debug("connection %s lost: %s", self.peer, exc)
        if not self.server.stopping:
            await self.close()

    def stop_reading(self) -> None:
        if self._reading is not None:
            self._reading.cancel()

    async def _read_loop(self) -> None:
        decoder = wire.FrameDecoder(self.server.max_frame)
        loop = asyncio.get_running_loop()
        hello_deadline = loop.time() + self.server.hello_timeout
        while not self.closed:
            if self.greeted and not decoder.buffered:
                data = await self.reader.read(READ_CHUNK)
            else:
                # Before HELLO, and inside a frame, the peer must keep sending: a
                # connection may not sit on a half-sent frame (and its buffer).
                limit = self.server.frame_timeout
                if not self.greeted:
                    limit = max(0.0, hello_deadline - loop.time())
                try:
                    data = await asyncio.wait_for(self.reader.read(READ_CHUNK), limit)
                except asyncio.TimeoutError:
                    what = "a whole frame" if self.greeted else "HELLO"
                    self.send_error(0, wire.ErrorKind.PROTOCOL, f"no {what} received in time")
                    return
            if not data:
                return
            rid = 0
            try:
                for frame in decoder.feed(data):
                    rid = frame.id
                    req = wire.decode_request(frame.op, frame.payload)
                    if not self.greeted:
                        if not self._hello(frame.id, req):
                            return
                        continue
                    if isinstance(req, wire.Hello):
                        raise wire.ProtocolError("HELLO was already received")
                    if isinstance(req, _INLINE) and (self._last is None or self._last.done()):
                        self._run_inline(frame.id, req)
                        continue
                    await self.slots.acquire()
                    if self.closed:
                        return
                    self._start(frame.id, req)
                decoder.check()
            except wire.ProtocolError as exc:
                log.info("closing %s: %s", self.peer, exc)
                self.send_error(rid, wire.ErrorKind.PROTOCOL, str(exc))
                return
            await self.writer.drain()  # waits only while unsent replies exceed the bound

    def _hello(self, rid: int, req: wire.Request) -> bool:
        if not isinstance(req, wire.Hello):
            self.send_error(rid, wire.ErrorKind.PROTOCOL, "the first frame must be HELLO")
            return False
        if req.version != wire.VERSION:
            self.send_error(
                rid,
                wire.ErrorKind.PROTOCOL,
                f"protocol version {req.version} is not supported; this broker speaks "
                f"{wire.VERSION} (upgrade the older side)",
            )
            return False
        token = self.server.token
        if token is not None and not hmac.compare_digest(req.token.encode(), token.encode()):
            log.warning("refused %s: wrong or missing token", self.peer)
            self.send_error(
                rid,
                wire.ErrorKind.AUTH,
                "the broker refused the token (wrong or missing); put the broker's token in "
                "the URL: mqkit://host:port?token=...",
                "token",
            )
            return False
        self.greeted = True
        reply = wire.HelloReply(wire.VERSION, self.server.hosted.persistent, self.server.max_frame)
        self.send(rid, [(wire.Op.RESULT, wire.encode_hello_reply(reply))])
        return True

    def _start(self, rid: int, req: wire.Request) -> None:
        if isinstance(req, wire.Fetch):  # may wait long: runs beside everything else
            task = asyncio.ensure_future(self._run(rid, req, None))
            self.fetches.add(task)
            task.add_done_callback(self.fetches.discard)
        else:  # takes effect after the connection's earlier requests (DECLARE, then PUBLISH)
            task = asyncio.ensure_future(self._run(rid, req, self._last))
            self._last = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _check_member(self, req: wire.Request) -> None:
        member = getattr(req, "member", None)
        if member is not None and member not in self.members:
            raise Closed(
                f"consumer {member} is not a member on this connection (it left, was "
                "evicted, or joined on another connection); create a new consumer"
            )

    def _run_inline(self, rid: int, req: wire.Request) -> None:
        try:
            self._check_member(req)
            if isinstance(req, wire.Publish):
                self.server.publish(self, rid, req)
                return
            out = self.server.execute(req)
        except Exception as exc:
            out = _error_frames(exc, req, self.peer)
        self.send(rid, out)

    async def _run(self, rid: int, req: wire.Request, after: asyncio.Future[None] | None) -> None:
        loop = asyncio.get_running_loop()
        if after is not None:
            try:
                await asyncio.wait([after])
            except BaseException:  # cancelled while waiting its turn (shutdown)
                self.slots.release()
                raise
        if isinstance(req, _INLINE):
            self.slots.release()
            self._run_inline(rid, req)
            return
        try:
            self._check_member(req)
            if isinstance(req, wire.Leave):
                self.members.discard(req.member)
            out = await loop.run_in_executor(self.server.pool, self.server.execute, req)
            if isinstance(req, wire.Join):
                joined = wire.decode_member(out[-1][1])
                if self.closed:
                    await loop.run_in_executor(self.server.pool, self.server.leave, joined)
                else:
                    self.members.add(joined)
        except Exception as exc:
            out = _error_frames(exc, req, self.peer)
        finally:
            self.slots.release()
        self.send(rid, out)

    # -- writing -----------------------------------------------------------------

    def send(self, rid: int, frames: list[tuple[wire.Op, bytes]]) -> None:
        if self.closed or self.writer.is_closing():
            return
        for op, payload in frames:
            self._out.append(wire.encode_frame(op, rid, payload))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def send_error(self, rid: int, kind: wire.ErrorKind, msg: str, name: str | None = None) -> None:
        self.send(rid, [(wire.Op.ERROR, wire.encode_error(kind, msg, name))])

    def flush(self) -> None:
        """Write the queued replies (also scheduled by :meth:`send` for the loop's next turn)."""
        self._flush_scheduled = False
        if self._out and not self.writer.is_closing():
            out, self._out = self._out, []
            self.writer.writelines(out)

    async def close(self) -> None:
        """Flush what is queued, close the socket, make this connection's members leave."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        self.stop_reading()
        members = list(self.members)
        self.members.clear()
        with contextlib.suppress(Exception):
            self.writer.close()
        loop = asyncio.get_running_loop()
        for m in members:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(self.server.pool, self.server.leave, m)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 5.0)


def _error_frames(exc: Exception, req: object, peer: object) -> list[tuple[wire.Op, bytes]]:
    kind, msg, name = wire.error_from_exception(exc)
    if kind is wire.ErrorKind.INTERNAL:
        log.error("request %s from %s failed", type(req).__name__, peer, exc_info=exc)
    return [(wire.Op.ERROR, wire.encode_error(kind, msg, name))]


class BrokerServer:
    """Serves one hosted engine over TCP (optionally TLS); see the module docstring."""

    def __init__(
        self,
        hosted: Hosted,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        max_inflight: int = 128,
        max_pending_bytes: int = 8 * 1024 * 1024,
        max_connections: int = 1024,
        workers: int = 256,
        hello_timeout: float = 10.0,
        frame_timeout: float = 60.0,
    ) -> None:
        self.hosted = hosted
        self.engine = hosted.engine
        self.host = host
        self.port = port
        self.token = token or None
        self.ssl_context = ssl_context
        self.max_frame = max_frame
        self.max_inflight = max_inflight
        self.max_pending_bytes = max_pending_bytes
        self.max_connections = max_connections
        self.hello_timeout = hello_timeout
        self.frame_timeout = frame_timeout
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mqkit-broker")
        self.stopping = False
        self._conns: set[_Connection] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None
        # Durable publishes appended in this loop turn, waiting for settle().
        self._unsettled: list[tuple[_Connection, int, list[tuple[wire.Op, bytes]]]] = []
        self._dirty: set[tuple[str, int]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, ssl=self.ssl_context, limit=READ_CHUNK * 2
        )
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info(
            "mqkit broker listening on %s:%d (%s%s, %s)",
            self.host,
            self.port,
            "TLS" if self.ssl_context else "plain TCP",
            ", token required" if self.token else "",
            "persistent" if self.hosted.persistent else "in memory: nothing survives a restart",
        )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.stopping or len(self._conns) >= self.max_connections:
            msg = "the broker is shutting down" if self.stopping else "too many connections"
            writer.write(
                wire.encode_frame(
                    wire.Op.ERROR, 0, wire.encode_error(wire.ErrorKind.UNAVAILABLE, msg)
                )
            )
            writer.close()
            return
        conn = _Connection(self, reader, writer)
        self._conns.add(conn)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await conn.serve()
        finally:
            self._conns.discard(conn)
            if task is not None:
                self._handlers.discard(task)

    # -- publishing and group commit (on the loop) ----------------------------------

    def publish(self, conn: _Connection, rid: int, req: wire.Publish) -> None:
        """Append now; reply now, or at the end of this loop turn once an fsync covers it."""
        check_topic(req.topic)
        try:
            placed = self.engine.publish(req.topic, req.records, durable=False)
        except OSError as exc:
            raise PublishError(f"the broker could not store the messages: {exc}") from exc
        reply = [(wire.Op.RESULT, wire.encode_placed(placed))]
        if not (req.durable and self.hosted.settles and placed):
            conn.send(rid, reply)
            return
        if not self._unsettled:
            asyncio.get_running_loop().call_soon(self._settle)
        self._unsettled.append((conn, rid, reply))
        self._dirty.update({(req.topic, p) for p, _ in placed})

    def _settle(self) -> None:
        """fsync every partition appended to since the last call, then send the held replies.

        Blocks the loop for the fsync on purpose: what arrives meanwhile waits in the
        socket buffers and is confirmed by the next one (several partitions are
        synced side by side in the pool).
        """
        waiting, self._unsettled = self._unsettled, []
        dirty, self._dirty = self._dirty, set()
        failed: list[tuple[wire.Op, bytes]] | None = None
        try:
            logs = self.engine.logs_of(dirty)
            if len(logs) == 1:
                logs[0].settle()
            else:
                for _ in self.pool.map(_settle_log, logs):
                    pass
        except Exception as exc:
            if isinstance(exc, OSError):
                exc = PublishError(f"the broker could not store the messages: {exc}")
            failed = _error_frames(exc, "Publish", "(group commit)")
        for conn, rid, reply in waiting:
            conn.send(rid, reply if failed is None else failed)
        for conn in {c for c, _, _ in waiting}:
            conn.flush()  # now, not a loop turn later: the confirm is what they wait for

    # -- engine calls ----------------------------------------------------------------

    def execute(self, req: wire.Request) -> list[tuple[wire.Op, bytes]]:
        """Run one request against the engine; the reply frames' (op, payload)."""
        e = self.engine
        ok: list[tuple[wire.Op, bytes]] = [(wire.Op.RESULT, b"")]
        if isinstance(req, wire.Fetch):
            return self._fetch(req)
        if isinstance(req, wire.Ack):
            for p, o in req.items:
                e.ack(req.member, p, o)
            return ok
        if isinstance(req, wire.Nack):
            delay = min(max(req.delay, 0.0), MAX_NACK_DELAY)
            for p, o in req.items:
                e.nack(req.member, p, o, delay=delay)
            return ok
        if isinstance(req, wire.Heartbeat):
            e.heartbeat(req.member)
            return ok
        if isinstance(req, wire.Leave):
            e.leave(req.member)
            return ok
        if isinstance(req, wire.Join):
            check_topic(req.topic)
            check_topic(req.group, field="group")
            if req.prefetch < 1:
                raise ConfigError(f"must be at least 1, got {req.prefetch}", field="prefetch")
            return [
                (
                    wire.Op.RESULT,
                    wire.encode_member(
                        e.join(req.topic, req.group, ordered=req.ordered, prefetch=req.prefetch)
                    ),
                )
            ]
        if isinstance(req, wire.Declare):
            check_topic(req.topic)
            for g in req.groups:
                check_topic(g, field="groups")
            if req.partitions is not None and req.partitions > MAX_PARTITIONS:
                raise ConfigError(
                    f"{req.partitions} is more than this broker allows ({MAX_PARTITIONS})",
                    field="partitions",
                )
            e.declare(req.topic, partitions=req.partitions, groups=req.groups)
            return ok
        if isinstance(req, wire.Stats):
            rows = [
                wire.StatRow(s.partition, s.backlog, s.in_flight, s.oldest_timestamp)
                for s in e.stats(req.topic, req.group)
            ]
            return [(wire.Op.RESULT, wire.encode_stats(rows))]
        if isinstance(req, wire.DeleteTopic):
            check_topic(req.topic)
            e.delete_topic(req.topic)
            if self.hosted.on_delete_topic is not None:
                self.hosted.on_delete_topic(req.topic)
            return ok
        raise wire.ProtocolError(f"{type(req).__name__} is not handled here")

    def _fetch(self, req: wire.Fetch) -> list[tuple[wire.Op, bytes]]:
        """Wait for the first deliveries, then take more without waiting up to a byte budget.

        Asking the engine in growing steps keeps one reply's memory bounded by
        bytes, not just by count, whatever size the messages are.
        """
        wait = req.timeout if math.isfinite(req.timeout) else 0.0
        wait = min(max(wait, 0.0), MAX_FETCH_WAIT)
        left = min(req.max_count, 100_000)
        step = min(left, 8)
        got = self.engine.fetch(req.member, step, wait) if left else []
        left -= len(got)
        size = sum(len(d.record.value) for d in got)
        while got and left > 0 and size < FETCH_BYTES and len(got) >= step:
            step = min(left, step * 2)
            more = self.engine.fetch(req.member, step, 0.0)
            if not more:
                break
            got += more
            left -= len(more)
            size += sum(len(d.record.value) for d in more)
        payloads = wire.encode_deliveries(
            [wire.Delivery(d.partition, d.offset, d.attempt, d.record) for d in got]
        )
        return [(wire.Op.RESULT_MORE, p) for p in payloads[:-1]] + [(wire.Op.RESULT, payloads[-1])]

    def leave(self, member: str) -> None:
        self.engine.leave(member)

    # -- lifecycle ---------------------------------------------------------------------

    async def shutdown(self, grace: float = 30.0) -> None:
        """Stop accepting and reading, finish requests in flight, close the engine."""
        if self.stopping:
            return
        self.stopping = True
        log.info("shutting down: finishing requests in flight")
        loop = asyncio.get_running_loop()
        if self._server is not None:
            self._server.close()
        conns = list(self._conns)
        for c in conns:
            c.stop_reading()
        self._settle()  # publishes read before the stop get their confirms
        work = [t for c in conns for t in c.tasks if t not in c.fetches]
        if work:
            await asyncio.wait(work, timeout=grace)
        # Closing the engine wakes waiting fetches: they answer "closed" at once.
        await loop.run_in_executor(self.pool, self.hosted.close)
        rest = [t for c in conns for t in c.tasks]
        if rest:
            await asyncio.wait(rest, timeout=5.0)
        for c in conns:
            await c.close()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
        self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("broker stopped")


def _settle_log(plog: PartitionLog) -> None:
    plog.settle()


def tls_context(cert: str | Path | None, key: str | Path | None) -> ssl.SSLContext | None:
    """The server's TLS context, or None for plain TCP; both files or neither."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = "tls_key" if key is None else "tls_cert"
        raise ConfigError("TLS needs both --tls-cert and --tls-key", field=missing)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the certificate/key: {exc}", field="tls_cert") from exc
    return ctx


def serve(
    data_dir: Path | None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    fsync: str = "always",
    memory: bool = False,
    *,
    engine: Hosted | Callable[[], Hosted] | None = None,
    session_timeout: float = 30.0,
    preallocate_bytes: int = PREALLOCATE_BYTES,
    ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    install_signals: bool = True,
    **server_options: Any,
) -> None:
    """Run the broker until SIGTERM/SIGINT (or ``stop`` is set); returns after a clean stop.

    ``engine`` replaces the data_dir/memory choice with a ready :class:`Hosted`
    (or a factory of one); ``ready(port)`` is called once the port is bound.
    """
    ctx = tls_context(tls_cert, tls_key)
    if engine is None:
        hosted = open_hosted(
            data_dir,
            fsync=fsync,
            memory=memory,
            session_timeout=session_timeout,
            preallocate_bytes=preallocate_bytes,
        )
    else:
        hosted = engine() if callable(engine) else engine
    try:
        asyncio.run(
            _run(hosted, host, port, token, ctx, ready, stop, install_signals, server_options)
        )
    finally:
        hosted.close()


async def _run(
    hosted: Hosted,
    host: str,
    port: int,
    token: str | None,
    ctx: ssl.SSLContext | None,
    ready: Callable[[int], None] | None,
    stop: asyncio.Event | None,
    install_signals: bool,
    options: dict[str, Any],
) -> None:
    server = BrokerServer(hosted, host=host, port=port, token=token, ssl_context=ctx, **options)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    await server.start()
    if ready is not None:
        ready(server.port)
    await stop.wait()
    await server.shutdown()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mqkit broker serve",
        description="Run the mqkit native broker as a server (clients use mqkit://host:port).",
    )
    p.add_argument("--data-dir", type=Path, help="where topics and group state are kept")
    p.add_argument("--memory", action="store_true", help="keep nothing on disk (tests, demos)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (0: any free one)")
    p.add_argument(
        "--token",
        default=os.environ.get("MQKIT_BROKER_TOKEN"),
        help="clients must present this token (default: $MQKIT_BROKER_TOKEN)",
    )
    p.add_argument("--tls-cert", type=Path, help="PEM certificate (chain) for TLS")
    p.add_argument("--tls-key", type=Path, help="PEM private key for TLS")
    p.add_argument("--fsync", choices=["always", "interval", "never"], default="always")
    p.add_argument("--session-timeout", type=float, default=30.0, help="seconds (default 30)")
    p.add_argument(
        "--preallocate-bytes",
        type=int,
        default=PREALLOCATE_BYTES,
        help="disk each partition's active segment reserves ahead of its writes: a cheaper "
        "fsync per confirm (default 1 MiB; 0: off)",
    )
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def ready(port: int) -> None:
        print(f"mqkit broker listening on {args.host}:{port}", flush=True)

    try:
        serve(
            args.data_dir,
            host=args.host,
            port=args.port,
            token=args.token,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            fsync=args.fsync,
            memory=args.memory,
            session_timeout=args.session_timeout,
            preallocate_bytes=args.preallocate_bytes,
            ready=ready,
        )
    except MQError as exc:
        print(f"mqkit broker: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mqkit broker: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
