"""The state as if a plan had completed instantly: for tests and simulations.

It folds the very events the shell appends — ``model_unloaded`` for each
unload, then ``load_requested`` and ``model_loaded`` for each load — through
the real fold, so what a test or a simulation sees after a plan is what the
hub would see, not a second model of the fleet. Load ids are derived from the
decision, so applying the same plan twice gives the same state.
"""

from __future__ import annotations

from porten.domain import events as ev
from porten.domain.fold import fold
from porten.domain.state import FleetState
from porten.scheduler.plan import Plan, UrgentPlacement


def plan_events(plan: Plan, now: float) -> list[ev.AnyEvent]:
    """The events that record ``plan`` done at ``now``: unloads first, then the loads."""
    out: list[ev.AnyEvent] = [
        ev.ModelUnloaded(
            at=now,
            actor="planner",
            node_id=u.node_id,
            model_id=u.model_id,
            reason=u.reason,
            evicted_for=u.evicted_for,
            detail=u.detail,
        )
        for u in plan.unloads
    ]
    for d in plan.loads:
        load_id = f"plan:{d.node_id}:{d.model_id}"
        out.append(
            ev.LoadRequested(
                at=now,
                actor="planner",
                node_id=d.node_id,
                model_id=d.model_id,
                load_id=load_id,
                reason=d.reason,
            )
        )
        out.append(
            ev.ModelLoaded(
                at=now, actor="planner", node_id=d.node_id, model_id=d.model_id, load_id=load_id
            )
        )
    return out


def apply_plan(state: FleetState, plan: Plan, now: float) -> FleetState:
    """``state`` after every decision in ``plan`` completed at ``now``."""
    return fold(plan_events(plan, now), state)


def apply_urgent(state: FleetState, placement: UrgentPlacement, now: float) -> FleetState:
    """``state`` after an urgent placement's evictions and load completed at ``now``."""
    return apply_plan(state, Plan(unloads=placement.evictions, loads=(placement.load,)), now)
