"""The public surface: everything in mqkit.__all__ exists, nothing private leaks."""

from __future__ import annotations

import importlib

import pytest

import mqkit


def test_all_names_are_importable() -> None:
    for name in mqkit.__all__:
        assert hasattr(mqkit, name), name
        exec(f"from mqkit import {name}", {})  # the form users write


def test_all_has_no_duplicates() -> None:
    assert len(set(mqkit.__all__)) == len(mqkit.__all__)


def test_nothing_private_is_exported() -> None:
    private = [n for n in mqkit.__all__ if n.startswith("_") and n != "__version__"]
    assert private == []


def test_exported_objects_say_they_are_mqkit_s() -> None:
    for name in mqkit.__all__:
        obj = getattr(mqkit, name)
        module = getattr(obj, "__module__", None)
        if module is not None and isinstance(obj, type | type(mqkit.connect)):
            assert module.startswith("mqkit"), (name, module)


@pytest.mark.parametrize(
    "name",
    [
        "connect",
        "Client",
        "Policy",
        "Settings",
        "Message",
        "Receipt",
        "Delivery",
        "Consumer",
        "Producer",
        "MQError",
        "ConfigError",
        "ConnectionLost",
        "PublishError",
        "Unsupported",
        "UnknownBackend",
        "MissingDriver",
        "MessageTooLarge",
        "PayloadError",
        "DeliveryStateError",
        "Closed",
        "Capabilities",
        "Reject",
        "__version__",
    ],
)
def test_contract_names_are_public(name: str) -> None:
    assert name in mqkit.__all__


def test_every_error_is_an_mqerror() -> None:
    errors = [getattr(mqkit, n) for n in mqkit.__all__]
    errors = [e for e in errors if isinstance(e, type) and issubclass(e, Exception)]
    for e in errors:
        if e is not mqkit.Reject:
            assert issubclass(e, mqkit.MQError), e


@pytest.mark.parametrize(
    "module",
    [
        "mqkit.errors",
        "mqkit.message",
        "mqkit.policy",
        "mqkit.settings",
        "mqkit.registry",
        "mqkit.codecs",
        "mqkit.capabilities",
        "mqkit.adapter",
        "mqkit.client",
        "mqkit.producer",
        "mqkit.consumer",
        "mqkit.delivery",
        "mqkit.policies.retry",
        "mqkit.policies.deadletter",
        "mqkit.policies.ttl",
        "mqkit.policies.confirm",
        "mqkit.policies.dedupe",
        "mqkit.broker.engine",
        "mqkit.broker.log",
        "mqkit.backends.engine",
        "mqkit.backends.memory",
    ],
)
def test_module_all_lists_only_existing_public_names(module: str) -> None:
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    assert names is not None, f"{module} has no __all__"
    for name in names:
        assert hasattr(mod, name), f"{module}.__all__ names missing {name!r}"
        assert not name.startswith("_"), f"{module}.__all__ exports private {name!r}"


def test_version_matches_package_metadata() -> None:
    from importlib.metadata import version

    assert mqkit.__version__ == version("mqkit")
