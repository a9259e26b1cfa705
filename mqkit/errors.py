"""The one exception tree of mqkit.

Every error says what went wrong *and what to do about it*; callers catch
``MQError`` for everything, or a subclass for one kind of failure::

    MQError
    ├── ConfigError          bad URL / settings / argument (names the field)
    │   └── UnknownBackend   no adapter for a URL scheme (did-you-mean)
    ├── MissingDriver        the backend's driver is not installed (install hint)
    ├── ConnectionLost       the broker went away and could not be reached again
    ├── PublishError         a send was not confirmed: the message may not be stored
    ├── MessageTooLarge      a message exceeds the backend's limit (raised before sending)
    ├── Unsupported          the backend cannot honour a feature (names both)
    ├── DeliveryStateError   a delivery was settled one way, then another
    ├── PayloadError         a value could not be encoded / decoded / validated
    └── Closed               the client, producer or consumer is already closed
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "Closed",
    "ConfigError",
    "ConnectionLost",
    "DeliveryStateError",
    "MQError",
    "MessageTooLarge",
    "MissingDriver",
    "PayloadError",
    "PublishError",
    "UnknownBackend",
    "Unsupported",
]


class MQError(Exception):
    """Base class of every error mqkit raises on purpose."""


class ConfigError(MQError, ValueError):
    """A URL, setting or argument is wrong; ``field`` names it."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class UnknownBackend(ConfigError):
    """No adapter is registered for a URL scheme."""


class MissingDriver(MQError, ImportError):
    """An optional driver is not installed; the message has the pip command."""

    def __init__(self, backend: str, package: str, extra: str) -> None:
        self.backend = backend
        self.package = package
        self.extra = extra
        super().__init__(
            f"the {backend} backend needs the '{package}' package, which is not installed; "
            f'install it with: pip install "mqkit[{extra}]"'
        )


class ConnectionLost(MQError, ConnectionError):
    """The broker could not be reached (after the configured reconnect attempts)."""


class PublishError(MQError):
    """A send was not confirmed by the broker; the message may not be stored.

    ``failed`` lists ``(index, message_id, cause)`` for each message of a batch
    that was not confirmed, so a caller can re-send exactly those.
    """

    def __init__(
        self,
        message: str,
        *,
        failed: Sequence[tuple[int, str, BaseException | None]] = (),
        receipts: Sequence[Any] = (),
    ) -> None:
        self.failed = list(failed)
        self.receipts = list(receipts)
        super().__init__(message)


class MessageTooLarge(ConfigError):
    """A message is larger than the backend accepts; nothing was sent."""


class Unsupported(MQError, NotImplementedError):
    """A backend cannot honour a feature; says which and what to use instead."""

    def __init__(self, backend: str, feature: str, hint: str = "") -> None:
        self.backend = backend
        self.feature = feature
        text = f"the {backend} backend does not support {feature}"
        super().__init__(f"{text}; {hint}" if hint else text)


class DeliveryStateError(MQError):
    """A delivery was already settled one way and is now settled another way."""


class PayloadError(MQError, ValueError):
    """A payload could not be encoded, decoded or validated."""


class Closed(MQError):
    """The client, producer or consumer was closed; create a new one."""
