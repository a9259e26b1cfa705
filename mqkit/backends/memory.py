"""In-process backend: ``memory://`` (or ``memory://name`` for a separate broker).

Features
    The native broker's queue semantics -- partitions, groups, redelivery with
    attempt counts, per-key ordering, delay -- over lists in memory.  Every
    client of one process that opens the same name shares one broker, so a
    producer and a consumer in different threads or clients see each other.
Connection string
    ``memory://`` or ``memory://<name>``; ``?session_timeout=30``.
Options
    ``session_timeout`` seconds before a silent consumer loses its leases.
Limits
    Nothing survives the process: ``persistent=True`` is accepted so
    application code runs unchanged in tests, and a warning says it is not
    honoured (capability ``persistent: unsupported``).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mqkit.adapter import PublishOutcome
from mqkit.backends.engine import EngineAdapter
from mqkit.broker.engine import Engine
from mqkit.broker.log import MemoryLog
from mqkit.capabilities import Capabilities, Support
from mqkit.errors import ConfigError
from mqkit.message import Record

__all__ = ["MemoryAdapter", "MemoryOptions", "reset"]

_brokers: dict[str, Engine] = {}
_lock = threading.Lock()


def reset(name: str | None = None) -> None:
    """Forget one named in-memory broker (or all): for test isolation."""
    with _lock:
        for key in [name] if name is not None else list(_brokers):
            engine = _brokers.pop(key, None)
            if engine is not None:
                engine.close()


class MemoryOptions(BaseModel):
    """URL query parameters / ``options`` of ``memory://``; a typo is an error."""

    model_config = ConfigDict(extra="forbid")

    session_timeout: float = Field(default=30.0, gt=0)


class MemoryAdapter(EngineAdapter):
    scheme = "memory"
    capabilities = Capabilities(
        backend="memory",
        persistent=Support.UNSUPPORTED,
        max_message_size=16 * 1024 * 1024,
        notes={
            "persistent": "messages live in process memory; persistent=True is accepted and "
            "warned about, not honoured",
            "retry_backoff": "in the consumer: the message stays leased, its key's lane waits",
            "ttl": "checked when the message reaches a consumer; expired -> <topic>.dlq",
        },
    )

    def open(self) -> None:
        parsed = self.settings.parsed()
        name = parsed.host if parsed.hosts else (parsed.path or "default")
        opts = self.settings.all_options()
        opts.pop("adapter", None)
        try:
            o = MemoryOptions.model_validate(opts)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(
                f"{err['msg']} (memory options: {', '.join(MemoryOptions.model_fields)})",
                field="options." + ".".join(str(x) for x in err["loc"]),
            ) from None
        self._warned = False
        with _lock:
            engine = _brokers.get(name)
            if engine is None or engine._closed:
                engine = Engine(MemoryLog, session_timeout=o.session_timeout)
                _brokers[name] = engine
            self._engine = engine

    def publish(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        confirm: bool,
        persistent: bool,
        delay: float | None = None,
    ) -> list[PublishOutcome]:
        if persistent and not self._warned:
            self._warned = True
            warnings.warn(
                "memory:// keeps messages in process memory only: persistent=True is not "
                "honoured (use native:// or a real broker where it matters)",
                stacklevel=4,
            )
        return super().publish(topic, records, confirm=confirm, persistent=persistent, delay=delay)

    def close(self) -> None:
        """The named broker stays for other clients of the process; see :func:`reset`."""
