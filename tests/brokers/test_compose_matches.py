"""docker/compose.yml must run the same brokers as the host runner (docker/versions.json)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.brokers_plugin import REPO_ROOT, load_versions

DOCKER = REPO_ROOT / "docker"
SERVICES = {
    "redis": ["redis"],
    "rabbitmq": ["rabbitmq"],
    "activemq": ["activemq"],
    "kafka": ["kafka"],
    "rocketmq": ["rocketmq-namesrv", "rocketmq-proxy"],
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yml").read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def versions() -> dict[str, dict[str, Any]]:
    return load_versions()


def services(compose: dict[str, Any], broker: str) -> list[dict[str, Any]]:
    return [compose["services"][name] for name in SERVICES[broker]]


def published(service: dict[str, Any]) -> set[tuple[str, int, int]]:
    out: set[tuple[str, int, int]] = set()
    for spec in service.get("ports", []):
        host_ip, host_port, container_port = str(spec).split(":")
        out.add((host_ip, int(host_port), int(container_port)))
    return out


def env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        return dict(str(item).split("=", 1) for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


def test_every_broker_has_its_services(
    compose: dict[str, Any], versions: dict[str, dict[str, Any]]
) -> None:
    assert set(versions) == set(SERVICES)
    for broker in versions:
        for name in SERVICES[broker]:
            assert name in compose["services"], f"compose.yml lacks service {name}"


@pytest.mark.parametrize("broker", list(SERVICES))
def test_images_match_versions(
    compose: dict[str, Any], versions: dict[str, dict[str, Any]], broker: str
) -> None:
    spec = versions[broker]
    for service in services(compose, broker):
        assert service["image"] == spec["image"]
    tag = spec["image"].rsplit(":", 1)[1]
    major_minor = ".".join(spec["version"].split(".")[:2])
    assert tag.startswith(major_minor), f"{broker}: image {tag} is not the {major_minor} line"
    if tag.split("-")[0] != spec["version"]:
        assert spec.get("image_note"), f"{broker}: image {tag} != {spec['version']}, say why"


@pytest.mark.parametrize("broker", list(SERVICES))
def test_ports_are_published_on_loopback(
    compose: dict[str, Any], versions: dict[str, dict[str, Any]], broker: str
) -> None:
    ports: set[tuple[str, int, int]] = set()
    for service in services(compose, broker):
        ports |= published(service)
    for name, port in versions[broker]["ports"].items():
        assert ("127.0.0.1", port, port) in ports, f"{broker} {name} port {port} not published"
    url_port = int(versions[broker]["url"].rsplit(":", 1)[1].split("/", 1)[0])
    assert url_port in versions[broker]["ports"].values()


def test_redis_settings(compose: dict[str, Any], versions: dict[str, dict[str, Any]]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command == ["redis-server", *versions["redis"]["args"]]


def test_kafka_settings(compose: dict[str, Any], versions: dict[str, dict[str, Any]]) -> None:
    kenv = env(compose["services"]["kafka"])
    for key, value in versions["kafka"]["settings"].items():
        name = "KAFKA_" + key.upper().replace(".", "_")
        assert kenv.get(name) == str(value), f"compose kafka {name} != {key}={value}"
    assert "-Xmx512m" in kenv["KAFKA_HEAP_OPTS"]


def test_rabbitmq_settings(compose: dict[str, Any], versions: dict[str, dict[str, Any]]) -> None:
    service = compose["services"]["rabbitmq"]
    mounts = " ".join(service["volumes"])
    assert "./rabbitmq/rabbitmq.conf:" in mounts
    assert "./rabbitmq/enabled_plugins:" in mounts
    enabled = (DOCKER / "rabbitmq" / "enabled_plugins").read_text()
    for plugin in versions["rabbitmq"]["plugins"]:
        assert plugin in enabled


def test_activemq_settings(compose: dict[str, Any], versions: dict[str, dict[str, Any]]) -> None:
    service = compose["services"]["activemq"]
    assert any(v.startswith("./activemq/activemq.xml:") for v in service["volumes"])
    assert "-Xmx256m" in env(service)["ACTIVEMQ_OPTS"]
    xml = (DOCKER / "activemq" / "activemq.xml").read_text()
    for port in versions["activemq"]["ports"].values():
        assert f":{port}?" in xml
    for needed in (
        'schedulerSupport="true"',
        "individualDeadLetterStrategy",
        "redeliveryPlugin",
        'processExpired="true"',
        'processNonPersistent="true"',
        'queuePrefix="DLQ."',
    ):
        assert needed in xml


def test_rocketmq_settings(compose: dict[str, Any], versions: dict[str, dict[str, Any]]) -> None:
    ports = versions["rocketmq"]["ports"]
    conf = (DOCKER / "rocketmq" / "broker.conf").read_text()
    assert re.search(rf"^listenPort={ports['broker']}$", conf, re.M)
    assert re.search(r"^flushDiskType=SYNC_FLUSH$", conf, re.M)
    assert re.search(rf"^brokerClusterName={versions['rocketmq']['cluster']}$", conf, re.M)
    proxy = json.loads((DOCKER / "rocketmq" / "rmq-proxy.json").read_text())
    assert proxy["grpcServerPort"] == ports["proxy_grpc"]
    assert proxy["remotingListenPort"] == ports["proxy_remoting"]
    command = compose["services"]["rocketmq-proxy"]["command"]
    assert command[command.index("-pm") + 1] == "local"
    assert command[command.index("-n") + 1] == f"rocketmq-namesrv:{ports['namesrv']}"
    for path in ("broker.conf", "rmq-proxy.json"):
        mounts = compose["services"]["rocketmq-proxy"]["volumes"]
        assert any(str(m).startswith(f"./rocketmq/{path}:") for m in mounts)


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("./"):
                assert (DOCKER / source).is_file(), f"compose mounts missing {source}"


def test_versions_file_is_the_runners_source() -> None:
    """The host runner reads docker/versions.json (not constants of its own)."""
    common = (DOCKER / "host" / "common.py").read_text()
    assert 'VERSIONS_FILE = DOCKER_DIR / "versions.json"' in common
    for module in ("kafka", "rocketmq", "redis", "rabbitmq", "activemq"):
        text = (DOCKER / "host" / f"{module}.py").read_text()
        assert not re.search(r"\b(4\.3\.0|5\.3\.3|7\.0\.15|3\.10\.8|5\.17\.2)\b", text), module
