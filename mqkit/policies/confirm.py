"""Confirm: turn per-record publish outcomes into receipts, or a PublishError.

A batch never fails half-way in silence: the error lists exactly which
records were not confirmed (index, id, cause), and carries the receipts of
those that were, so the caller re-sends only the failed ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from mqkit.adapter import PublishOutcome
from mqkit.errors import PublishError
from mqkit.message import Receipt

__all__ = ["receipts_or_raise"]


def receipts_or_raise(
    topic: str, ids: Sequence[str], outcomes: Sequence[PublishOutcome]
) -> list[Receipt]:
    if len(outcomes) != len(ids):
        raise PublishError(
            f"the adapter returned {len(outcomes)} outcomes for {len(ids)} messages to "
            f"{topic!r}; treat all as unconfirmed and re-send",
            failed=[(i, mid, None) for i, mid in enumerate(ids)],
        )
    receipts: list[Receipt] = []
    failed: list[tuple[int, str, BaseException | None]] = []
    for i, (mid, outcome) in enumerate(zip(ids, outcomes, strict=False)):
        if isinstance(outcome, BaseException):
            failed.append((i, mid, outcome))
        else:
            receipts.append(outcome)
    if failed:
        first = failed[0][2]
        raise PublishError(
            f"{len(failed)} of {len(ids)} message(s) to {topic!r} were not confirmed by the "
            f"broker (first: {type(first).__name__}: {first}); they may not be stored: re-send "
            "them (with the same id, dedupe makes that safe)",
            failed=failed,
            receipts=receipts,
        ) from first
    return receipts
