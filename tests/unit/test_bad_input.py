"""C12, bad input: every mistake a user can make is caught early with the exact error
class and a message that names the field or says what to fix -- and nothing is sent."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydantic
import pytest
from pydantic import BaseModel

import mqkit
from mqkit.backends.memory import reset
from mqkit.errors import ConfigError, MessageTooLarge, PayloadError, UnknownBackend
from mqkit.message import DLQ_ATTEMPTS, DLQ_ERROR, DLQ_REASON

TOPIC = "orders"


@dataclass
class Env:
    mq: mqkit.Client
    producer: mqkit.Producer
    tmp: Path
    name: str

    def yaml(self, text: str) -> Path:
        f = self.tmp / f"{uuid.uuid4().hex}.yaml"
        f.write_text(text)
        return f


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    name = uuid.uuid4().hex
    warnings.simplefilter("ignore")
    mq = mqkit.connect(f"memory://{name}")
    mq.declare(TOPIC, groups=["watch"])
    try:
        yield Env(mq, mq.producer(), tmp_path, name)
    finally:
        mq.close()
        reset(name)


def _connect(source: object) -> Callable[[Env], object]:
    return lambda e: mqkit.connect(source)  # type: ignore[arg-type]


def _send(**kwargs: object) -> Callable[[Env], object]:
    value = kwargs.pop("value", b"v")
    topic = kwargs.pop("topic", TOPIC)
    return lambda e: e.producer.send(topic, value, **kwargs)  # type: ignore[arg-type]


def _declare_twice(e: Env, topic: str, first: int, second: int) -> None:
    e.mq.declare(topic, partitions=first)
    e.mq.declare(topic, partitions=second)


VE = pydantic.ValidationError

# (case id, action, exact error class, text the message must contain)
CASES: list[tuple[str, Callable[[Env], object], type[Exception], str]] = [
    # -- URLs and settings: connect() raises mqkit errors, never pydantic's or a KeyError
    ("url-empty", _connect(""), ConfigError, "scheme://"),
    ("url-no-scheme", _connect("kafka"), ConfigError, "scheme://"),
    ("url-typo-scheme", _connect("kafak://h:9092"), UnknownBackend, "Did you mean 'kafka'?"),
    ("url-unknown-scheme", _connect("zmq://h:1"), UnknownBackend, "Known schemes"),
    ("url-port-range", _connect("amqp://h:99999"), ConfigError, "between 1 and 65535"),
    ("url-port-text", _connect("amqp://h:abc"), ConfigError, "port 'abc'"),
    ("url-no-host", _connect("amqp://:5672"), ConfigError, "host is missing"),
    ("url-bad-query", _connect("memory://?x"), ConfigError, "query string 'x'"),
    ("url-control-char", _connect("memory://a\tb"), ConfigError, "control characters"),
    (
        "url-unknown-option",
        _connect("memory://x?sesion_timeout=3"),
        ConfigError,
        "options.sesion_timeout",
    ),
    (
        "url-bad-option-value",
        _connect("memory://x?session_timeout=abc"),
        ConfigError,
        "options.session_timeout",
    ),
    (
        "url-option-range",
        _connect("memory://x?session_timeout=0"),
        ConfigError,
        "options.session_timeout",
    ),
    (
        "settings-unknown-key",
        _connect({"url": "memory://", "timeout": 1}),
        ConfigError,
        "timeout: is not a setting; known settings: url",
    ),
    (
        "settings-timeout-negative",
        _connect({"url": "memory://", "connect_timeout": -1}),
        ConfigError,
        "connect_timeout",
    ),
    (
        "settings-client-id-empty",
        _connect({"url": "memory://", "client_id": ""}),
        ConfigError,
        "client_id",
    ),
    (
        "settings-policy-field",
        _connect({"url": "memory://", "policy": {"max_attempts": 0}}),
        ConfigError,
        "policy.max_attempts",
    ),
    ("settings-bad-url-in-dict", _connect({"url": "memory:/x"}), ConfigError, "url"),
    (
        "connect-override-unknown",
        lambda e: mqkit.connect("memory://", retries=3),
        ConfigError,
        "retries: is not a setting",
    ),
    (
        "yaml-is-a-list",
        lambda e: mqkit.connect(e.yaml("- url: memory://\n")),
        ConfigError,
        "must hold a mapping",
    ),
    ("yaml-broken", lambda e: mqkit.connect(e.yaml("url: [\n")), ConfigError, "not valid YAML"),
    ("yaml-missing", lambda e: mqkit.connect(e.tmp / "nope.yaml"), ConfigError, "neither a URL"),
    (
        "yaml-bad-field",
        lambda e: mqkit.connect(e.yaml("url: memory://\nconnect_timeout: x\n")),
        ConfigError,
        "connect_timeout",
    ),
    # -- Policy: pydantic's ValidationError (a ValueError) naming the field is accepted
    ("policy-max-attempts-0", lambda e: mqkit.Policy(max_attempts=0), VE, "max_attempts"),
    (
        "policy-backoff-shrinks",
        lambda e: mqkit.Policy(backoff=(1, 0.5, 10)),
        VE,
        "multiplier must be >= 1",
    ),
    (
        "policy-backoff-max-lt-initial",
        lambda e: mqkit.Policy(backoff=(5, 2, 1)),
        VE,
        "max must be >= initial",
    ),
    ("policy-backoff-negative", lambda e: mqkit.Policy(backoff=(-1, 2, 1)), VE, ">= 0"),
    (
        "policy-dedupe-http",
        lambda e: mqkit.Policy(dedupe="http://x"),
        VE,
        "dedupe must be a Redis URL",
    ),
    (
        "policy-auto-ack-dedupe",
        lambda e: mqkit.Policy(ack="auto", dedupe="memory://"),
        VE,
        "dedupe needs ack='manual'",
    ),
    ("policy-ordering", lambda e: mqkit.Policy(ordering="per-key"), VE, "ordering"),  # type: ignore[arg-type]
    ("policy-prefetch-0", lambda e: mqkit.Policy(prefetch=0), VE, "prefetch"),
    ("policy-ttl-0", lambda e: mqkit.Policy(ttl=0), VE, "ttl"),
    ("policy-unknown-field", lambda e: mqkit.Policy(retries=3), VE, "retries"),  # type: ignore[call-arg]
    (
        "producer-policy-dict",
        lambda e: e.mq.producer(policy={"confirm": True}),  # type: ignore[arg-type]
        ConfigError,
        "mqkit.Policy",
    ),
    (
        "consumer-policy-str",
        lambda e: e.mq.consumer(TOPIC, policy="manual"),  # type: ignore[arg-type]
        ConfigError,
        "mqkit.Policy",
    ),
    # -- send arguments
    ("topic-empty", _send(topic=""), ConfigError, "topic: '' is not a valid topic name"),
    ("topic-space", _send(topic="a b"), ConfigError, "letters, digits"),
    ("topic-300-chars", _send(topic="t" * 300), ConfigError, "1-200 characters"),
    ("topic-not-str", _send(topic=5), ConfigError, "topic"),
    ("topic-dotdot", _send(topic=".."), ConfigError, "topic"),
    ("header-value-int", _send(headers={"n": 1}), ConfigError, "convert values with str()"),
    ("header-key-int", _send(headers={1: "x"}), ConfigError, "headers"),
    (
        "header-reserved",
        _send(headers={"x-mqkit-id": "forged"}),
        ConfigError,
        "reserved prefix 'x-mqkit-'",
    ),
    ("headers-list", _send(headers=[("h", "v")]), ConfigError, "headers: must be a dict"),
    ("key-int", _send(key=42), ConfigError, "key: must be a str"),
    ("id-empty", _send(id=""), ConfigError, "id: must be a non-empty str"),
    ("id-too-long", _send(id="i" * 257), ConfigError, "at most 256"),
    ("id-int", _send(id=7), ConfigError, "id"),
    ("ttl-zero", _send(ttl=0), ConfigError, "ttl: must be seconds > 0"),
    ("ttl-negative", _send(ttl=-5.0), ConfigError, "ttl"),
    ("ttl-text", _send(ttl="60"), ConfigError, "ttl"),
    ("ttl-bool", _send(ttl=True), ConfigError, "ttl: must be seconds > 0"),
    ("delay-negative", _send(delay=-1), ConfigError, "delay: must be seconds >= 0"),
    ("delay-bool", _send(delay=True), ConfigError, "delay: must be seconds >= 0"),
    ("value-object", _send(value=object()), PayloadError, "pydantic model"),
    ("value-set", _send(value={1, 2}), PayloadError, "JSON-compatible"),
    ("value-nan", _send(value=float("nan")), PayloadError, "JSON"),
    (
        "value-17MiB",
        _send(value=b"x" * (17 * 1024 * 1024)),
        MessageTooLarge,
        "accepts at most 16777216",
    ),
    (
        "batch-one-too-large",
        lambda e: e.producer.send_many(TOPIC, [b"ok", b"x" * (17 * 1024 * 1024)]),
        MessageTooLarge,
        "raise max_message_size",
    ),
    (
        "batch-one-bad-header",
        lambda e: e.producer.send_many(
            TOPIC,
            [b"ok", mqkit.OutgoingMessage(b"x", headers={"n": 2})],  # type: ignore[dict-item]
        ),
        ConfigError,
        "headers",
    ),
    # -- declare and consumer arguments
    (
        "declare-partitions-0",
        lambda e: e.mq.declare("p0", partitions=0),
        ConfigError,
        "partitions: must be an int >= 1",
    ),
    (
        "declare-partitions-float",
        lambda e: e.mq.declare("p1", partitions=2.5),  # type: ignore[arg-type]
        ConfigError,
        "partitions",
    ),
    (
        "declare-partitions-bool",
        lambda e: e.mq.declare("p2", partitions=True),
        ConfigError,
        "partitions: must be an int >= 1",
    ),
    (
        "declare-groups-string",
        lambda e: e.mq.declare("g1", groups="billing"),
        ConfigError,
        "groups: must be a list of group names",
    ),
    (
        "declare-bad-group",
        lambda e: e.mq.declare("g2", groups=["ok", "not ok"]),
        ConfigError,
        "groups",
    ),
    ("declare-bad-topic", lambda e: e.mq.declare("a/b"), ConfigError, "topic"),
    (
        "declare-other-partitions",
        lambda e: _declare_twice(e, "np", 2, 3),
        ConfigError,
        "already has 2 partitions",
    ),
    (
        "consumer-bad-group",
        lambda e: e.mq.consumer(TOPIC, group="bad group"),
        ConfigError,
        "group: 'bad group' is not a valid",
    ),
    ("consumer-bad-topic", lambda e: e.mq.consumer("", group="g"), ConfigError, "topic"),
]


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 25
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("action", "error", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input(
    env: Env, action: Callable[[Env], object], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(Exception) as info:  # noqa: PT011 - the exact class is checked below
        action(env)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert fragment in str(info.value)
    if error is not pydantic.ValidationError:
        assert isinstance(info.value, mqkit.MQError)
    if isinstance(info.value, ConfigError) and not isinstance(info.value, UnknownBackend):
        assert info.value.field, "a ConfigError names the field it is about"
    # nothing reached the broker
    [stats] = env.mq.stats(TOPIC, "watch")
    assert stats.backlog == 0


def test_oversize_is_refused_before_sending(env: Env) -> None:
    big = b"x" * (17 * 1024 * 1024)
    with pytest.raises(MessageTooLarge):
        env.producer.send(TOPIC, big, id="big")
    env.producer.send(TOPIC, b"small", id="small")
    got = [d.message.id for d in env.mq.consumer(TOPIC, group="watch").iter(timeout=0.3)]
    assert got == ["small"]


def test_max_message_size_setting_lowers_the_limit() -> None:
    name = uuid.uuid4().hex
    warnings.simplefilter("ignore")
    with mqkit.connect({"url": f"memory://{name}", "max_message_size": 1000}) as mq:
        mq.producer().send("t", b"x" * 500)
        with pytest.raises(MessageTooLarge, match="at most 1000"):
            mq.producer().send("t", b"x" * 2000)
    reset(name)


class Order(BaseModel):
    id: int
    qty: int


def test_invalid_payload_is_dead_lettered_not_a_crash(env: Env) -> None:
    env.mq.declare("shop", groups=["billing"])
    p = env.producer
    p.send("shop", {"id": 1, "qty": 2}, id="good-1")
    p.send("shop", {"id": "one", "qty": 2}, id="bad-type")
    p.send("shop", b"\x00 not json", id="bad-bytes")
    p.send("shop", "plain text", id="bad-text")
    p.send("shop", {"id": 2, "qty": 5}, id="good-2")
    handled: list[Order] = []

    def handler(order: Order) -> None:
        handled.append(order)

    stats = env.mq.consumer("shop", group="billing").run(handler, idle_timeout=0.5)
    assert handled == [Order(id=1, qty=2), Order(id=2, qty=5)]
    assert stats.dead_lettered == 3
    assert stats.retried == 0  # invalid is never retried
    dead = {d.message.id: d.message for d in env.mq.consumer("shop.dlq").iter(timeout=0.3)}
    assert set(dead) == {"bad-type", "bad-bytes", "bad-text"}
    for m in dead.values():
        assert m.headers[DLQ_REASON] == "invalid"
        assert m.headers[DLQ_ERROR].startswith("PayloadError: payload does not validate as Order")
        assert m.headers[DLQ_ATTEMPTS] == "1"
    assert dead["bad-bytes"].value == b"\x00 not json"
