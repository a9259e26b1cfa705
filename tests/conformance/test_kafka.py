"""The conformance suite against a real Kafka 4.x (``docker/brokers up kafka``).

The broker hooks drive docker/brokers: C2 stops Kafka (SIGTERM) and C3 kills it
with SIGKILL, then both start it again on the same data and wait until it is
ready.  Group joins take a moment on a real broker, hence a longer ``settle``
(idle time counts only once the consumer has joined; see ``ready``).

Below the suite, tests of the adapter's own logic that need no broker: option
validation (settings that would turn idempotence off are refused) and the
commit bookkeeping (low watermark, commit metadata).
"""

from __future__ import annotations

import importlib
import threading
import uuid
from collections.abc import Iterator

import pytest

import mqkit
from mqkit.errors import ConfigError
from mqkit.message import H_CONTENT_TYPE, H_ID, H_TS, Record
from mqkit.policy import Policy
from mqkit.producer import OutgoingMessage
from mqkit.testing.conformance import ConformanceSuite
from tests.brokers_plugin import BrokerControl, broker_url

# mqkit.adapters is a package-dir mapping mypy does not follow: import by name.
_tracking = importlib.import_module("mqkit.adapters.kafka.tracking")
_adapter = importlib.import_module("mqkit.adapters.kafka.adapter")
_subscription = importlib.import_module("mqkit.adapters.kafka.subscription")
_options = importlib.import_module("mqkit.adapters.kafka.options")
MAX_METADATA = _tracking.MAX_METADATA
PartitionState = _tracking.PartitionState
decode_metadata = _tracking.decode_metadata
encode_metadata = _tracking.encode_metadata
wire_headers = _adapter.wire_headers
to_record = _subscription.to_record

# C2 waits until an unconfirmable send fails: keep that bounded (default 30 s).
QUERY = "delivery_timeout_ms=12000&max_block_ms=4000&request_timeout_ms=8000"


@pytest.mark.kafka
@pytest.mark.timeout(300)
class TestKafka(ConformanceSuite):
    settle = 1.5
    control = BrokerControl()

    @pytest.fixture(autouse=True)
    def _drop_new_topics(self) -> Iterator[None]:
        """Delete the topics a test created (the suite's names start with c-)."""
        before = _topics()
        yield
        _delete_topics(_topics() - before)

    def make_url(self) -> str:
        return f"{broker_url('kafka')}?{QUERY}"

    def stop_broker(self) -> None:
        self.control.down("kafka")

    def kill_broker(self) -> None:
        self.control.kill9("kafka")

    def restart_broker(self) -> None:
        self.control.restart("kafka")


def _bootstrap() -> str:
    return broker_url("kafka").split("://", 1)[1].split("?", 1)[0]


def _topics() -> set[str]:
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=_bootstrap(), bootstrap_timeout_ms=5000)
    except Exception:
        return set()  # the broker is down (C2/C3 restart it); nothing to compare
    try:
        return {t for t in admin.list_topics() if t.startswith("c-")}
    finally:
        admin.close()


def _delete_topics(names: set[str]) -> None:
    from kafka import KafkaAdminClient

    if not names:
        return
    admin = KafkaAdminClient(bootstrap_servers=_bootstrap(), bootstrap_timeout_ms=5000)
    try:
        admin.delete_topics(sorted(names), raise_errors=False)
    finally:
        admin.close()


