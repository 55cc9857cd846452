"""How long an agent waits before dialling the hub again.

Exponential backoff with *full jitter* (a uniform draw between 0 and the
capped exponential), as in AWS's "Exponential Backoff and Jitter": when a
hub restarts, thousands of home nodes lose their connection in the same
second, and full jitter spreads their reconnects over the whole window
instead of synchronising them into waves. The random source is injected so
tests and simulations get the same schedule every run.
"""

from __future__ import annotations

import random
from typing import Final

import attrs

BASE_S: Final = 0.5
CAP_S: Final = 30.0


def ceiling(attempt: int, *, base_s: float = BASE_S, cap_s: float = CAP_S) -> float:
    """The longest wait before retry number ``attempt`` (0-based): ``min(cap, base·2ⁿ)``."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    # 2**64 already dwarfs any cap; stop there so a long outage cannot overflow a float.
    return min(cap_s, base_s * 2.0 ** min(attempt, 64))


def full_jitter(
    attempt: int, rng: random.Random, *, base_s: float = BASE_S, cap_s: float = CAP_S
) -> float:
    """A wait drawn uniformly from ``[0, ceiling(attempt)]``."""
    return rng.uniform(0.0, ceiling(attempt, base_s=base_s, cap_s=cap_s))


@attrs.define
class Backoff:
    """Successive waits of one run of failures; :meth:`reset` once a connection succeeds."""

    base_s: float = BASE_S
    cap_s: float = CAP_S
    rng: random.Random = attrs.field(factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """The wait before the next attempt (and count the attempt)."""
        delay = full_jitter(self.attempt, self.rng, base_s=self.base_s, cap_s=self.cap_s)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """The next failure starts from the base again."""
        self.attempt = 0
