"""Demand measurement: per model, requests served and unmet, recorded once per window.

Counting happens in memory on the request path (two dict increments); a
background task turns each finished window into one ``demand_observed``
event per model that saw traffic, through the batching writer. So demand is
durable and replayable without an event per request, and the planner reads
it from the folded state like everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import Callable

import structlog

from porten.domain.events import DemandObserved
from porten.services.writer import BatchingWriter

log = structlog.get_logger(__name__)


class DemandMeter:
    """Counts requests per model and flushes a ``demand_observed`` per window."""

    def __init__(
        self,
        writer: BatchingWriter,
        clock: Callable[[], float],
        *,
        window_s: float = 60.0,
        on_flush: Callable[[], None] | None = None,
    ) -> None:
        self._writer = writer
        self._clock = clock
        self.window_s = window_s
        self._on_flush = on_flush
        self._window_start = self._start_of(clock())
        self._served: Counter[str] = Counter()
        self._unmet: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    def _start_of(self, t: float) -> float:
        return math.floor(t / self.window_s) * self.window_s

    def served(self, model_id: str) -> None:
        """A request for ``model_id`` was answered by a node."""
        self._roll()
        self._served[model_id] += 1

    def unmet(self, model_id: str) -> None:
        """A request for ``model_id`` could not be served (no node, still warming)."""
        self._roll()
        self._unmet[model_id] += 1

    def _roll(self) -> None:
        """Close the current window if the clock has left it."""
        start = self._start_of(self._clock())
        if start > self._window_start:
            self.flush()
            self._window_start = start

    def flush(self) -> None:
        """Record the current window's counts (if any) and start counting afresh."""
        models = sorted(set(self._served) | set(self._unmet))
        if models:
            now = self._clock()
            self._writer.submit([
                DemandObserved(at=now, actor="hub", model_id=m, window_start=self._window_start,
                               window_s=self.window_s, served=self._served[m],
                               unmet=self._unmet[m])
                for m in models
            ])
            if self._on_flush is not None:
                self._on_flush()
        self._served.clear()
        self._unmet.clear()

    async def run(self) -> None:
        """Flush every window boundary, even when no request arrives to roll it."""
        while True:
            next_start = self._window_start + self.window_s
            await asyncio.sleep(max(next_start - self._clock(), 0.05))
            self._roll()

    def start(self) -> None:
        """Run the flusher in the background."""
        self._task = asyncio.create_task(self.run(), name="demand-meter")

    async def aclose(self) -> None:
        """Stop the flusher and record the partial window."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
