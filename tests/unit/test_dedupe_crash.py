"""C7 across a crash: with a Redis dedupe store, every message's effect happens once.

The crash points are simulated inside one process: the consumer's private hook
``_on_handled`` runs after the dedupe 'done' marker is written and before the
ack, and a handler can die half-way; both raise a BaseException (not an
Exception, so no retry logic catches it), the way a kill would cut the run off.
A kill -9 of a consumer PROCESS comes with the native broker server
(``mqkit://``), where producer, broker and consumers live in different processes.
"""

from __future__ import annotations

import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator

import pytest

import mqkit
from mqkit.backends.memory import reset
from mqkit.delivery import Delivery
from mqkit.message import Message
from mqkit.policies.dedupe import Claim, ClaimResult, RedisDedupeStore, dedupe_key

pytestmark = [pytest.mark.fault, pytest.mark.redis]

N = 20
CRASH_ON = "m7"


class SimulatedCrash(BaseException):
    """The process 'dies' here: nothing after this point runs."""


@pytest.fixture
def name() -> Iterator[str]:
    n = uuid.uuid4().hex
    warnings.simplefilter("ignore")
    yield n
    reset(n)


def _setup(url: str) -> tuple[mqkit.Client, str, list[str]]:
    mq = mqkit.connect(url)
    topic = f"crash-{uuid.uuid4().hex[:12]}"
    mq.declare(topic, groups=["g"])
    ids = [f"m{i}" for i in range(N)]
    p = mq.producer()
    for mid in ids:
        p.send(topic, mid.encode(), id=mid)
    return mq, topic, ids


def _assert_group_drained(mq: mqkit.Client, topic: str) -> None:
    [s] = mq.stats(topic, "g")
    assert (s.backlog, s.in_flight) == (0, 0)
    assert list(mq.consumer(topic + ".dlq").iter(timeout=0.2)) == []


def test_crash_after_done_before_ack_is_not_handled_again(redis_url: str, name: str) -> None:
    mq, topic, ids = _setup(f"memory://{name}")
    policy = mqkit.Policy(dedupe=redis_url, processing_timeout=0.5)
    effects: Counter[str] = Counter()

    def handler(m: Message) -> None:
        effects[m.id] += 1

    def crash_after_done(d: Delivery) -> None:
        if d.message.id == CRASH_ON:
            raise SimulatedCrash

    first = mq.consumer(topic, group="g", policy=policy)
    first._on_handled = crash_after_done
    with pytest.raises(SimulatedCrash):
        first.run(handler, idle_timeout=2.0)
    assert effects[CRASH_ON] == 1  # the effect happened, the ack did not
    first.close()  # leaves the group without acking: the message goes back

    attempts: dict[str, int] = {}
    second = mq.consumer(topic, group="g", policy=policy)
    second._on_handled = lambda d: attempts.__setitem__(d.message.id, d.attempt)
    stats = second.run(handler, idle_timeout=0.5)
    second.close()

    lost = [mid for mid in ids if effects[mid] == 0]
    twice = [mid for mid in ids if effects[mid] > 1]
    assert (lost, twice) == ([], [])
    assert stats.duplicates == 1  # the crashed one came back, was seen done, and acked
    assert CRASH_ON not in attempts
    _assert_group_drained(mq, topic)
    mq.close()


def test_same_consumer_can_run_again_after_a_crash(redis_url: str, name: str) -> None:
    """A crash escaping run() leaves the consumer usable: nothing stuck, nothing doubled."""
    mq, topic, ids = _setup(f"memory://{name}")
    policy = mqkit.Policy(dedupe=redis_url, processing_timeout=0.5, prefetch=5)
    effects: Counter[str] = Counter()
    c = mq.consumer(topic, group="g", policy=policy)

    def crash_once(d: Delivery) -> None:
        if d.message.id == CRASH_ON and effects[CRASH_ON] == 1 and d.attempt == 1:
            raise SimulatedCrash

    c._on_handled = crash_once
    with pytest.raises(SimulatedCrash):
        c.run(lambda m: effects.update([m.id]), idle_timeout=2.0)
    stats = c.run(lambda m: effects.update([m.id]), idle_timeout=0.5)
    c.close()
    assert effects == Counter(dict.fromkeys(ids, 1))
    assert stats.duplicates == 1
    _assert_group_drained(mq, topic)
    mq.close()


