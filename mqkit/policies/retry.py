"""Bounded retries: exponential backoff with jitter.

Jitter keeps a burst of failures (a downstream outage) from coming back as a
synchronised burst of retries; "equal jitter" keeps at least half the delay so
the backoff still grows.
"""

from __future__ import annotations

import random

__all__ = ["backoff_delay", "should_retry"]


def backoff_delay(
    attempt: int, backoff: tuple[float, float, float], rng: random.Random | None = None
) -> float:
    """Seconds to wait after failed ``attempt`` (1-based) before the next one."""
    initial, multiplier, maximum = backoff
    try:
        grown = initial * multiplier ** max(0, attempt - 1)
    except OverflowError:  # a late attempt with a big multiplier: past any cap
        grown = maximum if initial > 0 else 0.0
    base = min(maximum, grown)
    r = (rng or random).random()
    return base / 2 + r * base / 2


def should_retry(attempt: int, max_attempts: int) -> bool:
    """True while another attempt is allowed; ``attempt`` is the one that just failed."""
    return attempt < max_attempts
