"""The asyncio facade: ``mq.aio`` (or ``mqkit.aio.connect(...)``) over the SAME core.

There are no async twins of the producer and consumer: every call runs the
synchronous core off the event loop, so policies behave exactly as they do in
threads::

    async with mqkit.aio.connect("memory://") as mq:
        await mq.declare("orders", groups=["billing"])
        producer = mq.producer()
        await producer.send("orders", {"id": 1}, key="user-42")
        async with mq.consumer("orders", group="billing") as consumer:
            async for delivery in consumer.iter(timeout=5.0):
                await delivery.ack()
            # or: await consumer.run(handler, idle_timeout=5.0)  # handler sync or async

Threads: producers send through :func:`asyncio.to_thread`.  Each consumer owns one
dedicated worker thread in which its subscription is created, fetched from and
settled, so a driver that is not thread-safe sees one thread only.  ``run`` runs
the synchronous loop in that thread; an ``async def`` handler is executed on the
caller's event loop and the loop thread waits for it, so handlers may await
freely and retries, dead letters and dedupe work unchanged.

Blocking moments: :func:`connect` and :meth:`AsyncClient.consumer` connect and
join the group before they return (as the sync API does, so a group created by
its first consumer receives every message sent after that line); they are short
calls made once, at start-up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import Any, TypeVar, cast

from mqkit.adapter import TopicStats
from mqkit.capabilities import Capabilities
from mqkit.client import Client
from mqkit.client import connect as _connect
from mqkit.consumer import Consumer, Handler, RunStats
from mqkit.delivery import Delivery, Settled
from mqkit.errors import Closed, ConfigError
from mqkit.message import Message, Receipt
from mqkit.policy import Policy
from mqkit.producer import OutgoingMessage, Producer
from mqkit.settings import Settings

__all__ = ["AsyncClient", "AsyncConsumer", "AsyncDelivery", "AsyncProducer", "connect"]

T = TypeVar("T")

SLICE = 0.1
"""Seconds one pull of ``Consumer.iter`` may wait before settles queued for the
consumer's thread get their turn (they run between pulls)."""

# Set while an async handler of a consumer runs, so that ``close()`` called from
# inside it does not wait for the very handler that called it.
_handling: contextvars.ContextVar[AsyncConsumer | None] = contextvars.ContextVar(
    "mqkit_aio_handling", default=None
)


class _LoopGone(BaseException):
    """The event loop of an async handler is gone: stop ``run`` and give messages back.

    A BaseException on purpose: the consumer must not count this as a handler
    failure (which would retry and finally dead-letter a message that is fine).
    """


def connect(
    source: str | Path | dict[str, Any] | Settings | None = None, **overrides: Any
) -> AsyncClient:
    """``mqkit.connect(...)`` for asyncio code: the same arguments, an :class:`AsyncClient`."""
    return AsyncClient(_connect(source, **overrides))


