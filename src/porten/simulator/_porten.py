"""Porten's policy in the simulator: the hub's own urgent placer and planner, unchanged.

* a cold request (no replica ready or loading) calls
  :func:`porten.scheduler.urgent.place_urgently` on the folded state: a node,
  and the idle copies to evict from it — or the busy ones to drain, after
  which the request is retried once their room is free;
* each closed demand window (after its ``demand_observed`` events are
  folded) calls :func:`porten.scheduler.planner.plan`: idle unloads plus the
  demand-driven placement, replicas included, whose decisions the kernel
  applies as events and plays out over simulated load time.

Nothing here decides anything itself; this module is only the wiring, so a
replay measures the product's scheduler and not a re-implementation of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from porten.scheduler.plan import DrainPlacement, PlannerConfig, Unplaceable, UrgentDecision
from porten.scheduler.planner import plan
from porten.scheduler.urgent import place_urgently

if TYPE_CHECKING:
    from porten.simulator._kernel import Simulation


class PortenPolicy:
    """The hub's scheduling core behind the simulator's policy interface."""

    name = "porten"

    def __init__(self, config: PlannerConfig | None = None) -> None:
        self.config = config if config is not None else PlannerConfig()
        self._counts = {
            "plans": 0,
            "plans_with_changes": 0,
            "planner_loads": 0,
            "planner_unloads": 0,
            "urgent_placements": 0,
            "urgent_drains": 0,
            "urgent_waits_for_drains": 0,
            "urgent_unplaceable": 0,
        }
        self._unplaceable: dict[str, str] = {}

    def params(self) -> dict[str, float | int | str]:
        """The planner's configuration, as the report states it."""
        out: dict[str, float | int | str] = {"plan_cadence": "every closed demand window"}
        for k, v in msgspec.structs.asdict(self.config).items():
            if isinstance(v, (int, float, str)):
                out[f"planner.{k}"] = v
        return out

    def place_cold(
        self, sim: Simulation, model_id: str, now: float
    ) -> UrgentDecision:
        """The hub's urgent placement for a model requested now."""
        from porten.simulator._kernel import REQUESTER

        decision = place_urgently(sim.state, model_id, REQUESTER, now, self.config, sim.busy)
        if isinstance(decision, Unplaceable):
            self._counts["urgent_unplaceable"] += 1
            self._unplaceable[model_id] = f"urgent: {decision.reason}"
        elif isinstance(decision, DrainPlacement):
            self._counts["urgent_waits_for_drains"] += 1
            self._counts["urgent_drains"] += len(decision.drains)
        else:
            self._counts["urgent_placements"] += 1
        return decision

    def on_window(self, sim: Simulation, now: float) -> None:
        """Run the global planner on the state as folded so far and apply its plan."""
        p = plan(sim.state, now, self.config, sim.busy)
        self._counts["plans"] += 1
        self._counts["plans_with_changes"] += not p.empty
        self._counts["planner_loads"] += len(p.loads)
        self._counts["planner_unloads"] += len(p.unloads)
        for u in p.unplaceable:
            self._unplaceable[u.model_id] = f"planner: {u.reason}"
        sim.apply_plan(p)

    def diagnostics(self) -> dict[str, int | str]:
        """Plans run and what they changed, urgent placements, last reason a model went unplaced."""
        out: dict[str, int | str] = dict(self._counts)
        for m, why in sorted(self._unplaceable.items()):
            out[f"last_unplaceable.{m}"] = why
        return out

    def on_idle(self, sim: Simulation, node_id: str, model_id: str, now: float) -> None:
        """Idle models are the planner's business, at its next run."""

    def on_timer(self, sim: Simulation, payload: object, now: float) -> None:
        """Porten sets no timers."""
