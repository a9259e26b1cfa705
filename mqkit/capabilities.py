"""What each backend can do, as data: ``mq.capabilities``.

Every feature of the contract is ``native`` (the broker does it), ``emulated``
(mqkit does it above the broker, documented in ``notes``) or ``unsupported``
(using it raises :class:`~mqkit.errors.Unsupported`).  The README's matrix is
generated from these objects, so docs and behaviour cannot drift apart.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict

__all__ = ["FEATURES", "Capabilities", "Support"]


class Support(str, Enum):
    NATIVE = "native"
    EMULATED = "emulated"
    UNSUPPORTED = "unsupported"


FEATURES: dict[str, str] = {
    "confirm": "send returns after the broker accepted (C2)",
    "persistent": "confirmed messages survive a broker kill -9 (C3)",
    "manual_ack": "unacked deliveries are redelivered (C4)",
    "attempt_count": "Delivery.attempt counts redeliveries across consumers",
    "retry_backoff": "failed handlers retried with backoff (C5)",
    "dead_letter": "<topic>.dlq with reason headers (C5, C10)",
    "replay": "dead letters moved back (C6)",
    "dedupe": "an id is handled once (C7)",
    "per_key_ordering": "a key's messages handled in order (C8)",
    "groups": "every group gets every message; members share (C9)",
    "partitions": "a topic has several partitions or lanes",
    "ttl": "expired messages dead-lettered with reason expired (C10)",
    "delay": "delayed delivery (C11)",
    "prefetch": "in-flight deliveries per consumer bounded (C13)",
}


class Capabilities(BaseModel):
    """Per-feature support of one backend, with a note where it is emulated."""

    model_config = ConfigDict(frozen=True)

    backend: str
    confirm: Support = Support.NATIVE
    persistent: Support = Support.NATIVE
    manual_ack: Support = Support.NATIVE
    attempt_count: Support = Support.NATIVE
    retry_backoff: Support = Support.EMULATED
    dead_letter: Support = Support.EMULATED
    replay: Support = Support.EMULATED
    dedupe: Support = Support.EMULATED
    per_key_ordering: Support = Support.NATIVE
    groups: Support = Support.NATIVE
    partitions: Support = Support.NATIVE
    ttl: Support = Support.EMULATED
    delay: Support = Support.NATIVE
    prefetch: Support = Support.NATIVE
    max_message_size: int = 1024 * 1024
    notes: dict[str, str] = {}

    def supports(self, feature: str) -> bool:
        return self.level(feature) is not Support.UNSUPPORTED

    def level(self, feature: str) -> Support:
        if feature not in FEATURES:
            raise KeyError(f"unknown feature {feature!r}; known: {', '.join(FEATURES)}")
        value: Support = getattr(self, feature)
        return value

    def as_row(self) -> dict[str, str]:
        return {f: self.level(f).value for f in FEATURES}
