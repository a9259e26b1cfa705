"""Smoke tests of the real brokers with the raw drivers (no mqkit code involved).

They prove that what docker/brokers starts is usable the way mqkit's adapters use it.
Start the brokers with ``docker/brokers up all`` (CI does it through tests/brokers_plugin).
"""

from __future__ import annotations

import importlib
import os
import queue
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.brokers_plugin import HOST, RUNNER, BrokerControl, broker_port, in_ci

pytestmark = pytest.mark.timeout(240)


def driver(module: str) -> ModuleType:
    """Import a broker driver: a missing one fails under CI and skips elsewhere."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        msg = f"driver {module} is not installed ({exc}): pip install -e '.[all]'"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# ----------------------------------------------------------------------------- redis


@pytest.mark.redis
def test_redis_set_get(broker_urls: dict[str, str]) -> None:
    redis = driver("redis")
    client = redis.Redis.from_url(broker_urls["redis"])
    key = unique("mqkit:smoke")
    assert client.set(key, b"value")
    assert client.get(key) == b"value"
    assert client.config_get("appendfsync") == {"appendfsync": "always"}
    client.delete(key)
    client.close()


@pytest.mark.redis
@pytest.mark.fault
def test_redis_survives_kill9(broker_urls: dict[str, str], broker_control: BrokerControl) -> None:
    redis = driver("redis")
    client = redis.Redis.from_url(broker_urls["redis"])
    key = unique("mqkit:durable")
    assert client.set(key, b"kept")  # appendfsync always: on disk before the reply
    client.close()
    broker_control.kill9("redis")
    broker_control.restart("redis")
    client = redis.Redis.from_url(broker_urls["redis"])
    assert client.get(key) == b"kept"
    client.delete(key)
    client.close()


# ----------------------------------------------------------------------------- rabbitmq


@pytest.mark.rabbitmq
def test_rabbitmq_confirm_get_ack(broker_urls: dict[str, str]) -> None:
    pika = driver("pika")
    conn = pika.BlockingConnection(pika.URLParameters(broker_urls["rabbitmq"]))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        q = unique("mqkit.smoke")
        ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
        # with confirms, basic_publish returns after the broker's ack (raises on nack or,
        # with mandatory=True, when unroutable)
        ch.basic_publish(
            exchange="",
            routing_key=q,
            body=b"hello",
            properties=pika.BasicProperties(delivery_mode=2, headers={"h": "v"}),
            mandatory=True,
        )
        with pytest.raises(pika.exceptions.UnroutableError):
            ch.basic_publish(exchange="", routing_key=unique("nowhere"), body=b"x", mandatory=True)
        method, props, body = ch.basic_get(q, auto_ack=False)
        assert method is not None
        assert body == b"hello"
        assert props.headers["h"] == "v"  # quorum queues add x-delivery-count
        ch.basic_ack(method.delivery_tag)
        assert ch.basic_get(q, auto_ack=False) == (None, None, None)
        ch.queue_delete(q)
    finally:
        conn.close()


# ----------------------------------------------------------------------------- activemq


class _StompCollector:
    """stomp.py listener collecting frames into queues."""

    def __init__(self) -> None:
        self.messages: queue.Queue[Any] = queue.Queue()
        self.receipts: queue.Queue[str] = queue.Queue()
        self.errors: queue.Queue[Any] = queue.Queue()

    def on_message(self, frame: Any) -> None:
        self.messages.put(frame)

    def on_receipt(self, frame: Any) -> None:
        self.receipts.put(frame.headers.get("receipt-id", ""))

    def on_error(self, frame: Any) -> None:
        self.errors.put(frame)


def _stomp_connect() -> tuple[Any, _StompCollector]:
    stomp = driver("stomp")
    conn = stomp.Connection12([(HOST, broker_port("activemq"))], heartbeats=(0, 0))
    listener = _StompCollector()
    conn.set_listener("collector", listener)
    conn.connect(wait=True)
    return conn, listener


def _send_with_receipt(conn: Any, listener: _StompCollector, dest: str, body: str,
                       **headers: str) -> None:  # fmt: skip
    receipt = unique("r")
    conn.send(dest, body, headers={"persistent": "true", "receipt": receipt, **headers})
    assert listener.receipts.get(timeout=10) == receipt, "no RECEIPT for a persistent SEND"


@pytest.mark.activemq
def test_activemq_stomp_receipt_subscribe_ack() -> None:
    conn, listener = _stomp_connect()
    dest = f"/queue/{unique('mqkit.smoke')}"
    try:
        _send_with_receipt(conn, listener, dest, "hello", h="v")
        conn.subscribe(dest, id="1", ack="client-individual")
        frame = listener.messages.get(timeout=10)
        assert frame.body == "hello"
        assert frame.headers["h"] == "v"
        assert frame.headers["persistent"] == "true"
        conn.ack(frame.headers["ack"])
        with pytest.raises(queue.Empty):
            listener.messages.get(timeout=1)
        assert listener.errors.empty()
    finally:
        conn.disconnect()


@pytest.mark.activemq
@pytest.mark.slow
def test_activemq_nack_redelivers_and_expired_go_to_dlq() -> None:
    """What docker/activemq/activemq.xml promises: NACK -> redelivery after a back-off
    (redeliveryPlugin), expired -> DLQ.<queue> (individualDeadLetterStrategy)."""
    conn, listener = _stomp_connect()
    name = unique("mqkit.smoke")
    try:
        _send_with_receipt(conn, listener, f"/queue/{name}", "poison")
        conn.subscribe(f"/queue/{name}", id="1", ack="client-individual")
        first = listener.messages.get(timeout=10)
        nacked_at = time.monotonic()
        conn.nack(first.headers["ack"])
        again = listener.messages.get(timeout=15)
        waited = time.monotonic() - nacked_at
        assert again.body == "poison"
        assert again.headers["message-id"] == first.headers["message-id"]
        assert again.headers.get("redelivered") == "true"
        assert waited >= 0.8, f"redelivered after {waited:.2f}s: no back-off"
        conn.ack(again.headers["ack"])
        conn.unsubscribe(id="1")

        expiring = unique("mqkit.smoke.ttl")
        expires = str(int(time.time() * 1000) + 500)
        _send_with_receipt(conn, listener, f"/queue/{expiring}", "late", expires=expires)
        time.sleep(2.5)  # expireMessagesPeriod is 1 s
        conn.subscribe(f"/queue/DLQ.{expiring}", id="2", ack="client-individual")
        dead = listener.messages.get(timeout=15)
        assert dead.body == "late"
        conn.ack(dead.headers["ack"])
    finally:
        conn.disconnect()


# ----------------------------------------------------------------------------- kafka


@pytest.mark.kafka
def test_kafka_admin_produce_consume() -> None:
    kafka = driver("kafka")
    admin_mod = driver("kafka.admin")
    bootstrap = f"{HOST}:{broker_port('kafka')}"
    topic = unique("mqkit-smoke")
    admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap, client_id="mqkit-smoke")
    try:
        admin.create_topics([admin_mod.NewTopic(topic, num_partitions=2, replication_factor=1)])
        producer = kafka.KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        meta = producer.send(topic, key=b"k", value=b"v", headers=[("h", b"1")]).get(timeout=30)
        assert meta.offset == 0
        producer.close()
        consumer = kafka.KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=unique("mqkit-smoke-g"),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        got: list[Any] = []
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(records)
        assert [(r.key, r.value, r.headers) for r in got] == [(b"k", b"v", [("h", b"1")])]
        consumer.commit()
        consumer.close()
        admin.delete_topics([topic])
    finally:
        admin.close()


# ----------------------------------------------------------------------------- rocketmq


def _brokers(*args: str) -> str:
    res = subprocess.run(
        [sys.executable, str(RUNNER), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, f"docker/brokers {' '.join(args)}: {res.stdout}{res.stderr}"
    return res.stdout


def _rocketmq_helpers() -> ModuleType:
    docker_dir = str(Path(RUNNER).parent)
    if docker_dir not in sys.path:
        sys.path.insert(0, docker_dir)
    return importlib.import_module("host.rocketmq")


def _rmq_clients(topic: str, group: str, await_s: int = 2) -> tuple[Any, Any]:
    rocketmq = driver("rocketmq")
    cfg = rocketmq.ClientConfiguration(
        f"{HOST}:{broker_port('rocketmq')}", rocketmq.Credentials(), request_timeout=10
    )
    producer = rocketmq.Producer(cfg, (topic,))
    producer.startup()
    consumer = rocketmq.SimpleConsumer(
        cfg, group, {topic: rocketmq.FilterExpression()}, await_duration=await_s
    )
    consumer.startup()
    return producer, consumer


def _receive_until(consumer: Any, match: str, invisible_s: int, within: float) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for msg in consumer.receive(16, invisible_s):
            if msg.body == match.encode():
                return msg
    return None


@pytest.mark.rocketmq
def test_rocketmq_produce_simple_consume() -> None:
    rocketmq = driver("rocketmq")
    topic, group = unique("mqkit_smoke"), unique("mqkit_smoke_g")
    # the CLI helpers (MQAdminStartup) -- what users run
    assert "success" in _brokers("rocketmq-topic", topic, "--type", "NORMAL")
    assert "success" in _brokers("rocketmq-group", group, "--retries", "3")
    producer, consumer = _rmq_clients(topic, group)
    try:
        msg = rocketmq.Message()
        msg.topic = topic
        msg.body = b"hello"
        msg.tag = "smoke"
        msg.keys = "k1"
        receipt = producer.send(msg)
        assert receipt.message_id
        got = _receive_until(consumer, "hello", 15, within=60)
        assert got is not None, "message not received"
        assert got.tag == "smoke"
        assert got.delivery_attempt == 1
        consumer.ack(got)
    finally:
        producer.shutdown()
        consumer.shutdown()


@pytest.mark.rocketmq
@pytest.mark.slow
@pytest.mark.parametrize("topic_type", ["NORMAL", "FIFO"])
def test_rocketmq_unacked_message_is_redelivered(topic_type: str) -> None:
    """rocketmq-clients#1344 reports unacked messages never coming back (client 5.1.1,
    server 5.5.0). Here: client 5.1.2 against proxy 5.3.3, normal and FIFO topics."""
    rocketmq = driver("rocketmq")
    helpers = _rocketmq_helpers()
    topic, group = unique("mqkit_redeliver"), unique("mqkit_redeliver_g")
    fifo = topic_type == "FIFO"
    # the importable helpers (remoting protocol, no JVM) -- what an adapter calls
    helpers.update_topic(topic, topic_type)
    helpers.update_group(group, fifo=fifo, retries=5)
    producer, consumer = _rmq_clients(topic, group)
    try:
        msg = rocketmq.Message()
        msg.topic = topic
        msg.body = b"retry-me"
        if fifo:
            msg.message_group = "g1"
        producer.send(msg)
        first = _receive_until(consumer, "retry-me", 3, within=60)
        assert first is not None, "message not received"
        assert first.delivery_attempt == 1
        t0 = time.monotonic()
        # not acked: it must come back once the 3 s invisible duration is over
        again = _receive_until(consumer, "retry-me", 3, within=40)
        assert again is not None, "unacked message was not redelivered within 40 s"
        waited = time.monotonic() - t0
        assert again.message_id == first.message_id
        assert again.delivery_attempt == 2
        assert waited >= 1.5, f"redelivered after {waited:.1f}s, before its invisible time"
        consumer.ack(again)
    finally:
        producer.shutdown()
        consumer.shutdown()


def test_runner_is_executable() -> None:
    assert os.access(RUNNER, os.X_OK)
    res = subprocess.run(
        [str(RUNNER), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert res.returncode == 0
    assert "rocketmq-topic" in res.stdout


def test_status_runs_without_brokers(tmp_path: Path) -> None:
    env = dict(os.environ, MQKIT_BROKERS_DIR=str(tmp_path))
    res = subprocess.run(
        [sys.executable, str(RUNNER), "status", "--json"],
        capture_output=True, text=True, timeout=30, check=False, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "stopped" in res.stdout
