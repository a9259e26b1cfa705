"""The reliability policy: one pydantic model, with defaults that are safe, not fast."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["Policy"]


class Policy(BaseModel):
    """How a producer sends and a consumer handles messages.

    The defaults give at-least-once delivery with no silent loss: confirmed,
    persistent sends; ack only after the handler succeeded; five attempts with
    exponential backoff, then a dead letter with the reason.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    confirm: bool = True
    persistent: bool = True
    ack: Literal["manual", "auto"] = "manual"
    dedupe: Any = Field(
        default=None,
        description="None, a Redis URL ('redis://host:port/db'), 'memory://', or a DedupeStore",
    )
    ordering: Literal["none", "per_key"] = "none"
    max_attempts: int = Field(default=5, ge=1, le=10_000)
    backoff: tuple[float, float, float] = (0.1, 2.0, 30.0)
    dead_letter: bool = True
    ttl: float | None = Field(default=None, gt=0)
    prefetch: int = Field(default=100, ge=1, le=100_000)
    dedupe_ttl: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="how long a handled id is remembered"
    )
    serial_lock: Any = Field(
        default=None,
        description="None, a Redis URL ('redis://host:port/db') or a SerialLock: a "
        "distributed lock per key held around the handler, so one key is handled by one "
        "application instance at a time (needs ordering='per_key')",
    )
    processing_timeout: float = Field(
        default=300.0,
        gt=0,
        description="how long a dedupe 'processing' marker is trusted before the run is "
        "considered crashed and the message may be handled again",
    )

    @field_validator("backoff")
    @classmethod
    def _check_backoff(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        initial, multiplier, maximum = v
        if initial < 0 or maximum < 0:
            raise ValueError("backoff seconds must be >= 0, e.g. (0.1, 2.0, 30.0)")
        if multiplier < 1:
            raise ValueError("backoff multiplier must be >= 1, e.g. (0.1, 2.0, 30.0)")
        if maximum < initial:
            raise ValueError("backoff max must be >= initial, e.g. (0.1, 2.0, 30.0)")
        return v

    @field_validator("dedupe")
    @classmethod
    def _check_dedupe(cls, v: Any) -> Any:
        if v is None or not isinstance(v, str):
            return v
        if not (v.startswith(("redis://", "rediss://", "unix://")) or v == "memory://"):
            raise ValueError(
                f"dedupe must be a Redis URL like 'redis://127.0.0.1:6379/0' or 'memory://', "
                f"got {v!r}"
            )
        return v

    @field_validator("serial_lock")
    @classmethod
    def _check_serial_lock(cls, v: Any) -> Any:
        if v is None:
            return v
        if isinstance(v, str):
            if not v.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(
                    f"serial_lock must be a Redis URL like 'redis://127.0.0.1:6379/0', got {v!r}"
                )
            return v
        from mqkit.policies.serial_lock import SerialLock

        if not isinstance(v, SerialLock):
            raise ValueError(
                f"serial_lock must be a Redis URL or a RedisSerialLock, not {type(v).__name__}"
            )
        return v

    @model_validator(mode="after")
    def _check_combination(self) -> Policy:
        if self.ack == "auto" and self.dedupe is not None:
            raise ValueError("ack='auto' acks on receipt (at-most-once); dedupe needs ack='manual'")
        if self.serial_lock is not None and self.ordering != "per_key":
            raise ValueError("serial_lock serialises a key's handlers: it needs ordering='per_key'")
        return self
