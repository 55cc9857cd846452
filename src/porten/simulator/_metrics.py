"""What a replay measures, accumulated as it runs: counters, waits, and time-weighted VRAM.

VRAM is integrated exactly, not sampled: every placement change closes an
interval at the old level, so utilisation is the area under the claimed-VRAM
curve over the trace's span divided by (fleet budget x span). The timeline
keeps the same integral per bucket (one minute by default) for the plots.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence


class Metrics:
    """Mutable counters for one policy's run; :mod:`._report` turns them into a value."""

    def __init__(self, *, start: float, horizon: float, budget_mb: int, bucket_s: float) -> None:
        self.start, self.horizon = start, horizon
        self.budget_mb, self.bucket_s = budget_mb, bucket_s
        self.requests = self.served = self.unserved = 0
        self.cold = self.cold_first = self.cold_shared = self.parked = 0
        self.loads = self.downloads = self.evictions = self.idle_unloads = 0
        self.other_unloads = self.rejected = self.vram_violations = self.disk_cleanups = 0
        self.bytes_downloaded = 0
        self.waits: array[float] = array("d")
        self.cold_waits: array[float] = array("d")
        self.busy_slot_s = 0.0
        self.last_done = start
        # VRAM: claimed (any phase) and ready, as MiB, integrated over [start, horizon].
        self.claimed_mb = self.ready_mb = 0
        self._claimed_area = self._ready_area = 0.0
        self._at = start
        self.peak_mb: dict[str, int] = {}
        #: model → [requests, cold starts, unserved], and each model's waits.
        self.by_model: dict[str, list[int]] = {}
        self.model_waits: dict[str, array[float]] = {}
        n = max(1, math.ceil((horizon - start) / bucket_s)) if horizon > start else 1
        self.bucket_requests = [0] * n
        self.bucket_cold = [0] * n
        self.bucket_claimed_area = [0.0] * n

    def _bucket(self, t: float) -> int:
        b = int((t - self.start) // self.bucket_s)
        return min(max(b, 0), len(self.bucket_requests) - 1)

    def arrived(self, t: float, model: str, *, cold: bool, first: bool = False) -> None:
        """A request arrived; ``cold`` when no ready replica could take it.

        ``first`` marks a cold start before the model was ever ready anywhere:
        every policy pays those (a cache's compulsory misses).
        """
        self.requests += 1
        b = self._bucket(t)
        self.bucket_requests[b] += 1
        counts = self.by_model.get(model)
        if counts is None:
            counts = self.by_model[model] = [0, 0, 0]
            self.model_waits[model] = array("d")
        counts[0] += 1
        if cold:
            counts[1] += 1
            self.cold += 1
            self.cold_first += first
            self.bucket_cold[b] += 1

    def started(self, model: str, wait_s: float, *, cold: bool) -> None:
        """A request got a slot after waiting ``wait_s`` (queue plus load)."""
        self.served += 1
        self.waits.append(wait_s)
        self.model_waits[model].append(wait_s)
        if cold:
            self.cold_waits.append(wait_s)

    def dropped(self, model: str) -> None:
        """A request was given up on: no load could start for it within the wait budget."""
        self.unserved += 1
        self.by_model[model][2] += 1

    def advance(self, t: float) -> None:
        """Close the VRAM interval up to ``t`` (clipped to the trace's span)."""
        end = min(t, self.horizon)
        if end <= self._at:
            return
        self._claimed_area += self.claimed_mb * (end - self._at)
        self._ready_area += self.ready_mb * (end - self._at)
        t0 = self._at
        while t0 < end:
            b = self._bucket(t0)
            edge = min(end, self.start + (b + 1) * self.bucket_s)
            if edge <= t0:  # the last bucket absorbs anything past its edge
                edge = end
            self.bucket_claimed_area[b] += self.claimed_mb * (edge - t0)
            t0 = edge
        self._at = end

    def vram(self, t: float, *, claimed: int = 0, ready: int = 0) -> None:
        """VRAM claimed / ready changed by the given MiB at ``t``."""
        self.advance(t)
        self.claimed_mb += claimed
        self.ready_mb += ready

    def utilisation(self) -> tuple[float, float]:
        """(claimed, ready) VRAM over the span, as fractions of the fleet budget."""
        span = self.horizon - self.start
        if span <= 0 or self.budget_mb <= 0:
            return (0.0, 0.0)
        denom = self.budget_mb * span
        return (self._claimed_area / denom, self._ready_area / denom)

    def timeline_vram(self) -> list[float]:
        """Claimed VRAM per bucket as a fraction of the fleet budget."""
        out = []
        for b, area in enumerate(self.bucket_claimed_area):
            lo = self.start + b * self.bucket_s
            width = min(self.bucket_s, max(self.horizon - lo, 0.0))
            out.append(area / (self.budget_mb * width) if width > 0 else 0.0)
        return out


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 1]) of already sorted values; 0 for none."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]
