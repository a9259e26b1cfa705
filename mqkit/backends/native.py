"""The embedded native broker: ``native:///path/to/data`` (the default of ``connect()``).

Features
    Everything in the contract natively: partitioned append-only logs on disk,
    consumer groups with leases, attempt counts, per-key ordering by partition
    ownership, delay; confirm = on disk (group-commit fsync) with the default
    ``fsync=always``.
Connection string
    ``native:///abs/path`` or ``native://relative/path``; options as query
    parameters, e.g. ``native:///var/lib/mqkit?fsync=interval``.
Options
    ``fsync`` (always | interval | never), ``fsync_interval`` seconds,
    ``segment_bytes``, ``retention_bytes``, ``retention_seconds``,
    ``preallocate_bytes`` (the disk each partition's active segment reserves ahead
    of its writes, which makes a one-record fsync ~1.5x cheaper; default 1 MiB,
    0 turns it off), ``session_timeout`` seconds before a silent consumer loses
    its leases.
Limits
    One process owns a data directory (a file lock says so); to share one
    broker between processes run ``mqkit broker serve`` and use ``mqkit://``.
    One machine only: outgrow it by switching the URL to Kafka or RocketMQ.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mqkit.backends.engine import EngineAdapter
from mqkit.broker.engine import Engine
from mqkit.broker.log import PREALLOCATE_BYTES
from mqkit.capabilities import Capabilities
from mqkit.errors import ConfigError

__all__ = ["NativeAdapter", "NativeOptions", "data_dir_of"]

NATIVE_CAPABILITIES = Capabilities(
    backend="native",
    max_message_size=16 * 1024 * 1024,
    notes={
        "confirm": "send returns after the records are on disk (fsync=always, group commit)",
        "retry_backoff": "in the consumer: the message stays leased, its key's lane waits",
        "ttl": "checked when the message reaches a consumer; expired -> <topic>.dlq",
    },
)


class NativeOptions(BaseModel):
    """Options of ``native://`` URLs; a typo is an error naming the option."""

    model_config = ConfigDict(extra="forbid")

    fsync: Literal["always", "interval", "never"] = "always"
    fsync_interval: float = Field(default=0.05, gt=0)
    segment_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    retention_bytes: int | None = Field(default=None, gt=0)
    retention_seconds: float | None = Field(default=None, gt=0)
    preallocate_bytes: int = Field(default=PREALLOCATE_BYTES, ge=0)
    session_timeout: float = Field(default=30.0, gt=0)


def data_dir_of(url: str) -> Path:
    """``native:///abs`` -> /abs, ``native://rel/dir`` -> ./rel/dir (query stripped)."""
    rest = url.split("://", 1)[1].split("?", 1)[0]
    if not rest:
        raise ConfigError(
            "native:// needs a data directory, e.g. native:///var/lib/mqkit", field="url"
        )
    return Path(rest).resolve()


class _Shared:
    """One engine per data directory per process, shared by every client that opens it."""

    def __init__(self, engine: Engine, storage: Any) -> None:
        self.engine = engine
        self.storage = storage
        self.users = 0


_open: dict[Path, _Shared] = {}
_open_lock = threading.Lock()


class NativeAdapter(EngineAdapter):
    scheme = "native"
    capabilities = NATIVE_CAPABILITIES

    def open(self) -> None:
        from mqkit.broker.storage import Storage

        url = self.settings.effective_url()
        path = data_dir_of(url)
        opts = self.settings.all_options()
        opts.pop("adapter", None)
        try:
            o = NativeOptions.model_validate(opts)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = ".".join(str(x) for x in err["loc"])
            raise ConfigError(
                f"{err['msg']} (native options: {', '.join(NativeOptions.model_fields)})",
                field=f"options.{name}",
            ) from None
        with _open_lock:
            shared = _open.get(path)
            if shared is None:
                storage = Storage(
                    path,
                    fsync=o.fsync,
                    fsync_interval=o.fsync_interval,
                    segment_bytes=o.segment_bytes,
                    retention_bytes=o.retention_bytes,
                    retention_seconds=o.retention_seconds,
                    preallocate_bytes=o.preallocate_bytes,
                )
                engine = Engine(storage.log, storage.state, session_timeout=o.session_timeout)
                shared = _Shared(engine, storage)
                _open[path] = shared
            shared.users += 1
        self._path = path
        self._shared: _Shared | None = shared
        self._engine = shared.engine

    def delete_topic(self, topic: str) -> None:
        """Remove the topic from the engine and its files from disk."""
        assert self._shared is not None
        self._engine.delete_topic(topic)
        self._shared.storage.delete_topic(topic)

    @property
    def recovery_report(self) -> Any:
        assert self._shared is not None
        return self._shared.storage.recovery_report

    def close(self) -> None:
        shared: _Shared | None = getattr(self, "_shared", None)
        self._shared = None
        if shared is None:
            return
        with _open_lock:
            shared.users -= 1
            if shared.users > 0:
                return
            if _open.get(self._path) is shared:
                del _open[self._path]
            else:
                return  # already stopped or abandoned (tests); someone else owns the dir now
        shared.engine.close()
        shared.storage.close()
