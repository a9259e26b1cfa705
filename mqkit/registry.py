"""Backends by name: URL scheme -> ``module:Class``, resolved lazily.

Nothing here imports a driver: the adapter module is imported only when a URL
with its scheme is used, so ``mqkit[rabbitmq]`` users never import kafka.
Third parties register through the ``mqkit.adapters`` entry point group, or
pass a full ``package.module:Class`` path as ``options["adapter"]``.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from mqkit.errors import ConfigError, MissingDriver, UnknownBackend

if TYPE_CHECKING:
    from mqkit.adapter import Adapter

__all__ = ["BUILTIN", "available", "resolve"]

BUILTIN: dict[str, str] = {
    "memory": "mqkit.backends.memory:MemoryAdapter",
    "native": "mqkit.backends.native:NativeAdapter",
    "mqkit": "mqkit.backends.native_server:NativeServerAdapter",
    "mqkits": "mqkit.backends.native_server:NativeServerAdapter",
    "kafka": "mqkit.adapters.kafka:KafkaAdapter",
    "amqp": "mqkit.adapters.rabbitmq:RabbitMQAdapter",
    "amqps": "mqkit.adapters.rabbitmq:RabbitMQAdapter",
    "stomp": "mqkit.adapters.activemq:ActiveMQAdapter",
    "stomp+ssl": "mqkit.adapters.activemq:ActiveMQAdapter",
    "rocketmq": "mqkit.adapters.rocketmq:RocketMQAdapter",
}

# scheme -> (driver's import name, PyPI package, mqkit extra)
DRIVERS: dict[str, tuple[str, str, str]] = {
    "kafka": ("kafka", "kafka-python", "kafka"),
    "amqp": ("pika", "pika", "rabbitmq"),
    "amqps": ("pika", "pika", "rabbitmq"),
    "stomp": ("stomp", "stomp-py", "activemq"),
    "stomp+ssl": ("stomp", "stomp-py", "activemq"),
    "rocketmq": ("rocketmq", "rocketmq-python-client", "rocketmq"),
}


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group="mqkit.adapters")}


def available() -> dict[str, str]:
    """Every known scheme and where its adapter lives (built-ins, then plugins)."""
    names = dict(BUILTIN)
    names.update(_entry_points())
    return names


def resolve(scheme: str, override: str | None = None) -> type[Adapter]:
    """The adapter class for ``scheme``; errors say how to fix the URL or install the driver."""
    target = override
    if target is None:
        names = available()
        target = names.get(scheme)
        if target is None:
            close = difflib.get_close_matches(scheme, list(names), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownBackend(
                f"no backend for scheme {scheme!r}.{hint} Known schemes: "
                f"{', '.join(sorted(names))}",
                field="url",
            )
    if ":" not in target:
        raise ConfigError(f"{target!r} must look like 'package.module:Class'", field="adapter")
    module_name, _, class_name = target.partition(":")
    field = "url" if override is None else "adapter"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        driver = DRIVERS.get(scheme)
        if driver and exc.name and exc.name.split(".")[0] == driver[0]:
            raise MissingDriver(scheme, driver[1], driver[2]) from exc
        # The module itself (or a package on its path) is missing, not something it imports.
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UnknownBackend(
                f"the adapter module {module_name!r} for {scheme!r} is not part of this "
                "installation (not written yet, or a plugin that is not installed)",
                field=field,
            ) from exc
        raise
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UnknownBackend(
            f"{module_name} has no class {class_name!r}: the adapter for {scheme!r} is not "
            "part of this installation",
            field=field,
        )
    from mqkit.adapter import Adapter

    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise ConfigError(
            f"{target!r} is not an mqkit adapter (a subclass of mqkit.adapter.Adapter)",
            field=field,
        )
    return cls
