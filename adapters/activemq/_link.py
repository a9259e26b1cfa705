"""One STOMP connection (stomp.py ``Connection12``) that can be re-established.

Every (re)connection is a new ``Connection12`` object and a new *generation*
number: frames, receipts and losses are tagged with the generation they
belong to, so nothing from a dead connection is mistaken for the live one.

stomp.py runs one receiver thread per connection (plus one heart-beat thread)
and calls the listener from it; sending is a ``sendall`` under the transport's
own lock, so any thread may send (batches of frames are written in one piece
through :mod:`._wire`).  Receipts are matched here: a caller
registers a callback for a receipt id *before* sending the frame, and it is
called exactly once -- with None on the RECEIPT, or with the error when an
ERROR frame names that receipt, the connection is lost, or the link closes.

An ERROR frame that names no awaited receipt cannot be tied to a frame; it
fails every *guarded* receipt (a transaction's COMMIT) still awaited on that
connection.  ActiveMQ's STOMP layer answers a SEND it refuses before the broker
sees it (a ProtocolException) with such a frame, at once and so before the
RECEIPT of the COMMIT that follows; the transaction was not told, and the
COMMIT would succeed without that message.  A SEND the broker itself refuses
marks its transaction rollback-only (the COMMIT then fails with an ERROR
naming its receipt) and is also reported by such a frame, written
asynchronously: it may arrive after that COMMIT's ERROR and fail a later
transaction of the connection that was fine -- reported failed, never
confirmed wrongly.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mqkit.errors import Closed, ConnectionLost, MQError, PublishError

__all__ = ["Link", "LinkConfig", "Stale"]

log = logging.getLogger("mqkit.adapters.activemq")


class _QuietDriver(logging.Filter):
    """Keep stomp.py's log lines for failures this module reports itself out of the logs.

    A refused connection attempt or a failed socket write becomes a
    ConnectionLost (with the address and a hint) or a reconnect; stomp.py's own
    per-attempt warning (with a traceback for writes) would only repeat it.  The
    reason of the last failed attempt is kept (per thread: stomp.py connects on
    the caller's thread) for that ConnectionLost.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("could not connect to host"):
            args = record.args
            self.last.reason = str(args[-1]) if isinstance(args, tuple) and args else msg
            return False
        return not msg.startswith("error sending frame")

    def take(self) -> str | None:
        reason: str | None = getattr(self.last, "reason", None)
        self.last.reason = None
        return reason


_QUIET = _QuietDriver()
logging.getLogger("stomp.py").addFilter(_QUIET)

ReceiptCallback = Callable[[BaseException | None], None]


class Stale(ConnectionLost):
    """A frame was meant for a connection that is gone (its deliveries went back)."""


@dataclass(frozen=True)
class LinkConfig:
    """What every connection of one adapter shares."""

    endpoints: tuple[tuple[str, int], ...]
    login: str | None
    passcode: str | None
    vhost: str | None
    heartbeat_ms: int
    connect_timeout: float
    reconnect_max_delay: float
    client_id: str
    tls: dict[str, Any] | None = None  # stomp.py set_ssl keyword arguments

    @property
    def address(self) -> str:
        scheme = "stomp+ssl" if self.tls is not None else "stomp"
        return ",".join(f"{scheme}://{h}:{p}" for h, p in self.endpoints)


class _Listener:
    """stomp.py listener bound to one generation (stomp.py looks methods up by name)."""

    def __init__(self, link: Link, gen: int) -> None:
        self.link = link
        self.gen = gen
        self.connected = threading.Event()
        self.dead = threading.Event()
        self.error: str | None = None

    def on_connected(self, frame: Any) -> None:
        self.connected.set()

    def on_message(self, frame: Any) -> None:
        self.link._on_message(self.gen, frame)

    def on_receipt(self, frame: Any) -> None:
        self.link._on_receipt(self.gen, frame.headers.get("receipt-id", ""))

    def on_error(self, frame: Any) -> None:
        text = frame.headers.get("message", "")
        body = frame.body
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        if body:
            text = f"{text}: {body.strip()[:500]}" if text else body.strip()[:500]
        self.error = text or "ERROR frame"
        self.link._on_error(self.gen, frame.headers.get("receipt-id"), self.error)

    def on_heartbeat_timeout(self) -> None:
        log.warning("ActiveMQ heart-beats stopped (connection %d); reconnecting", self.gen)

    def on_disconnected(self) -> None:
        self.dead.set()
        self.connected.set()  # wake a connect() waiting for CONNECTED
        self.link._on_disconnected(self.gen, self.error)


class Link:
    """A reconnectable STOMP connection; see the module docstring."""

    def __init__(
        self,
        config: LinkConfig,
        *,
        name: str,
        on_message: Callable[[int, Any], None] | None = None,
        on_lost: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self._on_message_cb = on_message
        self._on_lost_cb = on_lost
        self._connect_lock = threading.Lock()
        self._state = threading.Lock()
        self._conn: Any = None
        self._listener: _Listener | None = None
        self._gen = 0
        self._alive = False
        self._closed = False
        self._waiters: dict[str, tuple[int, ReceiptCallback, bool]] = {}  # gen, cb, guarded
        self._ids = itertools.count(1)
        self._prefix = f"{name}-{uuid.uuid4().hex[:8]}"

    # -- state ---------------------------------------------------------------------------

    @property
    def gen(self) -> int:
        return self._gen

    def alive(self) -> bool:
        return self._alive and not self._closed

    def next_id(self, kind: str = "r") -> str:
        return f"{self._prefix}-{kind}{next(self._ids)}"

    # -- connecting ----------------------------------------------------------------------

    def connect(self) -> int:
        """One attempt over every endpoint; the live generation, or ConnectionLost."""
        import stomp

        with self._connect_lock:
            if self._closed:
                raise Closed("this ActiveMQ connection is closed")
            if self._alive:
                return self._gen
            _QUIET.take()
            errors: list[str] = []
            cfg = self.config
            for host, port in cfg.endpoints:
                conn = stomp.Connection12(
                    [(host, port)],
                    heartbeats=(cfg.heartbeat_ms, cfg.heartbeat_ms),
                    reconnect_attempts_max=1,
                    reconnect_sleep_initial=0.0,
                    timeout=cfg.connect_timeout,
                    keepalive=True,
                    vhost=cfg.vhost,
                    auto_decode=False,
                    try_loopback_connect=False,
                )
                if cfg.tls is not None:
                    conn.set_ssl(for_hosts=[(host, port)], **cfg.tls)
                with self._state:
                    gen = self._gen + 1
                    self._gen = gen  # callbacks of older connections are ignored from now on
                listener = _Listener(self, gen)
                conn.set_listener("mqkit", listener)
                try:
                    conn.connect(
                        username=cfg.login,
                        passcode=cfg.passcode,
                        wait=False,
                        headers={"client-id": f"{cfg.client_id}-{self._prefix}-{gen}"},
                    )
                except Exception as exc:  # stomp.py: ConnectFailedException, OSError, ssl errors
                    errors.append(f"{host}:{port}: {_QUIET.take() or repr(exc)}")
                    _drop(conn)
                    continue
                if not listener.connected.wait(cfg.connect_timeout) or listener.dead.is_set():
                    why = listener.error or "no CONNECTED frame"
                    errors.append(f"{host}:{port}: {why}")
                    _drop(conn)
                    continue
                with self._state:
                    dropped = listener.dead.is_set() or gen != self._gen
                    if not dropped:
                        self._conn = conn
                        self._listener = listener
                        self._alive = True
                if dropped:
                    errors.append(f"{host}:{port}: connection dropped right after CONNECTED")
                    _drop(conn)
                    continue
                log.debug("connected %s to %s:%d (connection %d)", self.name, host, port, gen)
                return gen
            raise ConnectionLost(
                f"cannot connect to ActiveMQ at {cfg.address} ({'; '.join(errors)}); is the "
                "broker running and its STOMP connector enabled? (docker/brokers up activemq)"
            )

    def ensure(self, deadline: float) -> int:
        """Connect, retrying with backoff until ``deadline`` (time.monotonic)."""
        delay = 0.05
        while True:
            if self.alive():
                return self._gen
            try:
                return self.connect()
            except ConnectionLost:
                now = time.monotonic()
                if self._closed or now + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, self.config.reconnect_max_delay)

    # -- sending -------------------------------------------------------------------------

    def conn(self, gen: int | None = None) -> tuple[int, Any]:
        """The live connection (of ``gen``, if given); Stale / ConnectionLost otherwise."""
        with self._state:
            if self._closed:
                raise Closed("this ActiveMQ connection is closed")
            if gen is not None and gen != self._gen:
                raise Stale(f"connection {gen} to ActiveMQ is gone (now {self._gen})")
            if not self._alive:
                raise ConnectionLost(f"not connected to ActiveMQ at {self.config.address}")
            return self._gen, self._conn

    def call(self, gen: int, action: Callable[[Any], None]) -> None:
        """Run ``action(connection)`` (a stomp.py send); a socket error marks the link lost."""
        g, conn = self.conn(gen)
        try:
            action(conn)
        except MQError:
            raise
        except Exception as exc:  # stomp.py: NotConnectedException, OSError, ssl errors
            self._lost(g, f"send failed: {exc!r}")
            raise ConnectionLost(
                f"lost the connection to ActiveMQ at {self.config.address} while sending: {exc!r}"
            ) from exc

    def expect(
        self, receipt: str, gen: int, callback: ReceiptCallback, *, guard: bool = False
    ) -> None:
        """Call ``callback`` once for ``receipt``; register before sending the frame.

        ``guard``: an ERROR frame naming no receipt fails it too (see the module docstring).
        """
        with self._state:
            if gen != self._gen or not self._alive:
                dead = True
            else:
                self._waiters[receipt] = (gen, callback, guard)
                dead = False
        if dead:
            callback(ConnectionLost(f"connection {gen} to ActiveMQ is gone"))

    def forget(self, receipt: str) -> None:
        with self._state:
            self._waiters.pop(receipt, None)

    def request(self, gen: int, action: Callable[[Any, str], None], timeout: float) -> None:
        """Send a frame with a receipt header and wait for the RECEIPT."""
        receipt = self.next_id()
        done = threading.Event()
        result: list[BaseException | None] = []

        def callback(error: BaseException | None) -> None:
            result.append(error)
            done.set()

        self.expect(receipt, gen, callback)
        try:
            self.call(gen, lambda conn: action(conn, receipt))
        except BaseException:
            self.forget(receipt)
            raise
        if not done.wait(timeout):
            self.forget(receipt)
            raise PublishError(f"ActiveMQ sent no receipt within {timeout:g} s")
        if result[0] is not None:
            raise result[0]

    def reset(self, gen: int, why: str) -> None:
        """Drop connection ``gen`` (its state is unknown); the next ``connect`` makes a new one."""
        self._lost(gen, why)

    # -- closing -------------------------------------------------------------------------

    def close(self, timeout: float = 3.0) -> None:
        """DISCONNECT (the broker gives back what this connection did not ack)."""
        with self._connect_lock:
            with self._state:
                if self._closed:
                    return
                self._closed = True
                conn, listener, alive = self._conn, self._listener, self._alive
                self._alive = False
            if conn is not None and listener is not None:
                if alive:
                    try:
                        conn.disconnect()
                    except Exception as exc:  # the socket is already gone: nothing to say
                        log.debug("DISCONNECT of %s failed: %r", self.name, exc)
                    listener.dead.wait(timeout)
                _drop(conn)
        self._fail_waiters(None, Closed("the ActiveMQ connection was closed"))

    # -- listener callbacks (stomp.py's receiver thread) ---------------------------------

    def _on_message(self, gen: int, frame: Any) -> None:
        if gen == self._gen and self._on_message_cb is not None:
            self._on_message_cb(gen, frame)

    def _on_receipt(self, gen: int, receipt: str) -> None:
        with self._state:
            entry = self._waiters.pop(receipt, None)
        if entry is not None:
            entry[1](None)

    def _on_error(self, gen: int, receipt: str | None, text: str) -> None:
        if receipt:
            with self._state:
                entry = self._waiters.pop(receipt, None)
            if entry is not None:
                entry[1](PublishError(f"ActiveMQ refused it: {text}"))
            else:  # its frame was settled already (timed out, or failed by the rule below)
                log.info("ActiveMQ refused %s (no longer awaited): %s", receipt, text)
            return
        log.warning("ActiveMQ sent an ERROR frame to %s: %s", self.name, text)
        with self._state:
            doomed = [r for r, (g, _, guard) in self._waiters.items() if guard and g == gen]
            callbacks = [self._waiters.pop(r)[1] for r in doomed]
        for cb in callbacks:
            cb(
                PublishError(
                    f"ActiveMQ sent an ERROR frame naming no receipt while this transaction "
                    f"was unconfirmed ({text}); a SEND of it may have been refused, the "
                    "others may be stored"
                )
            )

    def _on_disconnected(self, gen: int, error: str | None) -> None:
        self._lost(gen, error)

    def _lost(self, gen: int, why: str | None) -> None:
        with self._state:
            if gen != self._gen or not self._alive:
                return
            self._alive = False
            conn = self._conn
        if why:
            log.warning("lost connection %d of %s to ActiveMQ: %s", gen, self.name, why)
        exc = ConnectionLost(
            f"lost the connection to ActiveMQ at {self.config.address}"
            + (f" ({why})" if why else "")
        )
        self._fail_waiters(gen, exc)
        if conn is not None:
            threading.Thread(target=_drop, args=(conn,), daemon=True).start()
        if self._on_lost_cb is not None:
            self._on_lost_cb(gen)

    def _fail_waiters(self, gen: int | None, exc: BaseException) -> None:
        with self._state:
            doomed = [(r, cb) for r, (g, cb, _) in self._waiters.items() if gen is None or g == gen]
            for r, _ in doomed:
                del self._waiters[r]
        for _, cb in doomed:
            cb(exc)


def _drop(conn: Any) -> None:
    """Close a stomp.py connection's socket without the protocol (it is dead or unwanted)."""
    try:
        transport = conn.transport
        transport.running = False
        if transport.socket is not None:
            transport.disconnect_socket()
    except Exception as exc:  # best effort on a connection we are abandoning
        log.debug("closing a dead STOMP socket: %r", exc)
