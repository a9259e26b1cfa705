"""The asyncio facade (mqkit.aio) over memory://: same core, awaited."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator

import pytest
from pydantic import BaseModel

import mqkit
import mqkit.aio
from mqkit.aio import AsyncClient, AsyncConsumer, AsyncDelivery
from mqkit.backends.memory import reset
from mqkit.message import DLQ_ATTEMPTS, DLQ_REASON

pytestmark = [
    pytest.mark.memory,
    pytest.mark.filterwarnings("ignore:memory.{3} keeps messages"),
    pytest.mark.timeout(60),
]

FAST = mqkit.Policy(max_attempts=3, backoff=(0.01, 2.0, 0.05))


class Order(BaseModel):
    id: int
    item: str


@pytest.fixture
def url() -> Iterator[str]:
    name = "aio" + uuid.uuid4().hex
    yield f"memory://{name}"
    reset(name)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await coro_fn()

    asyncio.run(main())


async def collect(it: AsyncIterable[AsyncDelivery], *, ack: bool = True) -> list[AsyncDelivery]:
    got = []
    async for d in it:
        got.append(d)
        if ack:
            await d.ack()
    return got


async def dead_letters(mq: AsyncClient, topic: str) -> list[mqkit.Message]:
    async with mq.consumer(topic + ".dlq") as dlq:
        return [d.message for d in await collect(dlq.iter(timeout=0.3))]


def test_connect_returns_the_client_facade_over_the_same_core(url: str) -> None:
    async def main() -> None:
        async with mqkit.aio.connect(url) as mq:
            assert isinstance(mq, AsyncClient)
            assert isinstance(mq.sync, mqkit.Client)
            assert mq.sync.aio is mq.sync.aio  # cached view
            assert mq.capabilities.backend == "memory"
        with pytest.raises(mqkit.Closed):
            mq.producer()

    run(main)


def test_send_and_async_for_round_trip(url: str) -> None:
    async def main() -> None:
        async with mqkit.aio.connect(url) as mq:
            await mq.declare("orders", groups=["billing"])
            producer = mq.producer()
            r1 = await producer.send(
                "orders", {"n": 1}, key="user-1", headers={"h": "v"}, id="o-1", ttl=60.0
            )
            r2, r3 = await producer.send_many("orders", ["two", b"three"])
            assert r1.confirmed
            assert r1.id == "o-1"
            assert r2.confirmed
            assert r3.confirmed
            assert r2.id != r3.id
            consumer = mq.consumer("orders", group="billing")
            got = await collect(consumer.iter(timeout=0.3))
            assert [d.message.payload for d in got] == [{"n": 1}, "two", b"three"]
            first = got[0]
            assert (first.message.id, first.message.key, first.message.headers) == (
                "o-1",
                "user-1",
                {"h": "v"},
            )
            assert first.attempt == 1
            assert first.state is mqkit.delivery.Settled.ACKED
            stats = await mq.stats("orders", "billing")
            assert sum(s.backlog or 0 for s in stats) == 0

    run(main)


def test_unacked_delivery_is_redelivered_after_close(url: str) -> None:
    async def main() -> None:
        async with mqkit.aio.connect(url) as mq:
            await mq.declare("jobs", groups=["w"])
            await mq.producer().send("jobs", "x", id="j-1")
            async with mq.consumer("jobs", group="w") as c1:
                held = await collect(c1.iter(timeout=0.3), ack=False)
                assert [d.message.id for d in held] == ["j-1"]
            async with mq.consumer("jobs", group="w") as c2:
                again = await collect(c2.iter(timeout=0.3))
            assert [(d.message.id, d.attempt) for d in again] == [("j-1", 2)]

    run(main)


def test_nack_redelivers_and_reject_dead_letters(url: str) -> None:
    async def main() -> None:
        async with mqkit.aio.connect(url) as mq:
            await mq.declare("t", groups=["g"])
            producer = mq.producer()
            await producer.send("t", "retry-me", id="a")
            await producer.send("t", "poison", id="b")
            seen: list[tuple[str, int]] = []
            async with mq.consumer("t", group="g") as c:
                async for d in c.iter(timeout=0.3):
                    seen.append((d.message.id, d.attempt))
                    if d.message.id == "b":
                        await d.reject("cannot parse")
                    elif d.attempt == 1:
                        await d.nack()
                    else:
                        await d.ack()
            assert sorted(seen) == [("a", 1), ("a", 2), ("b", 1)]
            (dead,) = await dead_letters(mq, "t")
            assert dead.id == "b"
            assert dead.headers[DLQ_REASON] == "rejected"

    run(main)


def test_async_handler_runs_on_the_callers_loop_with_retries_and_dead_letter(url: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        calls: list[tuple[str, bool]] = []
        failures: dict[str, int] = {}

        async def handler(m: mqkit.Message) -> None:
            calls.append((m.id, asyncio.get_running_loop() is loop))
            await asyncio.sleep(0)
            assert threading.get_ident() == loop_thread
            if m.payload == "poison":
                raise ValueError("never works")
            if m.payload == "flaky" and failures.setdefault(m.id, 0) == 0:
                failures[m.id] = 1
                raise TimeoutError("transient")

        async with mqkit.aio.connect(url) as mq:
            await mq.declare("orders", groups=["g"])
            producer = mq.producer()
            for i, v in enumerate(["ok", "flaky", "poison", "ok"]):
                await producer.send("orders", v, id=f"m{i}")
            async with mq.consumer("orders", group="g", policy=FAST) as c:
                stats = await c.run(handler, idle_timeout=0.3)
            assert all(on_loop for _, on_loop in calls)
            assert sorted(i for i, _ in calls) == ["m0", "m1", "m1", "m2", "m2", "m2", "m3"]
            assert (stats.handled, stats.retried, stats.dead_lettered) == (4, 3, 1)
            (dead,) = await dead_letters(mq, "orders")
            assert dead.id == "m2"
            assert dead.headers[DLQ_REASON] == "failed"
            assert dead.headers[DLQ_ATTEMPTS] == "3"

    run(main)


def test_sync_handler_runs_off_the_event_loop_thread(url: str) -> None:
    async def main() -> None:
        loop_thread = threading.get_ident()
        threads: list[int] = []

        def handler(m: mqkit.Message) -> None:
            threads.append(threading.get_ident())

        async with mqkit.aio.connect(url) as mq:
            await mq.declare("t", groups=["g"])
            await mq.producer().send_many("t", ["a", "b"])
            async with mq.consumer("t", group="g") as c:
                stats = await c.run(handler, max_messages=2)
            assert stats.handled == 2
            assert len(threads) == 2
            assert loop_thread not in threads

    run(main)


def test_async_handler_annotated_with_a_model_gets_a_validated_instance(url: str) -> None:
    async def main() -> None:
        got: list[Order] = []

        async def bill(order: Order) -> None:
            got.append(order)

        async with mqkit.aio.connect(url) as mq:
            await mq.declare("orders", groups=["g"])
            producer = mq.producer()
            await producer.send("orders", Order(id=1, item="book"), id="good")
            await producer.send("orders", {"id": "not a number"}, id="bad")
            async with mq.consumer("orders", group="g") as c:
                await c.run(bill, idle_timeout=0.3)
            assert got == [Order(id=1, item="book")]
            (dead,) = await dead_letters(mq, "orders")
            assert (dead.id, dead.headers[DLQ_REASON]) == ("bad", "invalid")

    run(main)


def test_settling_from_other_tasks_while_iterating_does_not_stall(url: str) -> None:
    """Prefetch 2, 8 messages, acks from tasks: iteration must go on as acks land."""

    async def main() -> None:
        async with mqkit.aio.connect(url) as mq:
            await mq.declare("t", groups=["g"])
            await mq.producer().send_many("t", [str(i) for i in range(8)])
            policy = mqkit.Policy(prefetch=2)
            tasks: list[asyncio.Task[None]] = []

            async def work(d: AsyncDelivery) -> None:
                await asyncio.sleep(0.01)
                await d.ack()

            async with mq.consumer("t", group="g", policy=policy) as c:
                seen = []
                async for d in c.iter(timeout=2.0):
                    seen.append(d.message.payload)
                    tasks.append(asyncio.create_task(work(d)))
                    if len(seen) == 8:
                        break
                await asyncio.gather(*tasks)
            assert sorted(seen) == [str(i) for i in range(8)]

    run(main)


def test_breaking_out_of_iteration_loses_nothing(url: str) -> None:
    async def main() -> None:
        async with mqkit.aio.connect(url) as mq:
            await mq.declare("t", groups=["g"])
            await mq.producer().send_many("t", [str(i) for i in range(5)])
            async with mq.consumer("t", group="g") as c:
                async for d in c:  # one batch fetches all five; take the first only
                    await d.ack()
                    first = d.message.payload
                    break
                rest = await collect(c.iter(timeout=0.3))
            assert first == "0"
            assert sorted(d.message.payload for d in rest) == ["1", "2", "3", "4"]

    run(main)


def test_close_from_inside_an_async_handler_stops_run(url: str) -> None:
    async def main() -> None:
        async with mqkit.aio.connect(url) as mq:
            await mq.declare("t", groups=["g"])
            await mq.producer().send_many("t", ["a", "b", "c"])
            handled: list[str] = []
            consumer: AsyncConsumer = mq.consumer("t", group="g", policy=mqkit.Policy(prefetch=1))

            async def handler(m: mqkit.Message) -> None:
                handled.append(m.payload)
                await consumer.close()  # must not wait for this very handler

            stats = await consumer.run(handler)  # no limits: only the close ends it
            await consumer.close()  # waits for the close started in the handler
            assert handled == ["a"]
            assert stats.handled == 1
            with pytest.raises(mqkit.Closed):
                await consumer.run(handler)
            async with mq.consumer("t", group="g") as again:
                left = await collect(again.iter(timeout=0.3))
            assert sorted(d.message.payload for d in left) == ["b", "c"]

    run(main)


def test_cancelling_run_finishes_the_handler_then_closes(url: str) -> None:
    async def main() -> None:
        started = asyncio.Event()
        release = asyncio.Event()
        done: list[str] = []

        async def handler(m: mqkit.Message) -> None:
            started.set()
            await release.wait()
            done.append(m.payload)

        async with mqkit.aio.connect(url) as mq:
            await mq.declare("t", groups=["g"])
            await mq.producer().send_many("t", ["a", "b"])
            consumer = mq.consumer("t", group="g", policy=mqkit.Policy(prefetch=1))
            task = asyncio.create_task(consumer.run(handler))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()
            await consumer.close()
            assert done == ["a"]  # the message in hand was finished (and acked)
            async with mq.consumer("t", group="g") as again:
                left = await collect(again.iter(timeout=0.3))
            assert [d.message.payload for d in left] == ["b"]

    run(main)


def test_iteration_ends_quietly_when_the_consumer_is_closed(url: str) -> None:
    async def main() -> None:
        async with mqkit.aio.connect(url) as mq:
            await mq.declare("t", groups=["g"])
            consumer = mq.consumer("t", group="g")

            async def close_soon() -> None:
                await asyncio.sleep(0.05)
                await consumer.close()

            closer = asyncio.create_task(close_soon())
            got = await collect(consumer)  # no timeout: only close ends it
            await closer
            assert got == []

    run(main)


def test_client_close_closes_its_async_consumers(url: str) -> None:
    async def main() -> None:
        mq = mqkit.aio.connect(url)
        await mq.declare("t", groups=["g"])
        consumer = mq.consumer("t", group="g")
        await mq.close()
        assert consumer.sync._closing.is_set()
        assert await collect(consumer.iter(timeout=0.1)) == []
        with pytest.raises(mqkit.Closed):
            await consumer.run(lambda m: None)
        with pytest.raises(mqkit.Closed):
            mq.producer()

    run(main)


def test_bad_arguments_raise_the_core_errors(url: str) -> None:
    async def main() -> None:
        async with mqkit.aio.connect(url) as mq:
            with pytest.raises(mqkit.ConfigError, match="topic"):
                await mq.producer().send("bad topic!", "x")
            with pytest.raises(mqkit.ConfigError, match="group"):
                mq.consumer("t", group="no spaces")
            consumer = mq.consumer("t")
            with pytest.raises(mqkit.ConfigError, match="timeout"):
                await collect(consumer.iter(timeout=-1))

    run(main)
