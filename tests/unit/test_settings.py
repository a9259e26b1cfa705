"""Settings: from a URL, a dict, a YAML file or the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqkit.errors import ConfigError
from mqkit.policy import Policy
from mqkit.settings import DEFAULT_DATA_DIR, Settings, parse_url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests here decide the MQKIT_* environment themselves."""
    import os

    for name in [n for n in os.environ if n.startswith("MQKIT_")]:
        monkeypatch.delenv(name)


def test_from_url() -> None:
    s = Settings.load("kafka://127.0.0.1:9092")
    assert s.url == "kafka://127.0.0.1:9092"
    p = s.parsed()
    assert p.scheme == "kafka"
    assert p.host == "127.0.0.1"
    assert p.port(1) == 9092
    assert s.connect_timeout == 10.0
    assert s.policy == Policy()


def test_url_parts() -> None:
    p = parse_url("AMQP://guest:s%40cret@rabbit.local:5672/%2F?heartbeat=30&name=")
    assert p.scheme == "amqp"
    assert (p.username, p.password) == ("guest", "s@cret")
    assert p.hosts == [("rabbit.local", 5672)]
    assert p.path == "/"
    assert p.query == {"heartbeat": "30", "name": ""}


def test_default_port_and_no_host() -> None:
    p = parse_url("stomp://broker")
    assert p.port(61613) == 61613
    p = parse_url("memory://")
    assert p.hosts == []
    assert p.host == "127.0.0.1"
    assert p.port(7) == 7


def test_native_path_url() -> None:
    p = parse_url("native:///var/lib/mqkit")
    assert p.scheme == "native"
    assert p.hosts == []
    assert p.path == "var/lib/mqkit"


def test_ipv6_host() -> None:
    assert parse_url("mqkit://[::1]:7600").hosts == [("::1", 7600)]


def test_multi_host_kafka_url() -> None:
    p = parse_url("kafka://k1:9092,k2:9093,k3/?client_id=x")
    assert p.hosts == [("k1", 9092), ("k2", 9093), ("k3", None)]
    assert p.host == "k1"
    assert p.port(9092) == 9092
    assert p.query == {"client_id": "x"}


def test_query_params_become_options_and_explicit_options_win() -> None:
    s = Settings.load({"url": "memory://x?session_timeout=3&flag=on", "options": {"flag": "off"}})
    assert s.all_options() == {"session_timeout": "3", "flag": "off"}
    assert Settings.load("kafka://h:1?acks=all").all_options() == {"acks": "all"}


def test_from_dict() -> None:
    s = Settings.load(
        {
            "url": "memory://d",
            "connect_timeout": 2.5,
            "client_id": "svc",
            "max_message_size": 1000,
            "policy": {"max_attempts": 3, "backoff": [0.01, 2, 1], "ordering": "per_key"},
        }
    )
    assert s.connect_timeout == 2.5
    assert s.client_id == "svc"
    assert s.max_message_size == 1000
    assert s.policy.max_attempts == 3
    assert s.policy.backoff == (0.01, 2.0, 1.0)
    assert s.policy.ordering == "per_key"


def test_settings_object_passes_through() -> None:
    s = Settings(url="memory://")
    assert Settings.load(s) is s


def test_from_yaml_file(tmp_path: Path) -> None:
    f = tmp_path / "mq.yaml"
    f.write_text(
        "url: amqp://guest:guest@127.0.0.1:5672/%2F\nconnect_timeout: 3\npolicy:\n  ttl: 60\n"
    )
    s = Settings.load(f)
    assert s.parsed().scheme == "amqp"
    assert s.connect_timeout == 3.0
    assert s.policy.ttl == 60.0
    assert Settings.load(str(f)) == s


def test_yaml_file_with_mqkit_section(tmp_path: Path) -> None:
    f = tmp_path / "app.yml"
    f.write_text("mqkit:\n  url: kafka://k:9092\n  client_id: app\n")
    s = Settings.load(f)
    assert (s.url, s.client_id) == ("kafka://k:9092", "app")


def test_empty_yaml_file_is_the_defaults(tmp_path: Path) -> None:
    f = tmp_path / "empty.yaml"
    f.write_text("")
    assert Settings.load(f).url == ""


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- url: memory://\n", "must hold a mapping"),
        ("url: [unclosed\n", "not valid YAML"),
        ("url: memory://\nbogus: 1\n", "bogus"),
        ("url: memory://\nconnect_timeout: 0\n", "connect_timeout"),
        ("url: 'memory://?x'\n", "query string"),
        ("url: memory://\npolicy:\n  max_attempts: 0\n", "policy.max_attempts"),
    ],
)
def test_bad_yaml_file(tmp_path: Path, text: str, fragment: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        Settings.load(f)
    assert fragment in str(info.value)


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"neither a URL .* nor an existing YAML file"):
        Settings.load(tmp_path / "nope.yaml")


def test_env_url_and_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQKIT_URL", "stomp://amq:61613")
    monkeypatch.setenv("MQKIT_CONNECT_TIMEOUT", "4.5")
    s = Settings.load(None)
    assert s.url == "stomp://amq:61613"
    assert s.connect_timeout == 4.5
    # explicit values beat the environment, the rest still comes from it
    s2 = Settings.load("kafka://k:9092")
    assert s2.url == "kafka://k:9092"
    assert s2.connect_timeout == 4.5


def test_env_bad_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQKIT_CONNECT_TIMEOUT", "soon")
    with pytest.raises(ConfigError) as info:
        Settings.load(None)
    assert info.value.field == "connect_timeout"
    monkeypatch.setenv("MQKIT_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("MQKIT_URL", "kafak")
    with pytest.raises(ConfigError) as info:
        Settings.load(None)
    assert info.value.field == "url"
    assert "scheme://" in str(info.value)


def test_no_url_means_the_embedded_native_broker() -> None:
    s = Settings.load(None)
    assert s.url == ""
    url = s.effective_url()
    assert url.startswith("native:///")
    assert url.endswith(DEFAULT_DATA_DIR)
    assert s.parsed().scheme == "native"


@pytest.mark.parametrize(
    ("source", "field", "fragment"),
    [
        ({"url": "memory://", "bogus": 1}, "bogus", "known settings"),
        ({"connect_timeout": -1}, "connect_timeout", "greater than 0"),
        ({"client_id": ""}, "client_id", "at least 1"),
        ({"max_message_size": 0}, "max_message_size", "greater than 0"),
        ({"policy": {"prefetch": 0}}, "policy.prefetch", "greater than or equal to 1"),
        ({"policy": {"nope": 1}}, "policy.nope", "nope"),
        ({"url": "h:9092"}, "url", "no scheme"),
        ({"url": "amqp://h:0"}, "url", "between 1 and 65535"),
        ({"url": "amqp://:5672"}, "url", "host is missing"),
        ({"url": "k@fka://h"}, "url", "not valid"),
    ],
)
def test_bad_settings_name_the_field(source: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(source)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_settings_are_frozen() -> None:
    s = Settings.load("memory://")
    with pytest.raises(ValueError, match="frozen"):
        s.url = "kafka://h"
