"""The planner's inputs and outputs: values, with a reason a human can read on each.

The planner is a pure function of (fleet state, now, config, what is busy)
returning a :class:`Plan`. The shell appends each decision as an event
(``load_requested`` / ``model_unloaded``) carrying its reason, with the node
stream's expected version, so a plan made on a stale state conflicts and is
made again (Nomad's plan applier). ``porten events explain`` prints those
reasons back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec

from porten.domain.values import UnloadReason

#: (node id, model id) → requests in flight there. A busy placement is never evicted.
Busy = Mapping[tuple[str, str], int]


class PlannerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Knobs of the scheduling core; defaults are what the hub runs with."""

    #: A model idle this long on a provisionable node is unloaded (weights stay on disk).
    demand_window_s: float = 600.0
    #: Requests per second one replica is assumed to serve before another is wanted.
    replica_capacity_rps: float = 2.0
    max_replicas: int = 8
    #: Upper bound on the solver's work, in CP-SAT deterministic-time units (~seconds).
    solve_deterministic_time: float = 1.0
    seed: int = 0
    #: Objective weights: value of serving demand vs the cost of churn.
    #: ``value_per_rps`` is what serving one request per second is worth in churn units, so
    #: a replica serving ``replica_capacity_rps`` outweighs a download and an unload.
    value_per_rps: float = 10.0
    unload_cost: float = 5.0
    load_cost_on_disk: float = 1.0
    load_cost_download: float = 3.0
    #: Back-off after a failed load of a model on a node: base * 2^(failures-1), capped.
    failure_backoff_s: float = 30.0
    failure_backoff_max_s: float = 3600.0


class LoadDecision(msgspec.Struct, frozen=True, kw_only=True):
    """Load ``model_id`` on ``node_id``."""

    node_id: str
    model_id: str
    reason: str


class UnloadDecision(msgspec.Struct, frozen=True, kw_only=True):
    """Unload ``model_id`` from ``node_id`` (``evicted_for`` when it makes room for another)."""

    node_id: str
    model_id: str
    reason: UnloadReason
    evicted_for: str = ""
    detail: str = ""


class Unplaceable(msgspec.Struct, frozen=True, kw_only=True):
    """A model with demand that no node can take, and why."""

    model_id: str
    reason: str


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What the fleet should change, in the order to apply it (unloads first)."""

    unloads: tuple[UnloadDecision, ...] = ()
    loads: tuple[LoadDecision, ...] = ()
    unplaceable: tuple[Unplaceable, ...] = ()
    #: How the placement was found: "cp-sat optimal", "cp-sat feasible", "first-fit-decreasing".
    solver: str = ""
    objective: float = 0.0

    @property
    def empty(self) -> bool:
        """Whether the plan changes nothing."""
        return not self.unloads and not self.loads


class UrgentPlacement(msgspec.Struct, frozen=True, kw_only=True):
    """Where a just-requested cold model goes now, and what it evicts (may be nothing)."""

    load: LoadDecision
    evictions: tuple[UnloadDecision, ...] = ()


EMPTY_PLAN: Final = Plan()