def test_crash_inside_the_handler_is_handled_again(redis_url: str, name: str) -> None:
    mq, topic, ids = _setup(f"memory://{name}")
    policy = mqkit.Policy(dedupe=redis_url, processing_timeout=0.5)
    effects: Counter[str] = Counter()
    started: Counter[str] = Counter()

    def handler(m: Message) -> None:
        started[m.id] += 1
        if m.id == CRASH_ON and started[m.id] == 1:
            raise SimulatedCrash  # dies before its effect and before 'done'
        effects[m.id] += 1

    first = mq.consumer(topic, group="g", policy=policy)
    with pytest.raises(SimulatedCrash):
        first.run(handler, idle_timeout=2.0)
    first.close()

    attempts: dict[str, int] = {}
    second = mq.consumer(topic, group="g", policy=policy)
    second._on_handled = lambda d: attempts.__setitem__(d.message.id, d.attempt)
    second.run(handler, idle_timeout=1.5)  # longer than the lease, in case it is held
    second.close()

    assert effects == Counter(dict.fromkeys(ids, 1))
    assert started[CRASH_ON] == 2
    assert attempts[CRASH_ON] == 2  # redelivered, with the attempt counted
    _assert_group_drained(mq, topic)
    mq.close()


class RecordingStore:
    """A DedupeStore that remembers every claim answer (to see the lease at work)."""

    def __init__(self, inner: RedisDedupeStore) -> None:
        self.inner = inner
        self.claims: list[tuple[str, str, Claim]] = []
        self._lock = threading.Lock()

    def claim(self, key: str, owner: str, lease: float) -> ClaimResult:
        r = self.inner.claim(key, owner, lease)
        with self._lock:
            self.claims.append((key, owner, r.state))
        return r

    def complete(self, key: str, owner: str, ttl: float) -> None:
        self.inner.complete(key, owner, ttl)

    def release(self, key: str, owner: str) -> None:
        self.inner.release(key, owner)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.slow
def test_a_consumer_dead_mid_handler_keeps_its_lease_then_the_message_is_handled(
    redis_url: str, name: str
) -> None:
    """No cleanup at all: the member hangs in its handler (a frozen or killed process).

    The group evicts it after ``session_timeout`` and redelivers the message, but
    its dedupe lease (``processing_timeout``, longer) still stands: the new member
    is told BUSY and puts the message back until the lease runs out, then handles it.
    """
    mq, topic, ids = _setup(f"memory://{name}?session_timeout=0.3")
    store = RecordingStore(RedisDedupeStore(redis_url))
    policy = mqkit.Policy(dedupe=store, processing_timeout=2.0)
    effects: Counter[str] = Counter()
    lock = threading.Lock()
    frozen, thaw = threading.Event(), threading.Event()

    def handler(m: Message) -> None:
        if m.id == "m0" and not frozen.is_set():
            frozen.set()
            thaw.wait(60)
            raise SimulatedCrash  # it never finishes
        with lock:
            effects[m.id] += 1

    dead = mq.consumer(topic, group="g", policy=policy.model_copy(update={"prefetch": 1}))
    outcome: list[BaseException] = []

    def run_dead() -> None:
        try:
            dead.run(handler)
        except BaseException as exc:
            outcome.append(exc)

    t_dead = threading.Thread(target=run_dead)
    t_dead.start()
    assert frozen.wait(10)

    attempts: dict[str, int] = {}
    alive = mq.consumer(topic, group="g", policy=policy)
    alive._on_handled = lambda d: attempts.__setitem__(d.message.id, d.attempt)
    t_alive = threading.Thread(target=alive.run, args=(handler,))
    t_alive.start()
    deadline = time.monotonic() + 30
    while effects["m0"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    alive.close()
    t_alive.join(30)
    thaw.set()
    t_dead.join(30)
    dead.close()
    assert not t_alive.is_alive()
    assert not t_dead.is_alive()

    assert effects == Counter(dict.fromkeys(ids, 1))
    assert attempts["m0"] >= 2  # redelivered (each BUSY put-back is a delivery too)
    key = dedupe_key(topic, "g", "m0")
    dead_owner = next(o for k, o, s in store.claims if k == key and s is Claim.CLAIMED)
    by_alive = [s for k, o, s in store.claims if k == key and o != dead_owner]
    assert Claim.CLAIMED in by_alive
    first = by_alive.index(Claim.CLAIMED)
    assert first >= 1  # the dead member's lease was honoured...
    assert set(by_alive[:first]) == {Claim.BUSY}  # ...by putting the message back
    assert set(by_alive[first:]) == {Claim.CLAIMED}  # ...until it ran out
    # its run ended with its own crash, not masked by the failed give-back of an
    # evicted member
    assert len(outcome) == 1
    assert type(outcome[0]) is SimulatedCrash
    _assert_group_drained(mq, topic)
    mq.close()
