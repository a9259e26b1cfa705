"""Connection settings: from a URL, a dict, a YAML file or the environment.

``MQKIT_URL`` (and ``MQKIT_<FIELD>`` for every field) configures a process
without code changes; URL query parameters become backend ``options`` that
each adapter validates with its own model, so a typo names the bad option.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mqkit.errors import ConfigError
from mqkit.policy import Policy

__all__ = ["DEFAULT_DATA_DIR", "ParsedURL", "Settings", "parse_url"]

DEFAULT_DATA_DIR = ".mqkit"


@dataclass(frozen=True)
class ParsedURL:
    """A broker URL taken apart; ``hosts`` keeps every ``host:port`` of a list."""

    scheme: str
    hosts: list[tuple[str, int | None]] = field(default_factory=list)
    username: str | None = None
    password: str | None = None
    path: str = ""
    query: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.hosts[0][0] if self.hosts else "127.0.0.1"

    def port(self, default: int) -> int:
        if not self.hosts or self.hosts[0][1] is None:
            return default
        port = self.hosts[0][1]
        assert port is not None
        return port


def parse_url(url: str) -> ParsedURL:
    """Split ``scheme://user:pass@host:port,host:port/path?opt=v``.

    Raises ConfigError naming what is wrong and how to write it.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(
            "is empty; give a broker URL such as 'kafka://127.0.0.1:9092' or 'memory://'",
            field="url",
        )
    url = url.strip()
    if "://" not in url:
        raise ConfigError(
            f"{url!r} has no scheme; write it as scheme://..., e.g. 'amqp://guest:guest@"
            "127.0.0.1:5672/%2F' or 'native:///var/lib/mqkit'",
            field="url",
        )
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if not scheme or not all(c.isalnum() or c in "+-." for c in scheme):
        raise ConfigError(f"scheme {scheme!r} is not valid in {url!r}", field="url")
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    if "?" in netloc:
        netloc, _, query = netloc.partition("?")
    user = password = None
    if "@" in netloc:
        cred, netloc = netloc.rsplit("@", 1)
        user, _, pw = cred.partition(":")
        user = unquote(user) or None
        password = unquote(pw) if pw else None
    hosts: list[tuple[str, int | None]] = []
    for part in filter(None, netloc.split(",")):
        host, port = _split_host(part, url)
        hosts.append((host, port))
    try:
        params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError as exc:
        raise ConfigError(f"query string {query!r} does not parse: {exc}", field="url") from exc
    if any(ord(c) < 32 for c in url):
        raise ConfigError(f"{url!r} contains control characters", field="url")
    return ParsedURL(scheme, hosts, user, password, unquote(path), params)


def _split_host(part: str, url: str) -> tuple[str, int | None]:
    if part.startswith("["):
        host, _, port_s = part[1:].partition("]")
        port_s = port_s.lstrip(":")
    elif part.count(":") == 1:
        host, port_s = part.split(":")
    else:
        host, port_s = part, ""
    if not host:
        raise ConfigError(f"a host is missing in {url!r}", field="url")
    if not port_s:
        return host, None
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ConfigError(
            f"port {port_s!r} in {url!r} is not a number between 1 and 65535", field="url"
        )
    return host, int(port_s)


class Settings(BaseSettings):
    """Everything ``mqkit.connect`` needs; every field also reads ``MQKIT_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="MQKIT_", extra="forbid", frozen=True)

    url: str = Field(default="", description="broker URL; empty = the embedded native broker")
    options: dict[str, Any] = Field(
        default_factory=dict, description="backend options (also from URL query parameters)"
    )
    connect_timeout: float = Field(default=10.0, gt=0, le=3600)
    client_id: str = Field(default="mqkit", min_length=1, max_length=200)
    max_message_size: int | None = Field(
        default=None, gt=0, description="bytes; None = the backend's own limit"
    )
    policy: Policy = Field(default_factory=Policy)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if v:
            parse_url(v)
        return v

    def effective_url(self) -> str:
        return self.url or f"native://{Path(DEFAULT_DATA_DIR).resolve()}"

    def parsed(self) -> ParsedURL:
        return parse_url(self.effective_url())

    def all_options(self) -> dict[str, str | Any]:
        """URL query parameters overlaid by explicit ``options``."""
        merged: dict[str, Any] = dict(self.parsed().query)
        merged.update(self.options)
        return merged

    @classmethod
    def load(cls, source: str | Path | dict[str, Any] | Settings | None = None) -> Settings:
        """Build settings from a URL, a YAML file path, a dict, or (None) the environment."""
        if isinstance(source, Settings):
            return source
        try:
            if source is None:
                return cls()
            if isinstance(source, dict):
                return cls(**source)
            text = str(source)
            if "://" in text:
                return cls(url=text)
            return cls.from_yaml(text)
        except ValidationError as exc:
            raise _config_error(exc) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> Settings:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                f"{str(path)!r} is neither a URL (scheme://...) nor an existing YAML file",
                field="settings",
            )
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {exc}", field="settings") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{p} must hold a mapping like 'url: kafka://127.0.0.1:9092'", field="settings"
            )
        mq = data.get("mqkit", data)
        try:
            return cls(**mq)
        except ValidationError as exc:
            raise _config_error(exc) from None


def _config_error(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "settings"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "is not a setting; known settings: " + ", ".join(Settings.model_fields)
    inner = err.get("ctx", {}).get("error")
    if isinstance(inner, ConfigError):
        return inner
    return ConfigError(msg, field=loc)


def env_url() -> str:
    return os.environ.get("MQKIT_URL", "")
