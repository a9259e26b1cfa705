"""Retry policy: bounded attempts, exponential backoff with equal jitter."""

from __future__ import annotations

import random

import pytest

from mqkit.policies.retry import backoff_delay, should_retry

BACKOFF = (0.1, 2.0, 30.0)


class _Fixed(random.Random):
    """A Random whose ``random()`` always returns ``value``: pins the jitter."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_base_delay_grows_exponentially() -> None:
    top = [backoff_delay(a, BACKOFF, _Fixed(1.0)) for a in range(1, 6)]
    assert top == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])


def test_delay_is_capped_by_max() -> None:
    assert backoff_delay(50, BACKOFF, _Fixed(1.0)) == pytest.approx(30.0)
    assert backoff_delay(10_000, (1.0, 10.0, 5.0), _Fixed(1.0)) == pytest.approx(5.0)
    for attempt in range(1, 200):
        assert backoff_delay(attempt, (0.5, 3.0, 7.0)) <= 7.0


@pytest.mark.parametrize("attempt", [1, 2, 3, 7, 40])
def test_jitter_stays_within_half_and_full_base(attempt: int) -> None:
    base = min(30.0, 0.1 * 2.0 ** (attempt - 1))
    rng = random.Random(attempt)
    for _ in range(500):
        d = backoff_delay(attempt, BACKOFF, rng)
        assert base / 2 <= d <= base
    assert backoff_delay(attempt, BACKOFF, _Fixed(0.0)) == pytest.approx(base / 2)


def test_jitter_actually_varies() -> None:
    rng = random.Random(1)
    assert len({backoff_delay(3, BACKOFF, rng) for _ in range(50)}) > 10


def test_seeded_random_is_deterministic() -> None:
    a = [backoff_delay(n, BACKOFF, random.Random(42)) for n in range(1, 10)]
    b = [backoff_delay(n, BACKOFF, random.Random(42)) for n in range(1, 10)]
    assert a == b
    r1, r2 = random.Random(7), random.Random(7)
    assert [backoff_delay(2, BACKOFF, r1) for _ in range(20)] == [
        backoff_delay(2, BACKOFF, r2) for _ in range(20)
    ]


def test_zero_initial_means_no_wait() -> None:
    assert backoff_delay(3, (0.0, 2.0, 10.0), random.Random(0)) == 0.0


def test_attempt_zero_or_negative_uses_initial() -> None:
    assert backoff_delay(0, BACKOFF, _Fixed(1.0)) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "expected"),
    [(1, 5, True), (4, 5, True), (5, 5, False), (6, 5, False), (1, 1, False)],
)
def test_should_retry_is_bounded(attempt: int, max_attempts: int, expected: bool) -> None:
    assert should_retry(attempt, max_attempts) is expected
