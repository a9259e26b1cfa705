"""The backend registry: lazy, with did-you-mean, install hints and plugins."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import mqkit
from mqkit import registry
from mqkit.adapter import Adapter
from mqkit.backends.memory import MemoryAdapter, reset
from mqkit.errors import ConfigError, MissingDriver, UnknownBackend
from tests.helpers.flaky_adapter import FlakyAdapter

FLAKY = "tests.helpers.flaky_adapter:FlakyAdapter"


@pytest.fixture
def memory_name() -> Iterator[str]:
    name = uuid.uuid4().hex
    warnings.simplefilter("ignore")
    yield name
    reset(name)


def test_memory_builtin_resolves() -> None:
    assert registry.resolve("memory") is MemoryAdapter


def _module_present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("scheme", sorted(registry.BUILTIN))
def test_every_builtin_resolves_or_says_it_is_not_installed(scheme: str) -> None:
    target = registry.BUILTIN[scheme]
    module, _, cls_name = target.partition(":")
    assert module.startswith("mqkit.")
    assert cls_name
    if not _module_present(module) or not hasattr(importlib.import_module(module), cls_name):
        with pytest.raises(UnknownBackend, match="not part of this installation"):
            registry.resolve(scheme)
        return
    cls = registry.resolve(scheme)
    assert issubclass(cls, Adapter)
    assert cls.__name__ == cls_name


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("kafak", "kafka"),
        ("memroy", "memory"),
        ("amqq", "amqp"),
        ("stmop", "stomp"),
        ("rocketqm", "rocketmq"),
        ("natve", "native"),
    ],
)
def test_unknown_scheme_suggests_the_closest(typo: str, meant: str) -> None:
    with pytest.raises(UnknownBackend) as info:
        registry.resolve(typo)
    assert f"Did you mean {meant!r}?" in str(info.value)
    assert info.value.field == "url"
    assert isinstance(info.value, ConfigError)


def test_unknown_scheme_without_a_close_match_lists_known_schemes() -> None:
    with pytest.raises(UnknownBackend) as info:
        registry.resolve("zzzzzz")
    text = str(info.value)
    assert "Did you mean" not in text
    assert "Known schemes:" in text
    for scheme in ("kafka", "memory", "amqp", "stomp", "rocketmq", "native"):
        assert scheme in text


def test_connect_with_typo_scheme() -> None:
    with pytest.raises(UnknownBackend, match="Did you mean 'kafka'"):
        mqkit.connect("kafak://127.0.0.1:9092")


def _block_driver(monkeypatch: pytest.MonkeyPatch, driver: str) -> None:
    """Make ``import driver`` fail as if the package were not installed."""
    for name in [n for n in sys.modules if n == driver or n.startswith(driver + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, driver, None)


@pytest.mark.parametrize("scheme", sorted(registry.DRIVERS))
def test_missing_driver_gives_the_pip_hint(
    scheme: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    driver, package, extra = registry.DRIVERS[scheme]
    module = f"fake_adapter_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(f"import {driver}\n\nclass Adapter:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.BUILTIN, scheme, f"{module}:Adapter")
    _block_driver(monkeypatch, driver)
    with pytest.raises(MissingDriver) as info:
        registry.resolve(scheme)
    err = info.value
    assert f'pip install "mqkit[{extra}]"' in str(err)
    assert package in str(err)
    assert (err.backend, err.package, err.extra) == (scheme, package, extra)
    assert isinstance(err, ImportError)
    assert isinstance(err, mqkit.MQError)


@pytest.mark.parametrize("scheme", sorted(registry.DRIVERS))
def test_real_adapter_without_its_driver(scheme: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped adapter modules turn a missing driver into MissingDriver on connect."""
    module, _, cls_name = registry.BUILTIN[scheme].partition(":")
    url = f"{scheme}://127.0.0.1:1"
    if not _module_present(module) or not hasattr(importlib.import_module(module), cls_name):
        with pytest.raises(UnknownBackend, match="not part of this installation"):
            mqkit.connect(url)
        return
    driver, _, extra = registry.DRIVERS[scheme]
    for name in [n for n in sys.modules if n == module or n.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    _block_driver(monkeypatch, driver)
    with pytest.raises(MissingDriver, match=rf'pip install "mqkit\[{extra}\]"'):
        mqkit.connect({"url": url, "connect_timeout": 0.5})


def test_entry_point_registers_a_backend(monkeypatch: pytest.MonkeyPatch, memory_name: str) -> None:
    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        assert group == "mqkit.adapters"
        return [EntryPoint(name="acme", value=FLAKY, group=group)]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    assert registry.available()["acme"] == FLAKY
    assert registry.resolve("acme") is FlakyAdapter
    with pytest.raises(UnknownBackend, match="Did you mean 'acme'"):
        registry.resolve("acne")
    with mqkit.connect(f"acme://{memory_name}") as mq:
        assert isinstance(mq.adapter, FlakyAdapter)
        assert mq.producer().send("t", b"ok").confirmed


def test_options_adapter_overrides_the_scheme(memory_name: str) -> None:
    with mqkit.connect({"url": f"memory://{memory_name}", "options": {"adapter": FLAKY}}) as mq:
        assert type(mq.adapter) is FlakyAdapter
    with mqkit.connect(f"memory://{memory_name}?adapter={FLAKY}") as mq:
        assert type(mq.adapter) is FlakyAdapter


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("tests.helpers.flaky_adapter", "package.module:Class"),
        ("tests.helpers.flaky_adapter:NoSuchClass", "NoSuchClass"),
        ("tests.helpers.no_such_module:X", "tests.helpers.no_such_module"),
        ("no_such_package_xyz.mod:X", "no_such_package_xyz.mod"),
        ("collections:OrderedDict", "Adapter"),
    ],
)
def test_bad_override_is_a_config_error(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        registry.resolve("memory", override)
    assert fragment in str(info.value)
    assert info.value.field == "adapter"


def test_core_imports_no_driver() -> None:
    code = (
        "import sys, warnings; warnings.simplefilter('ignore'); import mqkit; "
        "mq = mqkit.connect('memory://'); mq.producer().send('t', b'x'); mq.close(); "
        "print(sorted(m for m in ('kafka', 'pika', 'stomp', 'rocketmq', 'redis') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
