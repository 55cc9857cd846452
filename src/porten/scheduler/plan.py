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
    #: Seconds to load one GiB of a model from local disk into VRAM: what an eviction is
    #: costed by (its requests arriving while it loads again are cold starts).
    reload_s_per_gib: float = 2.0
    #: Urgent placement displaces a copy only for a model with this many times the demand
    #: the copy would lose (hysteresis against two models swapping back and forth).
    displace_ratio: float = 2.0
    #: A model expected to get fewer requests than this while it reloads is the long tail:
    #: an idle copy of it may make room for any model (``filters.may_evict_for``).
    tail_requests: float = 4.0
    #: A model whose requests have gone unmet, none served, this long may have a busy copy
    #: of the long tail drained for it (no model waits for ever; ``filters.starved_s``).
    starvation_s: float = 180.0
    #: A copy ready for less than this is never evicted or drained for a requested model:
    #: the requests that waited for its load are still being recorded as its demand.
    min_residency_s: float = 60.0


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
    """A model with demand that no node can take, and why.

    ``retry_after_s`` is when trying again could succeed, where that is known
    (the end of the earliest back-off after failed loads); 0 when it is not.
    """

    model_id: str
    reason: str
    retry_after_s: float = 0.0


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


class DrainPlacement(msgspec.Struct, frozen=True, kw_only=True):
    """Room for a just-requested model is being made by draining copies serving requests.

    Each of ``drains`` stops taking new requests now and is unloaded when those
    in flight finish; the model is placed once the room is free. No
    ``drains``: drains already under way on ``node_id`` will make the room.
    """

    model_id: str
    node_id: str
    drains: tuple[UnloadDecision, ...] = ()
    reason: str


UrgentDecision = UrgentPlacement | DrainPlacement | Unplaceable
"""What urgent placement answers: load now (after evictions), wait for drains, or why not."""


EMPTY_PLAN: Final = Plan()
