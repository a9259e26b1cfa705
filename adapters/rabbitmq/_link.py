"""The adapter's one AMQP connection and the I/O thread that drives it.

pika is not thread-safe, and its BlockingConnection waits one round trip per
confirmed message and only answers heartbeats while the application calls
into it.  So every pika call happens on ONE thread running a SelectConnection;
callers hand work to it (:meth:`Link.submit`) and wait on their own event:

* publish: records join a backlog that the I/O thread sends on a channel in
  confirm mode, keeping at most ``window`` unconfirmed messages in flight
  (a sliding window, not one round trip each).  basic.ack resolves records,
  basic.nack, basic.return (mandatory) and a closed channel fail exactly the
  records concerned.
* admin: declare / bind / delete / passive probes, run in order on a channel
  of their own, which RabbitMQ closes on any error (404, 406) -- reopened on
  the next request.
* subscriptions: one channel each (:mod:`._subscription`).

When the connection drops, the I/O thread reconnects with exponential
backoff (host list rotated), reopens channels and resumes every consumer; the
broker has already requeued their unacked deliveries.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from mqkit.adapter import PublishOutcome
from mqkit.errors import Closed, ConfigError, ConnectionLost, MQError, PublishError, Unsupported
from mqkit.message import Receipt

from ._subscription import ACKING, OUTSTANDING, SETTLED, RabbitSubscription

__all__ = ["Batch", "Link", "NotFound", "Outgoing"]

log = logging.getLogger("mqkit.adapters.rabbitmq")


class NotFound(MQError):
    """A passive declare found nothing (AMQP 404)."""


class _QuietProbes(logging.Filter):
    """Drop pika's warning for a 404 on our admin channels: existence probes expect it.

    The 404 itself is not lost: it becomes NotFound for the caller that asked.
    """

    def __init__(self) -> None:
        super().__init__()
        self.channels: weakref.WeakSet[Any] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (
            isinstance(args, tuple)
            and len(args) == 3
            and args[0] == 404
            and args[2] in self.channels
        )


_QUIET = _QuietProbes()
logging.getLogger("pika.channel").addFilter(_QUIET)


class _Waiter:
    """A caller waiting for the I/O thread; failed by the caller on timeout."""

    __slots__ = ("event", "lock")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.lock = threading.Lock()


class Batch(_Waiter):
    """Outcomes of one publish call, filled by the I/O thread (first outcome wins)."""

    __slots__ = ("outcomes", "remaining")

    def __init__(self, n: int) -> None:
        super().__init__()
        self.outcomes: list[PublishOutcome | None] = [None] * n
        self.remaining = n

    def resolve(self, index: int, outcome: PublishOutcome) -> None:
        with self.lock:
            if self.outcomes[index] is not None:
                return
            self.outcomes[index] = outcome
            self.remaining -= 1
            if self.remaining == 0:
                self.event.set()

    def fail_rest(self, error: BaseException) -> None:
        with self.lock:
            for i, o in enumerate(self.outcomes):
                if o is None:
                    self.outcomes[i] = error
            self.remaining = 0
            self.event.set()


class _AdminRequest(_Waiter):
    __slots__ = ("calls", "error", "result")

    def __init__(self, calls: Sequence[tuple[str, dict[str, Any]]]) -> None:
        super().__init__()
        self.calls = calls
        self.result: list[Any] | None = None
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.event.is_set()

    def succeed(self, result: list[Any]) -> None:
        with self.lock:
            if not self.event.is_set():
                self.result = result
                self.event.set()

    def fail(self, error: BaseException) -> None:
        with self.lock:
            if not self.event.is_set():
                self.error = error
                self.event.set()


class Outgoing:
    """One message on its way: where it goes and which batch slot it answers."""

    __slots__ = (
        "batch",
        "body",
        "confirm",
        "exchange",
        "index",
        "message_id",
        "properties",
        "returned",
        "routing_key",
        "topic",
    )

    def __init__(
        self,
        batch: Batch,
        index: int,
        topic: str,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Any,
        message_id: str,
        confirm: bool,
    ) -> None:
        self.batch = batch
        self.index = index
        self.topic = topic
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.properties = properties
        self.message_id = message_id
        self.confirm = confirm
        self.returned: str | None = None


def admin_error(reason: BaseException, calls: Sequence[tuple[str, dict[str, Any]]]) -> MQError:
    """Turn a channel closed by the broker into the mqkit error that says what to do."""
    from pika.exceptions import ChannelClosedByBroker

    what = ", ".join(
        f"{name}({kw.get('queue') or kw.get('exchange') or kw.get('destination') or ''})"
        for name, kw in calls[:3]
    )
    if isinstance(reason, ChannelClosedByBroker):
        code, text = reason.reply_code, reason.reply_text
        if code == 404:
            return NotFound(text)
        if code == 406:
            return ConfigError(
                f"RabbitMQ refused {what}: {text}. The queue or exchange already exists with "
                "other settings (queue_type, lanes, or made by another tool): delete it, or "
                "use the settings it was created with",
                field="options.queue_type",
            )
        if code == 403:
            return ConfigError(
                f"RabbitMQ refused {what}: {text} (user permissions on this vhost, or a name "
                "starting with 'amq.' which RabbitMQ reserves)",
                field="url",
            )
        if code == 503 and "exchange type" in text:
            return Unsupported("amqp", f"{what}: {text}", "enable the plugin that provides it")
        return MQError(f"RabbitMQ refused {what}: {code} {text}")
    return ConnectionLost(f"the RabbitMQ connection went away during {what}: {reason}")


_COALESCE_MAX = 256 * 1024
_connection_class: Any = None


def connection_class() -> Any:
    """pika's SelectConnection, with writes coalesced between ``hold()`` and ``release()``.

    pika hands every frame to the socket on its own (three send() calls per
    published message, one per ack).  Inside a hold, the frames of a whole burst
    -- a window of publishes, a batch of acks -- leave in one send(), which
    cuts the I/O thread's CPU per message by more than half.  Frames keep
    their order; a hold never outlives the I/O callback that opened it.
    """
    global _connection_class
    if _connection_class is not None:
        return _connection_class
    from pika import SelectConnection

    class CoalescingConnection(SelectConnection):  # type: ignore[misc]
        _held: list[bytes] | None = None
        _held_bytes = 0
        _holds = 0

        def hold(self) -> None:
            self._holds += 1
            if self._held is None:
                self._held = []

        def release(self) -> None:
            self._holds -= 1
            if self._holds <= 0:
                self._holds = 0
                self._flush()
                self._held = None

        def _flush(self) -> None:
            held = self._held
            if not held:
                return
            self._held = []
            self._held_bytes = 0
            if getattr(self, "_transport", None) is None:
                log.debug("connection gone: %d held frames dropped with it", len(held))
                return
            super()._adapter_emit_data(held[0] if len(held) == 1 else b"".join(held))

        def _adapter_emit_data(self, data: bytes) -> None:
            held = self._held
            if held is None:
                super()._adapter_emit_data(data)
                return
            held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes >= _COALESCE_MAX:
                self._flush()

    _connection_class = CoalescingConnection
    return _connection_class


class Link:
    """See the module docstring.  Methods named ``_io_*`` run on the I/O thread only."""

    def __init__(
        self,
        parameters: list[Any],
        *,
        address: str,
        window: int,
        confirm_timeout: float,
        connect_timeout: float,
        mandatory: bool,
        reconnect_max_delay: float,
    ) -> None:
        self._params = parameters
        self.address = address
        self._window = window
        self._confirm_timeout = confirm_timeout
        self._connect_timeout = connect_timeout
        self._mandatory = mandatory
        self._reconnect_max = reconnect_max_delay
        self._ioloop: Any = None
        self._thread: threading.Thread | None = None
        self._ops: deque[Callable[[], None]] = deque()
        self._ops_lock = threading.Lock()
        self._wake_pending = False
        self._stopping = False
        self._dead = False  # the I/O loop has ended: nothing can be submitted
        self._first = threading.Event()
        self._first_error: BaseException | None = None
        self._first_tries = 0
        # I/O-thread state
        self._conn: Any = None
        self._connected = False
        self.down_since: float | None = time.monotonic()
        self._backoff = 0.1
        self._host_index = 0
        self._reconnect_timer: Any = None
        self._pub: Any = None
        self._pub_opening = False
        self._tag = 0
        self._unconfirmed: OrderedDict[int, Outgoing] = OrderedDict()
        self._backlog: deque[Outgoing] = deque()
        self._admin: Any = None
        self._admin_opening = False
        self._admin_queue: deque[_AdminRequest] = deque()
        self._admin_active: _AdminRequest | None = None
        self._subs: set[RabbitSubscription] = set()
        self._acks_due: set[RabbitSubscription] = set()

    # -- lifecycle (caller threads) ------------------------------------------------------

    def start(self) -> None:
        """Connect (each host once); raise ConnectionLost if none answers."""
        from pika.adapters.select_connection import IOLoop

        self._ioloop = IOLoop()
        self._thread = threading.Thread(target=self._run, name="mqkit-rabbitmq-io", daemon=True)
        self._thread.start()
        limit = self._connect_timeout * len(self._params) + 5.0
        if not self._first.wait(limit) or self._first_error is not None:
            err = self._first_error
            self.stop()
            why = f"no answer within {limit:.0f}s" if err is None else (str(err) or repr(err))
            raise ConnectionLost(
                f"cannot connect to RabbitMQ at {self.address}: {why}. Is it running "
                "(docker/brokers up rabbitmq), and are the user, password and vhost in the URL "
                "right?"
            ) from err

    def stop(self) -> None:
        """Fail what is pending, close the connection, end the I/O thread; idempotent."""
        with self._ops_lock:
            if self._stopping:
                return
            self._stopping = True
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._dead = True
            return
        try:
            self._ioloop.add_callback_threadsafe(self._io_shutdown)
        except Exception:  # the loop ended on its own meanwhile
            log.debug("I/O loop already stopped", exc_info=True)
        thread.join(self._connect_timeout + 10.0)

    def _run(self) -> None:
        self._ioloop.call_later(0, self._io_connect)
        try:
            while True:
                try:
                    self._ioloop.start()  # returns when stopped on purpose
                    break
                except Exception:  # a callback raised: keep serving everyone else
                    log.exception("a RabbitMQ I/O callback failed; the I/O loop goes on")
                    if self._stopping:
                        break
        finally:
            with self._ops_lock:
                self._dead = True  # callers of work never run see it in _await and give up
                self._ops.clear()
            self._fail_everything(Closed("the RabbitMQ connection of this client is closed"))
            try:
                self._ioloop.close()
            except Exception:
                log.debug("closing the I/O loop", exc_info=True)

    def _fail_everything(self, error: MQError) -> None:
        for item in list(self._unconfirmed.values()) + list(self._backlog):
            item.batch.resolve(item.index, error)
        self._unconfirmed.clear()
        self._backlog.clear()
        if self._admin_active is not None:
            self._admin_active.fail(error)
        for req in self._admin_queue:
            req.fail(error)
        self._admin_queue.clear()
        for sub in list(self._subs):
            sub.fail(error)
            sub.closed_event.set()

    # -- handing work to the I/O thread --------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread soon (FIFO); one wake-up per burst of calls."""
        with self._ops_lock:
            if self._dead or self._stopping:
                raise Closed("the RabbitMQ connection of this client is closed")
            self._ops.append(fn)
            if self._wake_pending:
                return
            self._wake_pending = True
        self._ioloop.add_callback_threadsafe(self._io_drain)

    def _later(self, delay: float, fn: Callable[[], None]) -> Any:
        """ioloop.call_later that cannot kill the loop: a failing timer is logged."""

        def guarded() -> None:
            try:
                fn()
            except Exception:
                log.exception("RabbitMQ I/O timer failed")

        return self._ioloop.call_later(delay, guarded)

    def _io_drain(self) -> None:
        with self._ops_lock:
            ops = self._ops
            self._ops = deque()
            self._wake_pending = False
        conn = self._conn
        if conn is not None:
            conn.hold()
        try:
            for fn in ops:
                try:
                    fn()
                except Exception:  # each op reports to its own waiter; keep the loop alive
                    log.exception("RabbitMQ I/O operation failed")
            if self._acks_due:
                subs = self._acks_due
                self._acks_due = set()
                for sub in subs:
                    self._io_send_acks(sub)
        finally:
            if conn is not None:
                conn.release()

    def _await(
        self,
        waiter: _Waiter,
        fail: Callable[[BaseException], None],
        what: str,
        error: type[MQError] = PublishError,
    ) -> None:
        """Wait for the I/O thread; give up when disconnected too long or unanswered."""
        start = time.monotonic()
        while not waiter.event.wait(0.1):
            now = time.monotonic()
            down = self.down_since
            if self._dead:
                fail(Closed("the RabbitMQ connection of this client is closed"))
                return
            if down is not None and now - max(down, start) >= self._connect_timeout:
                fail(
                    error(
                        f"not connected to RabbitMQ at {self.address} for "
                        f"{self._connect_timeout:.0f}s (reconnecting in the background): "
                        f"{what} did not happen; retry it"
                    )
                )
                return
            if now - start >= self._confirm_timeout:
                fail(
                    error(
                        f"RabbitMQ at {self.address} did not answer {what} within "
                        f"{self._confirm_timeout:.0f}s (options.confirm_timeout): it may or may "
                        "not have happened; retry it (same message id: dedupe makes that safe)"
                    )
                )
                return

    # -- connection (I/O thread) ---------------------------------------------------------

    def _io_connect(self) -> None:
        self._reconnect_timer = None
        if self._stopping:
            return
        params = self._params[self._host_index % len(self._params)]
        self._host_index += 1
        self._conn = connection_class()(
            params,
            on_open_callback=self._io_opened,
            on_open_error_callback=self._io_open_failed,
            on_close_callback=self._io_closed,
            custom_ioloop=self._ioloop,
        )

    def _io_opened(self, conn: Any) -> None:
        if self._stopping:
            conn.close()
            return
        if self._first.is_set():
            log.info("reconnected to RabbitMQ at %s", self.address)
        self._connected = True
        self.down_since = None
        self._backoff = 0.1
        self._first.set()
        self._io_open_publisher()
        self._io_admin_pump()
        for sub in list(self._subs):
            self._io_sub_open(sub)

    def _io_open_failed(self, conn: Any, error: BaseException) -> None:
        self._conn = None
        if not self._first.is_set():
            self._first_tries += 1
            if self._first_tries < len(self._params) and not self._stopping:
                self._later(0, self._io_connect)
                return
            self._first_error = error
            self._first.set()
            self._ioloop.stop()
            return
        if self._stopping:
            self._ioloop.stop()
            return
        log.warning("RabbitMQ at %s unreachable (%s); retrying", self.address, error)
        self._io_schedule_reconnect()

    def _io_closed(self, conn: Any, reason: BaseException) -> None:
        self._conn = None
        self._connected = False
        self._pub = None
        self._pub_opening = False
        self._io_fail_unconfirmed(reason)
        self._admin = None
        self._admin_opening = False
        if self._admin_active is not None:
            self._admin_active.fail(admin_error(reason, self._admin_active.calls))
            self._admin_active = None
        for sub in self._subs:
            sub.opening = False
            sub.channel = None
            sub.lost()
        if self.down_since is None:
            self.down_since = time.monotonic()
        if self._stopping:
            self._ioloop.stop()
            return
        log.warning(
            "lost the connection to RabbitMQ at %s (%s); reconnecting", self.address, reason
        )
        self._io_schedule_reconnect()

    def _io_schedule_reconnect(self) -> None:
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self._reconnect_max)
        self._reconnect_timer = self._later(delay, self._io_connect)

    def _io_shutdown(self) -> None:
        from pika.exceptions import ConnectionWrongStateError

        self._fail_everything(Closed("the RabbitMQ connection of this client is closed"))
        if self._reconnect_timer is not None:
            self._ioloop.remove_timeout(self._reconnect_timer)
        conn = self._conn
        if conn is None or conn.is_closed:
            self._ioloop.stop()
            return
        try:
            conn.close()
        except ConnectionWrongStateError:
            self._ioloop.stop()
            return
        self._ioloop.call_later(5.0, self._ioloop.stop)  # in case close-ok never comes

    # -- publishing ----------------------------------------------------------------------

    def publish(self, batch: Batch, items: list[Outgoing]) -> list[PublishOutcome]:
        """Send ``items`` (one batch) and wait for every outcome (caller thread)."""
        try:
            self.submit(partial(self._io_enqueue, items))
        except Closed as exc:
            batch.fail_rest(exc)
        self._await(batch, batch.fail_rest, f"the publish of {len(items)} message(s)")
        return [o if o is not None else PublishError("no outcome") for o in batch.outcomes]

    def _io_enqueue(self, items: list[Outgoing]) -> None:
        self._backlog.extend(items)
        self._io_pump()

    def _io_open_publisher(self) -> None:
        if not self._connected or self._pub_opening or self._pub is not None:
            return
        self._pub_opening = True
        self._conn.channel(on_open_callback=self._io_publisher_opened)

    def _io_publisher_opened(self, channel: Any) -> None:
        channel.add_on_close_callback(self._io_publisher_closed)
        channel.add_on_return_callback(self._io_returned)
        channel.confirm_delivery(
            ack_nack_callback=self._io_confirmed,
            callback=lambda _frame: self._io_publisher_ready(channel),
        )

    def _io_publisher_ready(self, channel: Any) -> None:
        self._pub_opening = False
        self._pub = channel
        self._tag = 0
        self._io_pump()

    def _io_publisher_closed(self, channel: Any, reason: BaseException) -> None:
        if self._pub is not None and channel is not self._pub:
            return
        self._pub = None
        self._pub_opening = False
        self._io_fail_unconfirmed(reason)
        if self._connected and not self._stopping:
            self._later(0.05, self._io_open_publisher)

    def _io_fail_unconfirmed(self, reason: BaseException) -> None:
        """The channel is gone: exactly the messages it had not confirmed fail."""
        if not self._unconfirmed:
            return
        err = PublishError(
            f"the RabbitMQ channel closed before the broker confirmed the message "
            f"({reason}); it may or may not be stored: re-send it (same id: dedupe makes "
            "that safe)"
        )
        for item in self._unconfirmed.values():
            item.batch.resolve(item.index, err)
        self._unconfirmed.clear()

    def _io_pump(self) -> None:
        channel = self._pub
        if channel is None or not self._backlog:
            return
        conn = self._conn
        conn.hold()
        try:
            self._io_pump_held(channel)
        finally:
            conn.release()

    def _io_pump_held(self, channel: Any) -> None:
        from pika.exceptions import (
            AMQPConnectionError,
            ChannelWrongStateError,
            ProtocolSyntaxError,
            ShortStringTooLong,
        )

        unconfirmed = self._unconfirmed
        backlog = self._backlog
        window = self._window
        mandatory = self._mandatory
        while backlog and len(unconfirmed) < window:
            item = backlog.popleft()
            if item.batch.outcomes[item.index] is not None:
                continue  # the caller gave up on it: do not send it late
            try:
                channel.basic_publish(
                    item.exchange,
                    item.routing_key,
                    item.body,
                    item.properties,
                    mandatory and item.confirm,
                )
            except (ChannelWrongStateError, AMQPConnectionError):
                backlog.appendleft(item)  # sent again on the next channel
                return
            except (TypeError, ValueError, ProtocolSyntaxError, ShortStringTooLong) as exc:
                item.batch.resolve(item.index, PublishError(f"cannot encode the message: {exc}"))
                continue
            self._tag += 1
            if item.confirm:
                unconfirmed[self._tag] = item
            else:
                item.batch.resolve(
                    item.index, Receipt(item.message_id, item.topic, False, timestamp=time.time())
                )

    def _io_confirmed(self, frame: Any) -> None:
        method = frame.method
        ok = method.NAME == "Basic.Ack"
        tag = method.delivery_tag
        now = time.time()
        if method.multiple:
            unconfirmed = self._unconfirmed
            while unconfirmed and next(iter(unconfirmed)) <= tag:
                self._io_settle(unconfirmed.popitem(last=False)[1], ok, now)
        else:
            item = self._unconfirmed.pop(tag, None)
            if item is not None:
                self._io_settle(item, ok, now)
        self._io_pump()

    def _io_settle(self, item: Outgoing, ok: bool, now: float) -> None:
        outcome: PublishOutcome
        if item.returned is not None:
            outcome = PublishError(
                f"RabbitMQ could not route message {item.message_id} ({item.returned}): no "
                f"group queue is bound to topic {item.topic!r}, so nobody would receive it. "
                "Declare its groups first (mq.declare(topic, groups=[...])), or set "
                "options.mandatory=false to drop such messages"
            )
        elif ok:
            outcome = Receipt(item.message_id, item.topic, True, timestamp=now)
        else:
            outcome = PublishError(
                f"RabbitMQ refused (basic.nack) message {item.message_id}: it is not stored; "
                "re-send it"
            )
        item.batch.resolve(item.index, outcome)

    def _io_returned(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        """basic.return comes before the confirm of the same message: mark it."""
        mid = properties.message_id
        for item in self._unconfirmed.values():
            if (
                item.returned is None
                and (item.message_id or None) == mid
                and item.exchange == method.exchange
            ):
                item.returned = f"{method.reply_code} {method.reply_text}"
                return
        log.warning("RabbitMQ returned an unroutable message %s to %s", mid, method.exchange)

    # -- admin ---------------------------------------------------------------------------

    def admin(self, calls: Sequence[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Run channel RPCs in order; the reply methods, or the mapped error (caller thread)."""
        req = _AdminRequest(calls)
        self.submit(partial(self._io_admin_enqueue, req))
        self._await(req, req.fail, calls[0][0] if calls else "nothing", ConnectionLost)
        if req.error is not None:
            err = req.error
            if isinstance(err, MQError):
                raise err
            raise admin_error(err, calls)
        assert req.result is not None
        return req.result

    def _io_admin_enqueue(self, req: _AdminRequest) -> None:
        self._admin_queue.append(req)
        self._io_admin_pump()

    def _io_admin_pump(self) -> None:
        while self._admin_active is None and self._admin_queue and self._connected:
            channel = self._admin
            if channel is None:
                if not self._admin_opening:
                    self._admin_opening = True
                    self._conn.channel(on_open_callback=self._io_admin_opened)
                return
            req = self._admin_queue.popleft()
            if req.done:
                continue
            self._admin_active = req
            results: list[Any] = []
            last = len(req.calls) - 1
            try:
                for i, (name, kwargs) in enumerate(req.calls):
                    step = partial(self._io_admin_step, req, results, i == last)
                    getattr(channel, name)(callback=step, **kwargs)
            except Exception as exc:  # pika refused the arguments: the request fails
                req.fail(exc)
                self._admin_active = None
            if not req.calls:
                req.succeed(results)
                self._admin_active = None

    def _io_admin_step(
        self, req: _AdminRequest, results: list[Any], last: bool, frame: Any
    ) -> None:
        results.append(frame.method)
        if last:
            req.succeed(results)
            if self._admin_active is req:
                self._admin_active = None
                self._io_admin_pump()

    def _io_admin_opened(self, channel: Any) -> None:
        self._admin_opening = False
        self._admin = channel
        _QUIET.channels.add(channel)
        channel.add_on_close_callback(self._io_admin_closed)
        self._io_admin_pump()

    def _io_admin_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is self._admin:
            self._admin = None
        active = self._admin_active
        self._admin_active = None
        if active is not None:
            active.fail(admin_error(reason, active.calls))
        if self._connected and not self._stopping:
            self._io_admin_pump()

    # -- subscriptions -------------------------------------------------------------------

    def attach(self, sub: RabbitSubscription) -> None:
        self.submit(partial(self._io_attach, sub))

    def _io_attach(self, sub: RabbitSubscription) -> None:
        self._subs.add(sub)
        self._io_sub_open(sub)

    def detach(self, sub: RabbitSubscription) -> None:
        """Close the subscription's channel and wait until RabbitMQ has it back."""
        try:
            self.submit(partial(self._io_sub_close, sub))
        except Closed:
            return
        sub.closed_event.wait(self._connect_timeout)

    def _io_sub_open(self, sub: RabbitSubscription) -> None:
        if not self._connected or sub.closing or sub.opening or sub.error is not None:
            return
        if sub.channel is not None and sub.channel.is_open:
            return
        sub.opening = True
        gen = sub.new_generation()
        self._conn.channel(on_open_callback=partial(self._io_sub_opened, sub, gen))

    def _io_sub_opened(self, sub: RabbitSubscription, gen: int, channel: Any) -> None:
        sub.opening = False
        if sub.gen != gen or sub.closing:
            channel.close()
            if sub.closing:
                sub.closed_event.set()
            return
        sub.channel = channel
        channel.add_on_close_callback(partial(self._io_sub_closed, sub, gen))
        channel.add_on_cancel_callback(partial(self._io_sub_cancelled, sub, gen))
        try:
            channel.basic_qos(
                prefetch_count=sub.prefetch,
                callback=partial(self._io_sub_consume, sub, gen, channel),
            )
        except Exception as exc:  # never let it escape into pika: that drops the connection
            self._io_sub_broken(sub, channel, exc)

    def _io_sub_consume(self, sub: RabbitSubscription, gen: int, channel: Any, _frame: Any) -> None:
        if sub.gen != gen or sub.closing:
            return
        left = [len(sub.queues)]

        def consuming(_frame: Any) -> None:
            left[0] -= 1
            if left[0] == 0 and sub.gen == gen:
                sub.set_ready()

        try:
            for queue, lane in sub.queues:
                channel.basic_consume(
                    queue,
                    partial(self._io_delivered, sub, gen, lane),
                    callback=consuming,
                )
        except Exception as exc:
            self._io_sub_broken(sub, channel, exc)

    def _io_sub_broken(self, sub: RabbitSubscription, channel: Any, exc: Exception) -> None:
        """pika refused to start the consumer: this subscription fails, the rest go on."""
        log.error("cannot start the consumer on %s: %r", sub.topic, exc)
        sub.fail(MQError(f"cannot start consuming {sub.topic!r} on RabbitMQ: {exc!r}"))
        self._subs.discard(sub)
        if channel.is_open:
            channel.close()

    @staticmethod
    def _io_delivered(
        sub: RabbitSubscription,
        gen: int,
        lane: int | None,
        _channel: Any,
        method: Any,
        properties: Any,
        body: bytes,
    ) -> None:
        sub.deliver(gen, lane, method, properties, body)

    def _io_sub_closed(
        self, sub: RabbitSubscription, gen: int, _channel: Any, reason: BaseException
    ) -> None:
        from pika.exceptions import ChannelClosedByBroker

        if sub.gen != gen:
            return
        sub.channel = None
        sub.lost()
        self._io_cancel_timers(sub)
        if sub.closing:
            sub.closed_event.set()
            return
        if isinstance(reason, ChannelClosedByBroker) and reason.reply_code == 404:
            sub.fail(
                MQError(
                    f"the queue of this consumer on {sub.topic!r} no longer exists "
                    f"({reason.reply_text}); was the topic deleted? Create a new consumer"
                )
            )
            self._subs.discard(sub)
            return
        if self._connected and not self._stopping:
            log.warning("consumer channel on %s closed (%s); reopening", sub.topic, reason)
            self._later(0.5, partial(self._io_sub_open, sub))

    def _io_sub_cancelled(self, sub: RabbitSubscription, gen: int, _frame: Any) -> None:
        """The broker cancelled our consumer (queue deleted, failover): start over."""
        if sub.gen == gen and sub.channel is not None and sub.channel.is_open:
            sub.channel.close()

    def _io_sub_close(self, sub: RabbitSubscription) -> None:
        self._io_take_acks(sub)
        self._io_send_acks(sub)  # acks queued before the close go out before it
        self._acks_due.discard(sub)
        sub.closing = True
        self._subs.discard(sub)
        self._io_cancel_timers(sub)
        channel = sub.channel
        if channel is not None and channel.is_open:
            channel.close()
        elif not sub.opening:
            sub.closed_event.set()

    def _io_cancel_timers(self, sub: RabbitSubscription) -> None:
        for timer in sub.timers.values():
            self._ioloop.remove_timeout(timer)
        sub.timers.clear()

    def requeue(self, sub: RabbitSubscription, gen: int, tag: int, delay: float) -> None:
        """basic.nack(requeue) a delivery, now or after ``delay`` seconds (caller thread)."""
        self.submit(partial(self._io_requeue, sub, gen, tag, delay))

    def acks_pending(self, sub: RabbitSubscription) -> None:
        """``sub`` has queued acks (caller thread): one I/O operation takes them all."""
        self.submit(partial(self._io_take_acks, sub))

    def _io_take_acks(self, sub: RabbitSubscription) -> None:
        stale = 0
        current = sub.gen if sub.channel is not None else -1
        outstanding = sub.outstanding
        for gen, tag in sub.take_acks():
            if gen != current:
                stale += 1
            elif outstanding.get(tag) == OUTSTANDING:
                outstanding[tag] = ACKING
                sub.acking.append(tag)
        if sub.acking:
            self._acks_due.add(sub)  # sent when this burst of operations ends
        if stale:
            log.warning(
                "%d deliveries on %s were not acked: their channel closed since, and RabbitMQ "
                "has given them back to the group (they will be delivered again)",
                stale,
                sub.topic,
            )

    def _io_send_acks(self, sub: RabbitSubscription) -> None:
        """One basic.ack(multiple) for the settled run of oldest tags, singles for the rest."""
        from pika.exceptions import AMQPConnectionError, ChannelWrongStateError

        channel = sub.channel
        acking = sub.acking
        if not acking:
            return
        sub.acking = []
        if channel is None or not channel.is_open:
            log.warning(
                "%d deliveries on %s were not acked: their channel closed, and RabbitMQ has "
                "given them back to the group (they will be delivered again)",
                len(acking),
                sub.topic,
            )
            return
        outstanding = sub.outstanding
        upto = None
        while outstanding:
            tag = next(iter(outstanding))
            state = outstanding[tag]
            if state == OUTSTANDING:
                break
            del outstanding[tag]
            if state == ACKING:
                upto = tag
        try:
            if upto is not None:
                channel.basic_ack(upto, multiple=True)
            for tag in acking:
                if outstanding.get(tag) == ACKING:
                    channel.basic_ack(tag)
                    outstanding[tag] = SETTLED
        except (ChannelWrongStateError, AMQPConnectionError) as exc:
            log.warning(
                "deliveries on %s were not acked (%s); RabbitMQ gives them back to the group",
                sub.topic,
                exc,
            )

    def _io_requeue(self, sub: RabbitSubscription, gen: int, tag: int, delay: float) -> None:
        from pika.exceptions import AMQPConnectionError, ChannelWrongStateError

        channel = sub.channel
        if sub.gen != gen or channel is None or not channel.is_open:
            log.warning(
                "delivery %d on %s was not requeued: its channel closed since, and RabbitMQ "
                "has given it back to the group already",
                tag,
                sub.topic,
            )
            return
        if delay > 0:  # held here (unacked) until due: RabbitMQ 3.10 has no delayed requeue
            token = object()

            def due() -> None:
                sub.timers.pop(token, None)
                self._io_requeue(sub, gen, tag, 0.0)

            sub.timers[token] = self._later(delay, due)
            return
        try:
            channel.basic_nack(tag, requeue=True)
        except (ChannelWrongStateError, AMQPConnectionError) as exc:
            log.warning(
                "delivery %d on %s was not requeued (%s); RabbitMQ gives it back to the group",
                tag,
                sub.topic,
                exc,
            )
            return
        if tag in sub.outstanding:
            sub.outstanding[tag] = SETTLED
