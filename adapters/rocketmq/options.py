"""Options of ``rocketmq://`` URLs, validated once; a typo names the option."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mqkit.errors import ConfigError
from mqkit.settings import Settings

__all__ = ["DEFAULT_NAMESRV_PORT", "DEFAULT_PORT", "RocketMQOptions", "load_options"]

DEFAULT_PORT = 8081
DEFAULT_NAMESRV_PORT = 9876


class RocketMQOptions(BaseModel):
    """Every option a ``rocketmq://`` URL (query string) or ``Settings.options`` may set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- connection --------------------------------------------------------------------
    access_key: str = ""
    secret_key: str = ""
    tls: bool = False
    request_timeout: int = Field(default=3, ge=1, le=300)

    # -- admin (declare) ---------------------------------------------------------------
    admin: bool = True
    namesrv: str | None = None
    brokers: str | None = None
    cluster: str | None = None
    topic_type: Literal["auto", "MIXED", "NORMAL", "FIFO", "DELAY"] = "auto"
    queues: int = Field(default=4, ge=1, le=1024)
    max_redeliveries: int = Field(default=100, ge=1, le=100_000)
    group_id_format: str = "{topic}:{group}"

    # -- consumer ----------------------------------------------------------------------
    invisible_time: int = Field(default=15, ge=2, le=12 * 3600)
    long_polling: int = Field(default=1, ge=1, le=30)
    max_batch: int = Field(default=32, ge=1, le=1024)

    @field_validator("topic_type", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        if isinstance(v, str) and v.lower() != "auto":
            return v.upper()
        return v

    @field_validator("namesrv")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is not None:
            host, _, port = v.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{v!r} must be host:port, e.g. 127.0.0.1:9876")
        return v

    @field_validator("brokers")
    @classmethod
    def _broker_list(cls, v: str | None) -> str | None:
        if v is not None:
            for item in v.split(","):
                host, _, port = item.strip().rpartition(":")
                if not host or not port.isdigit():
                    raise ValueError(f"{item!r} must be host:port, e.g. 127.0.0.1:10911")
        return v

    @field_validator("group_id_format")
    @classmethod
    def _group_format(cls, v: str) -> str:
        if "{group}" not in v:
            raise ValueError("must contain {group} (and may contain {topic}), e.g. {topic}:{group}")
        try:
            v.format(topic="t", group="g")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{topic}} and {{group}} may appear: {exc}") from None
        return v

    def broker_list(self) -> list[str] | None:
        return [b.strip() for b in self.brokers.split(",")] if self.brokers else None


def load_options(settings: Settings) -> RocketMQOptions:
    """Validate ``settings.all_options()`` (URL credentials become the access key/secret)."""
    raw = dict(settings.all_options())
    raw.pop("adapter", None)
    parsed = settings.parsed()
    if parsed.username and "access_key" not in raw:
        raw["access_key"] = parsed.username
    if parsed.password and "secret_key" not in raw:
        raw["secret_key"] = parsed.password
    try:
        return RocketMQOptions.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "is not a rocketmq option; known options: " + ", ".join(
                RocketMQOptions.model_fields
            )
        raise ConfigError(msg, field=f"options.{name}" if name else "options") from None
