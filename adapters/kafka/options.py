"""Options of ``kafka://`` URLs, validated once; a typo or an unsafe value names the option.

The model turns into the keyword arguments of kafka-python's clients
(:meth:`KafkaOptions.common`, :meth:`producer`, :meth:`consumer`).  Settings
that would silently turn the idempotent producer off (``acks`` other than
``all``, ``retries=0``, more than 5 requests in flight) are refused here:
kafka-python 3 only logs a warning and drops idempotence, and mqkit's
``confirm`` promise rests on it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mqkit.errors import ConfigError
from mqkit.settings import Settings

__all__ = ["DEFAULT_PORT", "KafkaOptions", "load_options"]

DEFAULT_PORT = 9092


class KafkaOptions(BaseModel):
    """Every option a ``kafka://`` URL (query string) or ``Settings.options`` may set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- security: passed through to kafka-python --------------------------------------
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None
    ) = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = None
    ssl_crlfile: str | None = None
    ssl_check_hostname: bool = True

    # -- producer ----------------------------------------------------------------------
    acks: Literal["all", "-1"] = "all"
    retries: int | None = Field(default=None, ge=1, description="None: until delivery_timeout")
    max_in_flight_requests_per_connection: int = Field(default=5, ge=1, le=5)
    linger_ms: int = Field(default=0, ge=0, le=60_000)
    # A cap per partition batch (kafka-python 3 grows each batch's buffer as records
    # come; nothing is preallocated).  Its default, 16 KiB, fills so fast with linger 0
    # that many appends find a second batch queued and wake the sender thread (a
    # syscall that also hands it the GIL): 0.16 wakeups per record at 100 B, 0.75 at
    # 1 KiB, against ~0.01 with 256 KiB; confirmed batches of 1 KiB records ran ~2x
    # faster.  256 KiB stays well under the broker's max.message.bytes (1 MiB),
    # which applies to a whole batch.
    batch_size: int = Field(default=262_144, ge=0, le=64 * 1024 * 1024)
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    delivery_timeout_ms: int = Field(default=30_000, ge=1_000)
    max_block_ms: int = Field(default=10_000, ge=0)

    # -- consumer ----------------------------------------------------------------------
    group_id_format: str = "{topic}:{group}"
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(default=1_000, ge=100)
    max_poll_interval_ms: int = Field(default=60_000, ge=1_000)
    fetch_max_wait_ms: int = Field(default=500, ge=0)
    max_partition_fetch_bytes: int = Field(default=1024 * 1024, ge=1024)
    commit_interval_ms: int = Field(default=0, ge=0, le=60_000)
    rebalance_drain_ms: int = Field(default=10_000, ge=0)
    max_held: int = Field(default=10_000, ge=1)

    # -- topics (declare) --------------------------------------------------------------
    replication_factor: int | None = Field(default=None, ge=1)
    min_insync_replicas: int | None = Field(default=None, ge=1)
    flush_messages: int | None = Field(default=None, ge=1)

    # -- every client --------------------------------------------------------------------
    request_timeout_ms: int = Field(default=15_000, ge=1_000)
    reconnect_backoff_max_ms: int = Field(default=1_000, ge=50)

    @field_validator("acks", mode="before")
    @classmethod
    def _acks(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if isinstance(v, str) and v.strip().lower() in ("all", "-1"):
            return v.strip().lower()
        raise ValueError(
            f"acks={v!r} would turn off the idempotent producer (kafka-python drops it "
            "silently) and with it mqkit's confirm guarantee; use acks=all (the default)"
        )

    @field_validator("retries", mode="before")
    @classmethod
    def _retries(cls, v: Any) -> Any:
        if v is not None and str(v).strip() == "0":
            raise ValueError(
                "retries=0 would turn off the idempotent producer (kafka-python drops it "
                "silently); leave it unset (retry until delivery_timeout_ms)"
            )
        return v

    @field_validator("max_in_flight_requests_per_connection", mode="before")
    @classmethod
    def _in_flight(cls, v: Any) -> Any:
        try:
            n = int(v)
        except (TypeError, ValueError):
            return v
        if n > 5:
            raise ValueError(
                f"{n} requests in flight would turn off the idempotent producer (kafka-python "
                "drops it silently) and with it per-key order through retries; use 1..5"
            )
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

    @model_validator(mode="after")
    def _consistent(self) -> KafkaOptions:
        if self.delivery_timeout_ms < self.linger_ms + self.request_timeout_ms:
            raise ValueError(
                "delivery_timeout_ms must be >= linger_ms + request_timeout_ms "
                f"({self.delivery_timeout_ms} < {self.linger_ms} + {self.request_timeout_ms})"
            )
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                "heartbeat_interval_ms must be at most a third of session_timeout_ms "
                f"({self.heartbeat_interval_ms} * 3 > {self.session_timeout_ms})"
            )
        if self.fetch_max_wait_ms >= self.request_timeout_ms:
            raise ValueError("fetch_max_wait_ms must be smaller than request_timeout_ms")
        return self

    # -- kafka-python keyword arguments ------------------------------------------------

    def common(self, settings: Settings) -> dict[str, Any]:
        """Connection and security settings shared by the admin, producer and consumers."""
        parsed = settings.parsed()
        hosts = parsed.hosts or [("127.0.0.1", DEFAULT_PORT)]
        servers = [f"{h}:{p or DEFAULT_PORT}" for h, p in hosts]
        user = self.sasl_plain_username or parsed.username
        password = self.sasl_plain_password or parsed.password
        protocol = self.security_protocol
        if protocol is None:
            protocol = "SASL_PLAINTEXT" if user else "PLAINTEXT"
        cfg: dict[str, Any] = {
            "bootstrap_servers": servers,
            "client_id": settings.client_id,
            "security_protocol": protocol,
            "request_timeout_ms": self.request_timeout_ms,
            "bootstrap_timeout_ms": int(settings.connect_timeout * 1000),
            # kafka-python's default (30 s) leaves a client deaf for up to half a
            # minute after a broker comes back; the Java client uses 1 s.
            "reconnect_backoff_max_ms": self.reconnect_backoff_max_ms,
            "ssl_check_hostname": self.ssl_check_hostname,
        }
        if protocol.startswith("SASL"):
            cfg["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            cfg["sasl_plain_username"] = user
            cfg["sasl_plain_password"] = password
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_crlfile"):
            value = getattr(self, name)
            if value is not None:
                cfg[name] = value
        return cfg

    def producer(self, settings: Settings, max_message_size: int) -> dict[str, Any]:
        cfg = self.common(settings)
        cfg.update(
            acks="all",
            enable_idempotence=True,  # explicit: a conflicting setting raises instead of warning
            max_in_flight_requests_per_connection=self.max_in_flight_requests_per_connection,
            linger_ms=self.linger_ms,
            batch_size=self.batch_size,
            compression_type=self.compression_type,
            delivery_timeout_ms=self.delivery_timeout_ms,
            max_block_ms=self.max_block_ms,
            max_request_size=max(1024 * 1024, max_message_size + 64 * 1024),
            allow_auto_create_topics=False,
        )
        if self.retries is not None:
            cfg["retries"] = self.retries
        return cfg

    def consumer(self, settings: Settings, group_id: str, prefetch: int) -> dict[str, Any]:
        cfg = self.common(settings)
        cfg.update(
            group_id=group_id,
            enable_auto_commit=False,
            # Only reached when a group has no committed offset for a partition (mqkit
            # commits one when it creates a group) or the offset fell out of retention:
            # replaying is the side that loses nothing.
            auto_offset_reset="earliest",
            max_poll_records=max(1, prefetch),
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            max_poll_interval_ms=self.max_poll_interval_ms,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            max_partition_fetch_bytes=self.max_partition_fetch_bytes,
            allow_auto_create_topics=False,
        )
        return cfg

    def group_id(self, topic: str, group: str) -> str:
        return self.group_id_format.format(topic=topic, group=group)

    def topic_configs(self) -> dict[str, str]:
        configs: dict[str, str] = {}
        if self.min_insync_replicas is not None:
            configs["min.insync.replicas"] = str(self.min_insync_replicas)
        if self.flush_messages is not None:
            configs["flush.messages"] = str(self.flush_messages)
        return configs


def load_options(settings: Settings) -> KafkaOptions:
    """Validate ``settings.all_options()``; the error names the offending option."""
    raw = dict(settings.all_options())
    raw.pop("adapter", None)
    try:
        return KafkaOptions.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "is not a kafka option; known options: " + ", ".join(KafkaOptions.model_fields)
        raise ConfigError(msg, field=f"options.{name}" if name else "options") from None