# -- no broker needed ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "option"),
    [
        ("acks=1", "options.acks"),
        ("acks=0", "options.acks"),
        ("retries=0", "options.retries"),
        ("max_in_flight_requests_per_connection=6", "max_in_flight_requests_per_connection"),
        ("enable_idempotence=false", "options.enable_idempotence"),
        ("linger_ms=-1", "options.linger_ms"),
        ("group_id_format=fixed", "options.group_id_format"),
    ],
)
def test_unsafe_or_unknown_options_are_refused_naming_the_option(query: str, option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        mqkit.connect(f"kafka://127.0.0.1:1?{query}")


def test_acks_all_is_accepted_in_both_spellings() -> None:
    from mqkit.settings import Settings

    for acks in ("all", "-1"):
        opts = _options.load_options(Settings(url=f"kafka://127.0.0.1:1?acks={acks}"))
        assert opts.producer(Settings(url="kafka://h:1"), 1000)["acks"] == "all"


def test_watermark_never_passes_an_unacked_message() -> None:
    part = PartitionState(tp=None, epoch=1)
    entries = [part.receive(o, Record(None, b"", {})) for o in range(10, 15)]
    assert all(e is not None for e in entries)
    for e in entries:
        assert e is not None
        part.hand_out(e)
    for i in (0, 1, 3, 4):  # 12 stays unacked
        e = entries[i]
        assert e is not None
        assert part.ack(e)
    point = part.commit_point()
    assert point is not None
    offset, meta = point
    assert offset == 12
    prior = decode_metadata(offset, meta)
    assert prior.attempts == {12: 1}
    assert prior.was_acked(13)
    assert prior.was_acked(14)
    assert not prior.was_acked(12)
    last = entries[2]
    assert last is not None
    assert part.ack(last)
    assert part.commit_point() == (15, "")


def test_next_owner_skips_acked_and_keeps_counting_attempts() -> None:
    prior = decode_metadata(100, encode_metadata(100, {100: 2, 103: 1}, [101, 102, 104]))
    part = PartitionState(tp=None, epoch=2, prior=prior)
    got = [part.receive(o, Record(None, b"", {})) for o in range(100, 106)]
    assert [e is not None for e in got] == [True, False, False, True, False, True]
    first, fourth = got[0], got[3]
    assert first is not None
    assert fourth is not None
    assert part.hand_out(first) == 3
    assert part.hand_out(fourth) == 2


def test_nacked_entry_holds_the_watermark_until_acked() -> None:
    part = PartitionState(tp=None, epoch=1)
    e = part.receive(7, Record(None, b"", {}))
    assert e is not None
    part.hand_out(e)
    assert part.give_back(e)
    assert part.commit_point() == (7, "mqkit1 a=0:1")
    part.hand_out(e)
    assert part.ack(e)
    assert part.commit_point() == (8, "")
    part.revoked = True
    assert not part.ack(e)


def test_metadata_is_capped_and_foreign_metadata_means_nothing() -> None:
    acked = list(range(1, 20_000, 2))  # no contiguous ranges: worst case
    text = encode_metadata(0, {0: 1}, acked)
    assert len(text) <= MAX_METADATA
    prior = decode_metadata(0, text)
    assert prior.attempts == {0: 1}
    assert decode_metadata(5, "written by another tool").attempts == {}
    assert decode_metadata(5, "mqkit1 a=x:y").attempts == {}


def test_send_time_and_default_content_type_ride_on_kafka_fields() -> None:
    now = 1_800_000_000.123
    headers = {H_ID: "m1", H_TS: repr(now), H_CONTENT_TYPE: "bytes", "user": "é"}
    wire, ts_ms = wire_headers(headers, now)
    assert ts_ms == round(now * 1000)
    assert wire == [(H_ID, b"m1"), ("user", "é".encode())]
    back = to_record(b"k", b"v", wire, ts_ms)
    assert back.headers[H_ID] == "m1"
    assert back.headers["user"] == "é"
    assert abs(float(back.headers[H_TS]) - now) < 0.001
    old = {H_ID: "m2", H_TS: repr(now - 3600), H_CONTENT_TYPE: "json"}
    wire, ts_ms = wire_headers(old, now)  # a replayed dead letter keeps its own header
    assert ts_ms is None
    assert dict(wire) == {H_ID: b"m2", H_TS: repr(now - 3600).encode(), H_CONTENT_TYPE: b"json"}


# -- Kafka specifics, against the broker ---------------------------------------------------


@pytest.mark.kafka
@pytest.mark.timeout(120)
class TestKafkaSpecifics:
    @pytest.fixture
    def mq(self) -> Iterator[mqkit.Client]:
        client = mqkit.connect(broker_url("kafka"))
        yield client
        client.close()

    @pytest.fixture
    def topic(self, mq: mqkit.Client) -> Iterator[str]:
        name = f"k-{uuid.uuid4().hex[:10]}"
        mq.declare(name, partitions=2, groups=["g"])
        yield name
        mq.adapter.delete_topic(name)
        mq.adapter.delete_topic(f"{name}.dlq")

    def test_other_partition_count_is_a_config_error(self, mq: mqkit.Client, topic: str) -> None:
        mq.declare(topic, partitions=2)  # same count: fine
        with pytest.raises(ConfigError, match="partitions"):
            mq.declare(topic, partitions=3)

    def test_attempts_and_acks_survive_a_consumer_restart(
        self, mq: mqkit.Client, topic: str
    ) -> None:
        p = mq.producer()
        p.send_many(topic, [OutgoingMessage(str(i).encode(), key="k") for i in range(5)])
        c1 = mq.consumer(topic, group="g", policy=Policy(prefetch=10))
        first = []
        for d in c1.iter(timeout=5.0):
            first.append((d.message.value, d.attempt))
            if d.message.value in (b"1", b"3"):
                d.ack()  # acks above the unacked b"0": they ride in the commit metadata
            if len(first) == 5:
                break
        c1.close()
        c2 = mq.consumer(topic, group="g", policy=Policy(prefetch=10))
        again = []
        for d in c2.iter(timeout=5.0):
            again.append((d.message.value, d.attempt))
            d.ack()
        c2.close()
        assert first == [(str(i).encode(), 1) for i in range(5)]
        assert again == [(b"0", 2), (b"2", 2), (b"4", 2)]
        assert [s.backlog for s in mq.stats(topic, "g")] == [0, 0]

    @pytest.mark.parametrize("clients", ["shared", "per-worker"])
    def test_members_joining_one_by_one_handle_every_message(
        self, mq: mqkit.Client, clients: str
    ) -> None:
        """Regression: records buffered at a rebalance were skipped by their next reader.

        kafka-python keeps the fetch position of a partition that is revoked and
        assigned to the same member again; the member had dropped its buffered
        records at the revoke, so it read on after them and committed past them.
        The first member takes one delivery before the others join: its buffer
        (2 x prefetch) is full of records when each join revokes everything.
        """
        n, workers = 300, 4
        topic = f"k-{uuid.uuid4().hex[:10]}"
        mq.declare(topic, partitions=20, groups=["g"])
        own = [mqkit.connect(broker_url("kafka")) for _ in range(workers - 1)]
        try:
            sent = [f"m{i}" for i in range(n)]
            batch = [OutgoingMessage(m.encode(), key=m, id=m) for m in sent]
            mq.producer().send_many(topic, batch)
            policy = Policy(prefetch=100)
            first = mq.consumer(topic, group="g", policy=policy)
            seen: list[str] = []
            lock = threading.Lock()
            for d in first.iter(timeout=10.0):
                seen.append(d.message.id)
                d.ack()
                break
            assert seen, "the first member received nothing"
            sources = own if clients == "per-worker" else [mq] * (workers - 1)
            members = [first] + [c.consumer(topic, group="g", policy=policy) for c in sources]

            def handle(message: mqkit.Message) -> None:
                with lock:
                    seen.append(message.id)

            errors: list[BaseException] = []

            def work(member: mqkit.Consumer) -> None:
                try:
                    member.run(handle, idle_timeout=5.0)
                except BaseException as exc:  # re-raised below, in the test's thread
                    errors.append(exc)

            threads = [threading.Thread(target=work, args=(m,)) for m in members]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=90)
            for m in members:
                m.close()
            assert not errors, errors
            assert not any(t.is_alive() for t in threads)
            missing = sorted(set(sent) - set(seen), key=lambda i: int(i[1:]))
            assert not missing, f"{len(missing)} of {n} never handled, e.g. {missing[:5]}"
            assert set(seen) == set(sent)
            assert [s.backlog for s in mq.stats(topic, "g")] == [0] * 20
        finally:
            for c in own:
                c.close()
            mq.adapter.delete_topic(topic)
            mq.adapter.delete_topic(f"{topic}.dlq")
