"""The one loop behind fanout, replay and bridge: read a group, publish, then ack.

Why one loop: every playbook that moves messages has the same three promises,
and they are easy to get subtly wrong three times:

* **no loss** -- a batch is acked on the source only after the target
  confirmed it, so a crash (even kill -9) at any point leaves every message
  either on the source (redelivered to the next run) or on the target;
* **bounded duplicates, absorbed by dedupe** -- a crash between the target's
  confirm and the source's ack re-moves that one batch on the next run, with
  the SAME ids (records are copied as they are: key, value, id, headers), so
  Redis dedupe on the consumers of the target handles each id once (on Kafka
  the acks since the group's last offset commit are re-moved too, and on
  RocketMQ a dead mover's messages return when their lease ends: run the
  resume with an idle timeout longer than ``invisible_time``);
* **per-key order** -- the source is read by one member (a single reader:
  a key's messages arrive in order), records keep their key, and batches are
  published in order by one thread; after a failed batch nothing later is
  published.  See :func:`reads_ordered` for how that member subscribes.

Throughput: the publish of batch *n* (a confirmed, fsynced round trip) runs in
a helper thread while batch *n+1* is fetched.  Fetch and ack stay in the
calling thread, because a subscription belongs to one thread (adapter rule).

Messages a ``route`` declines (filters) are kept leased until the end and
then given back untouched, so one run sees each message once; at most
``window`` of them are held (``MoveResult.window_full`` says the scan stopped
there).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mqkit.adapter import Inbound, PublishOutcome
from mqkit.capabilities import Support
from mqkit.client import Client
from mqkit.errors import ConfigError, PublishError
from mqkit.message import Record

__all__ = ["MoveResult", "Route", "move", "publish_persistent", "reads_ordered"]

Route = Callable[[Record], tuple[str, Record] | None]
"""Where a source record goes: ``(target topic, record to publish)``, or None to leave it."""

IDLE_POLL = 0.5  # longest single fetch wait: keeps stop requests and idle checks prompt


@dataclass
class MoveResult:
    """What one move did; ``moved + skipped`` messages were examined."""

    moved: int = 0
    skipped: int = 0
    by_target: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # from start to the last batch settled (the idle wait excluded)
    window_full: bool = False
    dry_run: bool = False

    @property
    def rate(self) -> float:
        """Messages moved (or, dry run, selected) per second."""
        return self.moved / self.seconds if self.seconds > 0 else 0.0


def publish_persistent(mq: Client) -> bool:
    """Ask for persistence where the backend has it (memory:// would only warn)."""
    return mq.capabilities.supports("persistent")


def reads_ordered(mq: Client, *, holds: bool) -> bool:
    """Whether the mover joins its group as an ordered member.

    Where partitions are the broker's own (native, Kafka, RocketMQ), an ordered
    member owns whole partitions and gets each in log order -- also after a
    crash: the dead mover's messages come back before anything newer of their
    partition.  Where partitions are emulated (RabbitMQ lanes, ActiveMQ
    queues), asking for order would reshape the group itself (RabbitMQ turns
    it into single-active-consumer lanes for good, the DLQ's ``default`` group
    included), while one plain reader of a queue already gets arrival order.
    A move that ``holds`` messages (a filtered replay, a dry run) reads plain
    everywhere: an ordered RocketMQ member gets nothing more from a queue until
    it settles what it holds, so the scan would stop after one batch per queue.
    """
    return not holds and mq.capabilities.level("partitions") is Support.NATIVE


@dataclass
class _Batch:
    inbounds: list[Inbound]
    routed: list[tuple[str, Record]]


class _Publisher:
    """Publishes batches in order on one helper thread; stops at the first failure."""

    def __init__(self, target: Client) -> None:
        self._target = target
        self._persistent = publish_persistent(target)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mqkit-move")
        self._failed = False

    def submit(self, batch: _Batch) -> concurrent.futures.Future[list[PublishOutcome]]:
        return self._pool.submit(self._publish, batch)

    def _publish(self, batch: _Batch) -> list[PublishOutcome]:
        if self._failed:
            # An earlier batch was not confirmed: publishing this one would let its
            # messages overtake the failed ones of the same key.
            skipped = PublishError("not sent: an earlier batch of this move failed")
            return [skipped] * len(batch.routed)
        outcomes: list[PublishOutcome] = [PublishError("not sent")] * len(batch.routed)
        by_topic: dict[str, list[int]] = {}
        for i, (topic, _) in enumerate(batch.routed):
            by_topic.setdefault(topic, []).append(i)
        for topic, idxs in by_topic.items():
            try:
                got = self._target.adapter.publish(
                    topic,
                    [batch.routed[i][1] for i in idxs],
                    confirm=True,
                    persistent=self._persistent,
                )
            except Exception as exc:  # adapters report per record; be safe anyway
                got = [exc] * len(idxs)
            if len(got) != len(idxs):
                got = [PublishError(f"{len(got)} outcomes for {len(idxs)} records")] * len(idxs)
            for i, outcome in zip(idxs, got, strict=True):
                outcomes[i] = outcome
                if isinstance(outcome, BaseException):
                    self._failed = True
        return outcomes

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def move(
    source: Client,
    topic: str,
    *,
    group: str,
    route: Route,
    target: Client | None = None,
    batch_size: int = 1000,
    limit: int | None = None,
    dry_run: bool = False,
    idle_timeout: float = 2.0,
    window: int = 100_000,
    on_progress: Callable[[MoveResult], None] | None = None,
    stop: threading.Event | None = None,
) -> MoveResult:
    """Move ``topic``'s messages for ``group`` on ``source`` to ``target`` (default: source).

    Stops when nothing arrived for ``idle_timeout`` seconds, after ``limit``
    moved messages, or when ``stop`` is set.  ``dry_run`` routes and counts
    but publishes and acks nothing.  Raises :class:`PublishError` if the
    target did not confirm a batch: what was confirmed is acked, the rest is
    given back, and running the move again resumes it.
    """
    if batch_size < 1:
        raise ConfigError(f"must be >= 1, got {batch_size}", field="batch_size")
    if limit is not None and limit < 1:
        raise ConfigError(f"must be >= 1, got {limit}", field="limit")
    if idle_timeout <= 0:
        raise ConfigError(f"must be seconds > 0, got {idle_timeout}", field="idle_timeout")
    dest = target or source
    result = MoveResult(dry_run=dry_run)
    started = time.monotonic()
    # Room for the held (skipped / dry-run) messages plus two batches in flight.
    ordered = reads_ordered(source, holds=window > 0 or dry_run)
    sub = source.adapter.subscribe(topic, group, prefetch=window + 2 * batch_size, ordered=ordered)
    publisher = _Publisher(dest)
    held = 0
    pending: tuple[_Batch, concurrent.futures.Future[list[PublishOutcome]]] | None = None

    def settle(batch: _Batch, fut: concurrent.futures.Future[list[PublishOutcome]]) -> None:
        outcomes = fut.result()
        done = [i for i, o in zip(batch.inbounds, outcomes, strict=True) if not _failed(o)]
        sub.ack_many(done)
        for (name, _), o in zip(batch.routed, outcomes, strict=True):
            if not _failed(o):
                result.moved += 1
                result.by_target[name] = result.by_target.get(name, 0) + 1
        result.seconds = time.monotonic() - started
        failed = [
            (i, inbound.record.id, o)
            for i, (inbound, o) in enumerate(zip(batch.inbounds, outcomes, strict=True))
            if isinstance(o, BaseException)
        ]
        if failed:
            for i, _, _ in failed:
                sub.nack(batch.inbounds[i])
            first = failed[0][2]
            raise PublishError(
                f"{len(failed)} message(s) were not confirmed by the target "
                f"(first: {type(first).__name__}: {first}); {result.moved} moved so far, the "
                "rest stay on the source: run the same command again to resume",
                failed=failed,
            ) from first

    try:
        idle_since = time.monotonic()
        in_flight = 0  # messages of the pending batch, counted toward the limit
        while stop is None or not stop.is_set():
            now = time.monotonic()
            if not sub.ready:
                idle_since = now
            if now - idle_since >= idle_timeout:
                break
            room = batch_size
            if limit is not None:
                room = min(room, limit - result.moved - in_flight)
            if room <= 0:
                break
            if held and held >= window:
                result.window_full = True
                break
            got = sub.fetch(room, min(IDLE_POLL, max(0.0, idle_timeout - (now - idle_since))))
            if not got:
                if pending is not None:  # a lull: settle what is on its way meanwhile
                    lull, pending, in_flight = pending, None, 0
                    settle(*lull)
                    if on_progress is not None:
                        on_progress(result)
                continue
            idle_since = time.monotonic()
            batch = _Batch([], [])
            for inbound in got:
                routed = route(inbound.record)
                if routed is None:
                    result.skipped += 1
                    held += 1  # left leased: given back untouched when the move ends
                elif dry_run:
                    held += 1
                    result.moved += 1
                    result.by_target[routed[0]] = result.by_target.get(routed[0], 0) + 1
                else:
                    batch.inbounds.append(inbound)
                    batch.routed.append(routed)
            previous = pending
            if batch.inbounds:
                pending = (batch, publisher.submit(batch))
                in_flight = len(batch.inbounds)
            else:
                pending, in_flight = None, 0
            if previous is not None:
                settle(*previous)
            if dry_run:
                result.seconds = time.monotonic() - started
            if on_progress is not None:
                on_progress(result)
        if pending is not None:
            batch, fut = pending
            pending = None
            settle(batch, fut)
    finally:
        try:
            if pending is not None:
                # Interrupted (Ctrl-C, an error) with a batch on its way: ack it if it
                # was confirmed, so the next run does not move it again.
                batch, fut = pending
                outcomes = fut.result()
                sub.ack_many(
                    [i for i, o in zip(batch.inbounds, outcomes, strict=True) if not _failed(o)]
                )
        finally:
            publisher.close()
            sub.close()  # gives back everything held: skipped, dry-run, unconfirmed
    if on_progress is not None:
        on_progress(result)
    return result


def _failed(outcome: PublishOutcome) -> bool:
    return isinstance(outcome, BaseException)
