"""The seam between the simulation kernel and a scheduling policy (Porten's, or the baseline).

A policy makes exactly two kinds of decision — where a cold model goes (and
what it evicts), and what to do in the background (plan on each demand
window, or expire idle models on timers) — and the kernel turns each into
events and simulated time. Everything else (routing, queues, shared loads,
disk, timing) is the kernel's, so two policies differ only here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from porten.scheduler.plan import UrgentDecision

if TYPE_CHECKING:
    from porten.simulator._kernel import Simulation


class Policy(Protocol):
    """What distinguishes Porten from the baseline: cold placement and background work."""

    name: str

    def place_cold(
        self, sim: Simulation, model_id: str, now: float
    ) -> UrgentDecision:
        """Where a model nobody serves or loads goes now, and what it evicts or drains."""
        ...

    def on_window(self, sim: Simulation, now: float) -> None:
        """A demand window closed (its ``demand_observed`` events are folded)."""
        ...

    def on_idle(self, sim: Simulation, node_id: str, model_id: str, now: float) -> None:
        """A ready placement just finished its last request."""
        ...

    def on_timer(self, sim: Simulation, payload: object, now: float) -> None:
        """A timer the policy set with :meth:`Simulation.set_timer` fired."""
        ...

    def params(self) -> dict[str, float | int | str]:
        """The policy's knobs, for the report."""
        ...

    def diagnostics(self) -> dict[str, int | str]:
        """What the policy did, in its own terms (counts, last reasons), for the report."""
        ...
