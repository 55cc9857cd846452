"""The agent's reconnect schedule: exponential, capped, fully jittered, reproducible."""

from __future__ import annotations

import random
import statistics

import pytest

from porten.agent.backoff import BASE_S, CAP_S, Backoff, ceiling, full_jitter


def test_the_ceiling_doubles_from_half_a_second_up_to_thirty() -> None:
    """The longest wait doubles per attempt from 0.5 s and stays at the 30 s cap."""
    assert [ceiling(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert (BASE_S, CAP_S) == (0.5, 30.0)


def test_a_long_outage_never_overflows() -> None:
    """Thousands of failed attempts still give the cap, not an overflow."""
    assert ceiling(10_000) == CAP_S
    assert 0.0 <= full_jitter(10_000, random.Random(1)) <= CAP_S


def test_negative_attempts_are_rejected() -> None:
    """An attempt number below zero is a bug in the caller."""
    with pytest.raises(ValueError, match="attempt"):
        ceiling(-1)


@pytest.mark.parametrize("attempt", [0, 1, 3, 6, 20])
def test_full_jitter_spreads_waits_over_the_whole_window(attempt: int) -> None:
    """Draws cover [0, ceiling] uniformly: none outside, mean near half, both ends reached."""
    rng = random.Random(attempt)
    top = ceiling(attempt)
    draws = [full_jitter(attempt, rng) for _ in range(4000)]
    assert all(0.0 <= d <= top for d in draws)
    assert statistics.fmean(draws) == pytest.approx(top / 2, rel=0.05)
    assert min(draws) < 0.02 * top
    assert max(draws) > 0.98 * top


def test_the_schedule_is_reproducible_and_resets() -> None:
    """Same seed, same waits; after reset the next wait is within the base again."""
    first = Backoff(rng=random.Random(42))
    second = Backoff(rng=random.Random(42))
    waits = [first.next_delay() for _ in range(10)]
    assert waits == [second.next_delay() for _ in range(10)]
    assert all(w <= ceiling(n) for n, w in enumerate(waits))
    assert first.attempt == 10
    first.reset()
    assert first.attempt == 0
    assert first.next_delay() <= BASE_S


def test_custom_base_and_cap_are_honoured() -> None:
    """Tests and simulations can shrink the schedule; the shape stays the same."""
    backoff = Backoff(base_s=0.01, cap_s=0.05, rng=random.Random(3))
    waits = [backoff.next_delay() for _ in range(20)]
    assert all(w <= min(0.05, 0.01 * 2**n) for n, w in enumerate(waits))
