"""The Kafka adapter's per-poll bookkeeping and wire conversions, without a broker.

The poller builds a whole poll's entries outside its lock (``PartitionState.prepare``)
and tracks them in one step (``admit``); the producer and the poller cache the
send-time conversion per batch.  These pin that the batched paths keep the
per-record semantics: nothing acked by a previous owner is handed out again, the
watermark never passes an unacked offset, and the caches change no output.
"""

from __future__ import annotations

import importlib
from typing import Any

from mqkit.message import H_CONTENT_TYPE, H_ID, H_TS, Record

_tracking = importlib.import_module("mqkit.adapters.kafka.tracking")
_adapter = importlib.import_module("mqkit.adapters.kafka.adapter")
_subscription = importlib.import_module("mqkit.adapters.kafka.subscription")
PartitionState = _tracking.PartitionState
decode_metadata = _tracking.decode_metadata
encode_metadata = _tracking.encode_metadata
wire_headers = _adapter.wire_headers
to_record = _subscription.to_record


def _admit_poll(part: Any, offsets: range) -> list[Any]:
    """What the poller does with one partition's records of a poll."""
    fresh: dict[int, Any] = {}
    skipped: list[int] = []
    for o in offsets:
        entry = part.prepare(o, Record(None, b"", {}))
        if entry is None:
            skipped.append(o)
        else:
            fresh[o] = entry
    part.admit(fresh, skipped, offsets[-1] + 1)
    return list(fresh.values())


def test_a_poll_skips_what_the_previous_owner_acked() -> None:
    prior = decode_metadata(10, encode_metadata(10, {10: 2}, [11, 13]))
    part = PartitionState(tp=None, epoch=1, prior=prior)
    entries = _admit_poll(part, range(10, 15))
    assert [e.offset for e in entries] == [10, 12, 14]
    assert entries[0].attempt == 2
    offset, meta = part.commit_point()
    assert offset == 10
    again = decode_metadata(offset, meta)  # what the next owner would read
    assert again.was_acked(11)
    assert again.was_acked(13)
    assert again.attempts == {10: 2}
    for e in entries:
        part.hand_out(e)
        assert part.ack(e)
    assert part.commit_point() == (15, "")


def test_prepare_alone_tracks_nothing() -> None:
    part = PartitionState(tp=None, epoch=1)
    entry = part.prepare(5, Record(None, b"", {}))
    assert entry is not None
    assert part.pending == {}
    assert part.watermark() is None
    assert not part.ack(entry)  # not admitted: not ours to settle


def test_acks_out_of_order_never_move_the_commit_past_a_hole() -> None:
    part = PartitionState(tp=None, epoch=1)
    entries = _admit_poll(part, range(0, 6))
    entries += _admit_poll(part, range(6, 9))  # a second poll
    for e in entries:
        part.hand_out(e)
    for i in (8, 7, 5, 4, 3, 1, 0):
        assert part.ack(entries[i])
    offset, meta = part.commit_point()
    assert offset == 2
    prior = decode_metadata(offset, meta)
    assert [o for o in range(2, 9) if prior.was_acked(o)] == [3, 4, 5, 7, 8]
    assert part.ack(entries[2])
    assert part.commit_point()[0] == 6
    assert not part.ack(entries[2])  # already settled
    assert part.ack(entries[6])
    assert part.commit_point() == (9, "")


def test_the_send_time_cache_changes_no_header() -> None:
    now = 1_800_000_000.5
    stamps: dict[str, int | None] = {}
    cases = [
        {H_ID: "a", H_TS: repr(now), H_CONTENT_TYPE: "bytes"},
        {H_ID: "b", H_TS: repr(now), H_CONTENT_TYPE: "json"},
        {H_ID: "c", H_TS: repr(now - 3600)},  # a replayed dead letter: stays a header
        {H_ID: "d", H_TS: "not a time"},
        {H_ID: "e", H_TS: repr(now - 3600)},  # same text again: answered from the cache
    ]
    for headers in cases:
        assert wire_headers(headers, now, stamps) == wire_headers(headers, now)
    assert stamps == {repr(now): round(now * 1000), repr(now - 3600): None, "not a time": None}


def test_the_poll_timestamp_cache_changes_no_record() -> None:
    stamps: dict[int, str] = {}
    wire = [(H_ID, b"m1"), ("user", "é".encode())]
    for ts in (1_800_000_000_123, 1_800_000_000_123, 1_800_000_000_124, -1):
        assert to_record(b"k", b"v", wire, ts, stamps) == to_record(b"k", b"v", wire, ts)
    assert to_record(None, None, None, 5, stamps) == Record(None, b"", {H_TS: "0.005"})
    # A record that carries its own send time keeps it.
    own = to_record(None, b"", [(H_TS, b"12.5")], 1_800_000_000_123, stamps)
    assert own.headers[H_TS] == "12.5"
