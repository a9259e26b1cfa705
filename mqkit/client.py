"""``mqkit.connect`` and the client it returns."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mqkit.adapter import Adapter, TopicStats
from mqkit.capabilities import Capabilities
from mqkit.consumer import Consumer
from mqkit.errors import Closed, ConfigError, Unsupported
from mqkit.policies.deadletter import dlq_topic
from mqkit.policy import Policy
from mqkit.producer import Producer, check_topic
from mqkit.registry import resolve
from mqkit.settings import Settings

if TYPE_CHECKING:
    from mqkit.aio import AsyncClient

__all__ = ["Client", "connect"]


def _check_policy(policy: object) -> None:
    if policy is not None and not isinstance(policy, Policy):
        raise ConfigError(
            f"must be a mqkit.Policy, e.g. mqkit.Policy(confirm=True), not {type(policy).__name__}",
            field="policy",
        )


def connect(
    source: str | Path | dict[str, Any] | Settings | None = None, **overrides: Any
) -> Client:
    """Open a client: a URL, a YAML file, a dict, Settings, or (None) ``MQKIT_URL``.

    With nothing configured it opens the embedded native broker in ``./.mqkit``.
    """
    settings = Settings.load(source)
    if overrides:
        settings = Settings.load({**settings.model_dump(exclude_unset=True), **overrides})
    client = Client(settings)
    client.open()
    return client


class Client:
    """A connection to one backend; hands out producers and consumers (thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        parsed = settings.parsed()
        self.scheme = parsed.scheme
        override = settings.all_options().get("adapter")
        cls = resolve(parsed.scheme, override if isinstance(override, str) else None)
        self.adapter: Adapter = cls(settings)
        self._declared: set[str] = set()
        self._lock = threading.Lock()
        self._children: list[Producer | Consumer] = []
        self._closed = False
        self._aio: AsyncClient | None = None

    def open(self) -> None:
        self.adapter.open()

    @property
    def capabilities(self) -> Capabilities:
        return self.adapter.capabilities

    @property
    def max_message_size(self) -> int:
        return self.settings.max_message_size or self.capabilities.max_message_size

    @property
    def default_policy(self) -> Policy:
        return self.settings.policy

    def declare(
        self,
        topic: str,
        *,
        partitions: int | None = None,
        groups: Sequence[str] = (),
        ordered: bool = False,
    ) -> None:
        """Create ``topic`` and its groups (idempotent), and ``<topic>.dlq`` with group default."""
        self._check_open()
        check_topic(topic)
        if isinstance(groups, str):
            raise ConfigError("must be a list of group names, not one string", field="groups")
        for g in groups:
            check_topic(g, field="groups")
        if partitions is not None and (
            isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1
        ):
            raise ConfigError(f"must be an int >= 1, got {partitions!r}", field="partitions")
        self.adapter.declare(topic, partitions=partitions, groups=list(groups), ordered=ordered)
        if not topic.endswith(".dlq"):
            self.adapter.declare(
                dlq_topic(topic), partitions=None, groups=["default"], ordered=False
            )
        with self._lock:
            self._declared.add(topic)

    def ensure_topic(self, topic: str) -> None:
        """Declare a topic the first time this client uses it."""
        if topic in self._declared:
            return
        self.declare(topic)

    def producer(self, policy: Policy | None = None) -> Producer:
        self._check_open()
        _check_policy(policy)
        p = Producer(self, policy or self.default_policy)
        with self._lock:
            self._children.append(p)
        return p

    def consumer(
        self, topic: str, group: str = "default", policy: Policy | None = None
    ) -> Consumer:
        self._check_open()
        check_topic(topic)
        check_topic(group, field="group")
        _check_policy(policy)
        policy = policy or self.default_policy
        if policy.ordering == "per_key" and not self.capabilities.supports("per_key_ordering"):
            raise Unsupported(self.scheme, "ordering='per_key'")
        self.ensure_topic(topic)
        c = Consumer(self, topic, group, policy)
        with self._lock:
            self._children.append(c)
        return c

    def stats(self, topic: str, group: str = "default") -> list[TopicStats]:
        self._check_open()
        return self.adapter.stats(topic, group)

    @property
    def aio(self) -> AsyncClient:
        """The asyncio facade over this same client."""
        from mqkit.aio import AsyncClient

        if self._aio is None:
            self._aio = AsyncClient(self)
        return self._aio

    def close(self) -> None:
        """Close consumers (handing back held messages), producers, then the connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            children = list(self._children)
        # Every child and the connection are closed even when one of them fails;
        # the first failure is raised afterwards.
        first: Exception | None = None
        for child in reversed(children):
            try:
                child.close()
            except Exception as exc:
                first = first or exc
        try:
            self.adapter.close()
        except Exception as exc:
            first = first or exc
        if first is not None:
            raise first

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("this mqkit client is closed; call mqkit.connect() again")

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mqkit.Client {self.scheme}>"
