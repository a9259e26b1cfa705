"""Dedupe: the store contract (memory and a REAL Redis), and the idempotent consumer."""

from __future__ import annotations

import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import mqkit
from mqkit.backends.memory import reset
from mqkit.errors import ConfigError
from mqkit.message import Message
from mqkit.policies.dedupe import (
    Claim,
    DedupeStore,
    MemoryDedupeStore,
    RedisDedupeStore,
    dedupe_key,
    open_store,
)

LEASE = 0.3


def _key() -> str:
    return dedupe_key(f"t-{uuid.uuid4().hex}", "g", "id-1")


class DedupeStoreContract:
    """Every DedupeStore behaves like this; subclasses provide ``store``."""

    @pytest.fixture
    def store(self) -> Iterator[DedupeStore]:
        raise NotImplementedError

    def test_first_claim_wins(self, store: DedupeStore) -> None:
        assert store.claim(_key(), "a", 10.0).state is Claim.CLAIMED

    def test_other_owner_is_busy_while_processing(self, store: DedupeStore) -> None:
        k = _key()
        store.claim(k, "a", 10.0)
        r = store.claim(k, "b", 10.0)
        assert r.state is Claim.BUSY
        assert 0.0 < r.retry_after <= 10.0

    def test_same_owner_may_claim_again(self, store: DedupeStore) -> None:
        k = _key()
        store.claim(k, "a", 10.0)
        assert store.claim(k, "a", 10.0).state is Claim.CLAIMED

    def test_done_is_a_duplicate_for_everyone(self, store: DedupeStore) -> None:
        k = _key()
        store.claim(k, "a", 10.0)
        store.complete(k, "a", 60.0)
        assert store.claim(k, "b", 10.0).state is Claim.DUPLICATE
        assert store.claim(k, "a", 10.0).state is Claim.DUPLICATE

    def test_lease_expiry_lets_another_owner_claim(self, store: DedupeStore) -> None:
        k = _key()
        store.claim(k, "crashed", LEASE)
        assert store.claim(k, "b", 10.0).state is Claim.BUSY
        time.sleep(LEASE + 0.2)
        assert store.claim(k, "b", 10.0).state is Claim.CLAIMED
        assert store.claim(k, "crashed", 10.0).state is Claim.BUSY

    def test_reclaim_by_the_owner_renews_the_lease(self, store: DedupeStore) -> None:
        k = _key()
        store.claim(k, "a", 0.6)
        time.sleep(0.4)
        assert store.claim(k, "a", 0.6).state is Claim.CLAIMED
        time.sleep(0.4)  # past the first lease, inside the renewed one
        assert store.claim(k, "b", 10.0).state is Claim.BUSY

    def test_done_marker_expires_after_its_ttl(self, store: DedupeStore) -> None:
        k = _key()
        store.claim(k, "a", 10.0)
        store.complete(k, "a", LEASE)
        assert store.claim(k, "b", 10.0).state is Claim.DUPLICATE
        time.sleep(LEASE + 0.2)
        assert store.claim(k, "b", 10.0).state is Claim.CLAIMED

    def test_release_only_by_the_owner(self, store: DedupeStore) -> None:
        k = _key()
        store.claim(k, "a", 10.0)
        store.release(k, "b")
        assert store.claim(k, "c", 10.0).state is Claim.BUSY
        store.release(k, "a")
        assert store.claim(k, "c", 10.0).state is Claim.CLAIMED

    def test_release_never_forgets_done(self, store: DedupeStore) -> None:
        k = _key()
        store.claim(k, "a", 10.0)
        store.complete(k, "a", 60.0)
        store.release(k, "a")
        assert store.claim(k, "b", 10.0).state is Claim.DUPLICATE

    def test_release_of_an_unknown_key_is_harmless(self, store: DedupeStore) -> None:
        store.release(_key(), "a")

    def test_keys_are_independent(self, store: DedupeStore) -> None:
        k1, k2 = _key(), _key()
        store.claim(k1, "a", 10.0)
        store.complete(k1, "a", 60.0)
        assert store.claim(k2, "b", 10.0).state is Claim.CLAIMED

    def test_concurrent_claims_have_exactly_one_winner(self, store: DedupeStore) -> None:
        k = _key()
        n = 16
        barrier = threading.Barrier(n)
        results: list[Claim] = []
        lock = threading.Lock()

        def claim(owner: str) -> None:
            barrier.wait()
            r = store.claim(k, owner, 10.0)
            with lock:
                results.append(r.state)

        threads = [threading.Thread(target=claim, args=(f"o{i}",)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert Counter(results) == {Claim.CLAIMED: 1, Claim.BUSY: n - 1}

    def test_is_a_dedupe_store(self, store: DedupeStore) -> None:
        assert isinstance(store, DedupeStore)


class TestMemoryDedupeStore(DedupeStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[DedupeStore]:
        s = MemoryDedupeStore()
        yield s
        s.close()


@pytest.mark.redis
class TestRedisDedupeStore(DedupeStoreContract):
    @pytest.fixture
    def store(self, redis_url: str) -> Iterator[DedupeStore]:
        s = RedisDedupeStore(redis_url)
        yield s
        s.close()

    def test_markers_are_shared_between_store_objects(self, redis_url: str) -> None:
        a, b = RedisDedupeStore(redis_url), RedisDedupeStore(redis_url)
        try:
            k = _key()
            assert a.claim(k, "a", 10.0).state is Claim.CLAIMED
            assert b.claim(k, "b", 10.0).state is Claim.BUSY
            a.complete(k, "a", 60.0)
            assert b.claim(k, "b", 10.0).state is Claim.DUPLICATE
        finally:
            a.close()
            b.close()


# -- open_store ----------------------------------------------------------------


def test_open_store_specs() -> None:
    assert open_store(None) is None
    assert open_store("memory://") is open_store("memory://")
    mine = MemoryDedupeStore()
    assert open_store(mine) is mine


def test_open_store_rejects_a_non_store() -> None:
    with pytest.raises(ConfigError) as info:
        open_store(42)
    assert info.value.field == "dedupe"
    assert "claim/complete/release/close" in str(info.value)


def test_open_store_bad_redis_url() -> None:
    with pytest.raises(ConfigError) as info:
        open_store("redis://h:notaport/0")
    assert info.value.field == "dedupe"


@pytest.mark.redis
def test_open_store_redis_url(redis_url: str) -> None:
    s = open_store(redis_url)
    assert isinstance(s, RedisDedupeStore)
    s.close()


# -- the idempotent consumer -----------------------------------------------------


@pytest.fixture
def mq() -> Iterator[mqkit.Client]:
    name = uuid.uuid4().hex
    warnings.simplefilter("ignore")
    client = mqkit.connect(f"memory://{name}")
    try:
        yield client
    finally:
        client.close()
        reset(name)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def dedupe(request: pytest.FixtureRequest) -> Any:
    """A dedupe spec: a shared in-process store object, or a real Redis URL."""
    if request.param == "memory":
        return MemoryDedupeStore()
    return request.getfixturevalue("redis_url")


def _topic() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"  # Redis markers outlive a test: keep keys unique


def test_same_id_twice_is_handled_once(mq: mqkit.Client, dedupe: Any) -> None:
    topic = _topic()
    mq.declare(topic, groups=["g"])
    p = mq.producer()
    for mid in ("a", "b", "a", "c", "b", "a"):
        p.send(topic, mid.encode(), id=mid)
    seen: list[str] = []
    # A copy fetched while the first is in progress is put back for a while (at most
    # backoff max): keep that short so this run sees it come back as a duplicate.
    policy = mqkit.Policy(dedupe=dedupe, backoff=(0.01, 2.0, 0.1))
    c = mq.consumer(topic, group="g", policy=policy)
    stats = c.run(lambda m: seen.append(m.id), idle_timeout=0.5)
    assert sorted(seen) == ["a", "b", "c"]
    assert stats.duplicates == 3
    assert stats.handled == 3


def test_resend_after_handling_is_handled_once(mq: mqkit.Client, dedupe: Any) -> None:
    topic = _topic()
    mq.declare(topic, groups=["g"])
    policy = mqkit.Policy(dedupe=dedupe)
    seen: list[str] = []
    mq.producer().send(topic, b"1", id="order-1-created")
    mq.consumer(topic, group="g", policy=policy).run(lambda m: seen.append(m.id), idle_timeout=0.3)
    mq.producer().send(topic, b"1", id="order-1-created")
    stats = mq.consumer(topic, group="g", policy=policy).run(
        lambda m: seen.append(m.id), idle_timeout=0.3
    )
    assert seen == ["order-1-created"]
    assert stats.duplicates == 1


def test_other_groups_are_not_deduped_against_each_other(mq: mqkit.Client, dedupe: Any) -> None:
    topic = _topic()
    mq.declare(topic, groups=["billing", "shipping"])
    mq.producer().send(topic, b"x", id="same")
    policy = mqkit.Policy(dedupe=dedupe)
    seen: list[tuple[str, str]] = []
    for g in ("billing", "shipping"):
        mq.consumer(topic, group=g, policy=policy).run(
            lambda m, g=g: seen.append((g, m.id)), idle_timeout=0.3
        )
    assert seen == [("billing", "same"), ("shipping", "same")]


def test_failed_attempt_is_retried_under_dedupe(mq: mqkit.Client, dedupe: Any) -> None:
    topic = _topic()
    mq.declare(topic, groups=["g"])
    mq.producer().send(topic, b"x", id="flaky")
    calls: list[int] = []

    def handler(m: Message) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("transient")

    policy = mqkit.Policy(dedupe=dedupe, backoff=(0.01, 1.0, 0.01))
    stats = mq.consumer(topic, group="g", policy=policy).run(handler, idle_timeout=0.3)
    assert len(calls) == 3
    assert (stats.handled, stats.retried, stats.dead_lettered) == (1, 2, 0)


def test_dead_lettered_id_can_be_handled_after_replay(mq: mqkit.Client, dedupe: Any) -> None:
    topic = _topic()
    mq.declare(topic, groups=["g"])
    p = mq.producer()
    p.send(topic, b"x", id="poison")
    policy = mqkit.Policy(dedupe=dedupe, max_attempts=1)
    c = mq.consumer(topic, group="g", policy=policy)

    def fail(m: Message) -> None:
        raise ValueError("bad")

    assert c.run(fail, idle_timeout=0.3).dead_lettered == 1
    c.close()
    p.send(topic, b"x", id="poison")  # what replay does: the same id again
    seen: list[str] = []
    mq.consumer(topic, group="g", policy=policy).run(lambda m: seen.append(m.id), idle_timeout=0.3)
    assert seen == ["poison"]


def test_two_members_with_resends_handle_each_id_once(mq: mqkit.Client, dedupe: Any) -> None:
    topic = _topic()
    mq.declare(topic, partitions=4, groups=["g"])
    ids = [f"m{i}" for i in range(40)]
    policy = mqkit.Policy(dedupe=dedupe, prefetch=5)
    effects: Counter[str] = Counter()
    lock = threading.Lock()

    def handler(m: Message) -> None:
        with lock:
            effects[m.id] += 1

    consumers = [mq.consumer(topic, group="g", policy=policy) for _ in range(2)]
    p = mq.producer()
    for mid in ids + ids[::-1]:
        p.send(topic, mid.encode(), id=mid)
    threads = [
        threading.Thread(target=c.run, args=(handler,), kwargs={"idle_timeout": 1.0})
        for c in consumers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert effects == Counter(dict.fromkeys(ids, 1))


def test_a_lease_that_ran_out_while_queued_is_checked_again(mq: mqkit.Client, dedupe: Any) -> None:
    """A prefetched copy whose claim expired while it waited must not run a second time.

    Member A prefetches ``slow`` and ``dup`` (claiming both), then spends longer than
    ``processing_timeout`` on ``slow``.  Meanwhile a re-sent copy of ``dup`` reaches
    member B, which waits out A's lease, handles it and records it done.  When A
    finally gets to its own copy of ``dup``, it must see ``done`` and not run it.
    """
    topic = _topic()
    mq.declare(topic, groups=["g"])
    policy = mqkit.Policy(dedupe=dedupe, processing_timeout=0.3, prefetch=10)
    effects: Counter[str] = Counter()
    lock = threading.Lock()
    started, release = threading.Event(), threading.Event()

    def handler(m: Message) -> None:
        if m.id == "slow":
            started.set()
            assert release.wait(30)
        with lock:
            effects[m.id] += 1

    p = mq.producer()
    p.send(topic, b"s", id="slow")
    p.send(topic, b"d", id="dup")
    a = mq.consumer(topic, group="g", policy=policy)
    ta = threading.Thread(target=a.run, args=(handler,), kwargs={"idle_timeout": 0.5})
    ta.start()
    assert started.wait(10)  # A holds both: 'slow' in its handler, 'dup' queued
    p.send(topic, b"d", id="dup")
    b = mq.consumer(topic, group="g", policy=policy)
    tb = threading.Thread(target=b.run, args=(handler,))
    tb.start()
    deadline = time.monotonic() + 20
    while effects["dup"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert effects["dup"] == 1  # B handled the re-sent copy once A's lease ran out
    release.set()
    ta.join(timeout=30)
    b.close()
    tb.join(timeout=30)
    assert not ta.is_alive()
    assert not tb.is_alive()
    assert effects == Counter({"slow": 1, "dup": 1})
    assert a.stats.duplicates == 1
