"""The Redis serial lock against a real Redis: fencing, exclusion, leases, the consumer."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator

import pydantic
import pytest

import mqkit
from mqkit.backends.memory import reset
from mqkit.policies.serial_lock import (
    LockHandle,
    RedisSerialLock,
    current_fence,
    serial_key,
)

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


@pytest.fixture
def ns() -> str:
    return "{test-" + uuid.uuid4().hex + "}"


@pytest.fixture
def lock(redis_url: str, ns: str) -> Iterator[RedisSerialLock]:
    lk = RedisSerialLock(redis_url, namespace=ns)
    yield lk
    lk.close()


def test_fencing_tokens_strictly_increase(lock: RedisSerialLock) -> None:
    fences = []
    for i in range(20):
        h = lock.acquire(f"k{i % 3}")
        assert h is not None
        fences.append(h.fence)
        assert lock.release(h)
    assert fences == sorted(fences)
    assert len(set(fences)) == len(fences)


def test_two_instances_never_hold_a_key_at_once(redis_url: str, ns: str) -> None:
    instances = [RedisSerialLock(redis_url, namespace=ns) for _ in range(4)]
    holder: list[int | None] = [None]
    overlaps: list[tuple[int, int]] = []
    grants: list[tuple[float, int]] = []
    guard = threading.Lock()

    def worker(i: int) -> None:
        for _ in range(25):
            h = instances[i].acquire("user-42", timeout=20)
            assert h is not None
            with guard:
                if holder[0] is not None:
                    overlaps.append((holder[0], i))
                holder[0] = i
                grants.append((time.monotonic(), h.fence))
            time.sleep(0.001)
            with guard:
                holder[0] = None
            assert instances[i].release(h)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lk in instances:
        lk.close()
    assert overlaps == []
    assert len(grants) == 100
    in_grant_order = [fence for _, fence in sorted(grants)]
    assert in_grant_order == sorted(in_grant_order)  # later grants, higher fences


def test_release_only_by_the_owner(lock: RedisSerialLock, redis_url: str, ns: str) -> None:
    h = lock.acquire("k")
    assert h is not None
    other = RedisSerialLock(redis_url, namespace=ns)
    assert not other.release(LockHandle("k", "someone-else", 0))
    assert other.acquire("k") is None  # still held by the owner
    assert lock.release(h)
    assert other.acquire("k") is not None
    other.close()


def test_renewal_keeps_a_lease_while_held(redis_url: str, ns: str) -> None:
    holder = RedisSerialLock(redis_url, namespace=ns, lease=0.3)
    other = RedisSerialLock(redis_url, namespace=ns)
    h = holder.acquire("k")
    assert h is not None
    time.sleep(1.0)  # > 3 leases: renewed meanwhile
    assert other.acquire("k") is None
    assert h.valid
    assert holder.release(h)
    holder.close()
    other.close()


def test_an_expired_lease_frees_the_key_and_the_old_holder_learns_it(
    redis_url: str, ns: str
) -> None:
    holder = RedisSerialLock(redis_url, namespace=ns, lease=0.5)
    other = RedisSerialLock(redis_url, namespace=ns)
    h = holder.acquire("k")
    assert h is not None
    holder.abandon()  # the renewal stops, as when the process hangs or dies
    assert other.acquire("k") is None
    started = time.monotonic()
    h2 = other.acquire("k", timeout=5)
    assert h2 is not None
    assert 0.2 < time.monotonic() - started < 2.0
    assert h2.fence > h.fence
    assert not holder.release(h)  # not the owner any more: it deletes nothing
    assert not h.valid
    assert other.acquire("k") is None  # h2 still holds it
    other.release(h2)
    other.close()


def test_kill9_of_a_holder_frees_the_key_after_its_lease(redis_url: str, ns: str) -> None:
    code = (
        "import sys, time\n"
        "from mqkit.policies.serial_lock import RedisSerialLock\n"
        f"lk = RedisSerialLock({redis_url!r}, namespace={ns!r}, lease=1.0)\n"
        "h = lk.acquire('k')\n"
        "print(h.fence, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        fence = int(proc.stdout.readline())
        other = RedisSerialLock(redis_url, namespace=ns)
        time.sleep(1.5)
        assert other.acquire("k") is None  # alive: its renewal holds the key
        proc.kill()
        proc.wait(10)
        h = other.acquire("k", timeout=5)
        assert h is not None
        assert h.fence > fence
        other.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_policy_field_is_validated(redis_url: str) -> None:
    assert mqkit.Policy().serial_lock is None
    p = mqkit.Policy(ordering="per_key", serial_lock=redis_url)
    assert p.serial_lock == redis_url
    with pytest.raises(pydantic.ValidationError, match="needs ordering='per_key'"):
        mqkit.Policy(serial_lock=redis_url)
    with pytest.raises(pydantic.ValidationError, match="Redis URL"):
        mqkit.Policy(ordering="per_key", serial_lock="http://x")
    with pytest.raises(pydantic.ValidationError, match="Redis URL or a RedisSerialLock"):
        mqkit.Policy(ordering="per_key", serial_lock=42)


def test_the_consumer_holds_the_keys_lock_around_the_handler(redis_url: str, ns: str) -> None:
    name = "lock" + uuid.uuid4().hex
    outside = RedisSerialLock(redis_url, namespace=ns)
    inside = RedisSerialLock(redis_url, namespace=ns)
    handled: list[tuple[str, int | None]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mq = mqkit.connect(f"memory://{name}")
    try:
        mq.declare("t", groups=["g"])
        p = mq.producer(mqkit.Policy(persistent=False))
        p.send("t", "a", key="user-1", id="a")
        p.send("t", "b", key="user-2", id="b")
        held = outside.acquire(serial_key("group", "t", "g", "user-1"))
        assert held is not None

        def handler(m: mqkit.Message) -> None:
            handled.append((m.id, current_fence()))

        policy = mqkit.Policy(ordering="per_key", serial_lock=inside, max_attempts=1)
        c = mq.consumer("t", group="g", policy=policy)
        t = threading.Thread(target=c.run, args=(handler,), kwargs={"idle_timeout": 5.0})
        t.start()
        time.sleep(0.8)
        assert [i for i, _ in handled] == ["b"]  # user-1 waits for its lock, user-2 goes on
        outside.release(held)
        deadline = time.monotonic() + 5
        while len(handled) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        c.close()
        t.join()
        assert [i for i, _ in handled] == ["b", "a"]
        fence_a = dict(handled)["a"]
        assert fence_a is not None
        assert fence_a > held.fence
        assert c.stats.retried == 0  # waiting for the lock used up no attempt
        assert current_fence() is None
    finally:
        mq.close()
        reset(name)
        outside.close()
        inside.close()