class AsyncClient:
    """An asyncio view of one :class:`~mqkit.Client` (``mq.aio``)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._consumers: list[AsyncConsumer] = []

    @property
    def sync(self) -> Client:
        """The synchronous client underneath (shared, not a copy)."""
        return self._client

    @property
    def capabilities(self) -> Capabilities:
        return self._client.capabilities

    async def declare(
        self,
        topic: str,
        *,
        partitions: int | None = None,
        groups: Sequence[str] = (),
        ordered: bool = False,
    ) -> None:
        """Create ``topic``, its groups and ``<topic>.dlq`` (idempotent)."""
        await asyncio.to_thread(
            self._client.declare, topic, partitions=partitions, groups=groups, ordered=ordered
        )

    def producer(self, policy: Policy | None = None) -> AsyncProducer:
        return AsyncProducer(self._client.producer(policy))

    def consumer(
        self, topic: str, group: str = "default", policy: Policy | None = None
    ) -> AsyncConsumer:
        """Join ``group`` on ``topic`` (in the consumer's own thread; waits until joined)."""
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"mqkit-aio-{topic}"
        )
        try:
            sync = executor.submit(self._client.consumer, topic, group, policy).result()
        except BaseException:
            executor.shutdown(wait=False)
            raise
        consumer = AsyncConsumer(sync, executor)
        self._consumers = [c for c in self._consumers if not c._closed]
        self._consumers.append(consumer)
        return consumer

    async def stats(self, topic: str, group: str = "default") -> list[TopicStats]:
        return await asyncio.to_thread(self._client.stats, topic, group)

    async def close(self) -> None:
        """Close this client's async consumers, then the client itself."""
        for consumer in reversed(self._consumers):
            await consumer.close()
        self._consumers.clear()
        await asyncio.to_thread(self._client.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<mqkit.aio.AsyncClient {self._client.scheme}>"


class AsyncProducer:
    """``await producer.send(...)``: the sync producer's send, off the event loop."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer

    @property
    def sync(self) -> Producer:
        return self._producer

    @property
    def policy(self) -> Policy:
        return self._producer.policy

    async def send(
        self,
        topic: str,
        value: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        id: str | None = None,  # the public name of the message id
        ttl: float | None = None,
        delay: float | None = None,
    ) -> Receipt:
        """Send one message; raises PublishError if the broker did not confirm it."""
        return await asyncio.to_thread(
            functools.partial(
                self._producer.send,
                topic,
                value,
                key=key,
                headers=headers,
                id=id,
                ttl=ttl,
                delay=delay,
            )
        )

    async def send_many(
        self,
        topic: str,
        messages: Iterable[OutgoingMessage | Any],
        *,
        delay: float | None = None,
    ) -> list[Receipt]:
        """Send a batch; per-message outcome as in :meth:`Producer.send_many`."""
        batch = list(messages)
        return await asyncio.to_thread(
            functools.partial(self._producer.send_many, topic, batch, delay=delay)
        )

    async def close(self) -> None:
        self._producer.close()

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncDelivery:
    """A :class:`~mqkit.Delivery` whose settling is awaited (in the consumer's thread)."""

    __slots__ = ("_consumer", "delivery")

    def __init__(self, consumer: AsyncConsumer, delivery: Delivery) -> None:
        self._consumer = consumer
        self.delivery = delivery

    @property
    def message(self) -> Message:
        return self.delivery.message

    @property
    def attempt(self) -> int:
        return self.delivery.attempt

    @property
    def state(self) -> Settled:
        return self.delivery.state

    async def ack(self) -> None:
        """Done: the group never gets this message again."""
        await self._consumer._call(self.delivery.ack)

    async def nack(self, requeue: bool = True, *, delay: float = 0.0) -> None:
        """Give it back for redelivery (``requeue``), or dead-letter it (``requeue=False``)."""
        await self._consumer._call(functools.partial(self.delivery.nack, requeue, delay=delay))

    async def reject(self, reason: str = "rejected") -> None:
        """Dead-letter it now with ``reason``; it is not retried."""
        await self._consumer._call(self.delivery.reject, reason)

    def __repr__(self) -> str:
        return f"<Async{self.delivery!r}>"


class AsyncConsumer:
    """One member of a group, for asyncio code: ``async for``, ``await run(handler)``."""

    def __init__(self, consumer: Consumer, executor: concurrent.futures.ThreadPoolExecutor) -> None:
        self._sync = consumer
        self._executor = executor
        self._closed = False
        self._closer: asyncio.Future[None] | None = None

    @property
    def sync(self) -> Consumer:
        return self._sync

    @property
    def topic(self) -> str:
        return self._sync.topic

    @property
    def group(self) -> str:
        return self._sync.group

    @property
    def policy(self) -> Policy:
        return self._sync.policy

    @property
    def stats(self) -> RunStats:
        return self._sync.stats

    # -- the dedicated thread ------------------------------------------------------

    def _submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        try:
            return self._executor.submit(fn, *args)
        except RuntimeError:  # the executor was shut down by close()
            raise Closed("this consumer is closed; create a new one with mq.consumer()") from None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._submit(fn, *args))

    def _stopping(self) -> bool:
        return self._closed or self._sync._closing.is_set()

    # -- iterating -----------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[AsyncDelivery]:
        return self.iter()

    async def iter(self, timeout: float | None = None) -> AsyncIterator[AsyncDelivery]:
        """Yield deliveries until none arrives for ``timeout`` seconds (None: until close).

        The caller settles each one (``await delivery.ack()``); with ``ack="auto"``
        they arrive acked.
        """
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
            raise ConfigError(f"must be seconds >= 0 or None, got {timeout!r}", field="timeout")
        idle = 0.0
        while not self._stopping():
            # Pull in short slices of Consumer.iter, so settles queued for this
            # consumer's thread (tasks acking concurrently) run between pulls.
            span = SLICE if timeout is None else min(SLICE, timeout - idle)
            if span <= 0:
                return
            pulls = cast(Generator[Delivery, None, None], self._sync.iter(span))
            finished = False
            try:
                while (d := await self._next(pulls)) is not None:
                    idle = 0.0
                    yield AsyncDelivery(self, d)
                finished = True
            except Closed:
                finished = True
                if self._stopping():
                    return
                raise
            finally:
                if not finished and not self._stopping():
                    # The caller broke off: closing the pull (in its thread) hands back
                    # what was fetched but not yet yielded.
                    with contextlib.suppress(Closed):
                        await self._call(pulls.close)
            idle += span

    async def _next(self, pulls: Generator[Delivery, None, None]) -> Delivery | None:
        fut = self._submit(next, pulls, None)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(self._give_back)
            raise

    def _give_back(self, fut: concurrent.futures.Future[Delivery | None]) -> None:
        """A pull finished after its caller was cancelled: nobody will settle it."""
        if fut.cancelled() or fut.exception() is not None:
            return
        d = fut.result()
        if d is None or self._stopping():
            return  # closing gives held messages back
        with contextlib.suppress(RuntimeError):  # shut down meanwhile: closing gives it back
            self._executor.submit(d.nack)

    # -- run -------------------------------------------------------------------------

    async def run(
        self,
        handler: Handler,
        *,
        idle_timeout: float | None = None,
        max_messages: int | None = None,
    ) -> RunStats:
        """``Consumer.run`` in this consumer's thread; an async handler runs on this loop.

        Cancelling the awaiting task closes the consumer: the message in hand is
        finished, held ones are given back to the group.
        """
        invoke = _on_loop(handler, asyncio.get_running_loop(), self)
        job = functools.partial(
            self._sync.run, invoke, idle_timeout=idle_timeout, max_messages=max_messages
        )
        fut = self._submit(job)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            self._close_in_background()
            raise
        except _LoopGone as exc:  # the handler's task was cancelled under it
            raise asyncio.CancelledError(str(exc)) from exc

    # -- closing ---------------------------------------------------------------------

    def _close_sync(self) -> None:
        self._sync.close()  # waits for run() to finish its current message
        self._executor.shutdown(wait=True)

    def _close_in_background(self) -> None:
        if not self._closed:
            self._closed = True
            # Stop the loops now (what Consumer.close does first), before the closing
            # thread starts, so run() takes no further message after the one in hand.
            self._sync._closing.set()
            # Not in the consumer's thread: run() occupies it until it sees the close.
            self._closer = asyncio.get_running_loop().run_in_executor(None, self._close_sync)

    async def close(self) -> None:
        """Finish the handler in progress, give back held messages, leave the group.

        Called from this consumer's own async handler, it returns at once and
        ``run`` ends after that handler returns.  Idempotent; every caller waits.
        """
        self._close_in_background()
        if _handling.get() is self or self._closer is None:
            return
        await asyncio.shield(self._closer)

    async def __aenter__(self) -> AsyncConsumer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<mqkit.aio.AsyncConsumer {self.topic} group={self.group}>"


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _on_loop(
    handler: Handler, loop: asyncio.AbstractEventLoop, consumer: AsyncConsumer
) -> Callable[..., Any]:
    """Wrap ``handler`` so that what it returns, if awaitable, is awaited on ``loop``.

    Runs in the consumer's thread; ``functools.wraps`` keeps the signature and
    annotations, so a handler annotated with a pydantic model still gets one.
    """

    @functools.wraps(handler)
    def call(*args: Any, **kwargs: Any) -> Any:
        token = _handling.set(consumer)
        try:
            result = handler(*args, **kwargs)
            if not inspect.isawaitable(result):
                return result
            try:
                fut = asyncio.run_coroutine_threadsafe(_await(result), loop)
            except RuntimeError as exc:  # the loop is closed
                if inspect.iscoroutine(result):
                    result.close()
                raise _LoopGone("the event loop running the async handler is closed") from exc
            try:
                return fut.result()
            except concurrent.futures.CancelledError as exc:
                raise _LoopGone(
                    "the async handler was cancelled (event loop shutting down)"
                ) from exc
        finally:
            _handling.reset(token)

    return call
