"""The global planner: (fleet state, now, config, busy) → Plan, a pure and repeatable function.

Unloads that need no solver come first: copies of models the catalog
withdrew (``filters.withdrawn_unloads``, reason ``operator``), and ready
models nobody asked for in a whole demand window (``filters.idle_unloads``). Demand-driven
placement works on what remains, reduced to an integer problem
(``_fleet``), in rounds: first-fit-decreasing finds a greedy answer, CP-SAT
improves on it — over the whole problem, or on a large fleet over the
neighbourhood that could change (``_neighbourhood``, ``_cpsat``) — and the
better of the two by the one shared objective wins, unless changing nothing
scores as well. A neighbourhood round repeats from the placement it reached
while it gains and the solver budget lasts. So the plan is never worse than
FFD's, and ties go to fewer changes. Last, each decision gets its reason in
words.

The objective is served-demand value minus churn: a replica is worth the
demand it serves (a first replica also its availability), an unload and a
load (more when the weights must be downloaded) cost, so a loaded model is
kept unless replacing it is a real gain. Busy placements, loads in progress
and fixed-set nodes are never decisions at all, models with no demand are
never loaded, and nothing reads a clock or an unseeded random source: the
same input gives the same plan, byte for byte. Applying a plan and planning
again at the same ``now`` gives an empty plan (the current placement then
scores at least as well as any change, and ties keep it).
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

from porten.domain.state import FleetState
from porten.scheduler import _cpsat, filters
from porten.scheduler._explain import eviction_detail, load_reason, rps, why_unplaceable
from porten.scheduler._fleet import (
    SCALE,
    Changes,
    Fleet,
    Pair,
    advance,
    build_fleet,
    compose,
    counts_after,
    feasible,
    first_copy_for,
    objective,
    usage,
)
from porten.scheduler._neighbourhood import is_whole, neighbourhood
from porten.scheduler._packing import Packing
from porten.scheduler.ffd import first_fit_decreasing
from porten.scheduler.plan import (
    Busy,
    LoadDecision,
    Plan,
    PlannerConfig,
    UnloadDecision,
    Unplaceable,
)

#: Solver rounds one plan may take on a large fleet (the time budget usually ends them first).
MAX_ROUNDS = 8


def plan(state: FleetState, now: float, config: PlannerConfig, busy: Busy) -> Plan:
    """What the fleet should change now: unloads (withdrawn models, idle, then evicted),
    loads, unplaceable."""
    withdrawn = filters.withdrawn_unloads(state, busy)
    leaving = {(u.node_id, u.model_id) for u in withdrawn}
    idle = [
        u
        for u in filters.idle_unloads(state, now, config, busy)
        if (u.node_id, u.model_id) not in leaving
    ]
    gone = sorted(leaving | {(u.node_id, u.model_id) for u in idle})
    fleet = build_fleet(state, now, config, busy, gone=gone)
    solver, changes = decide(fleet, config)
    return Plan(
        unloads=(*withdrawn, *idle, *_evictions(fleet, changes)),
        loads=_loads(fleet, changes),
        unplaceable=_unplaceable(state, fleet, changes, now=now, config=config, busy=busy),
        solver=solver,
        objective=objective(fleet, changes) / SCALE,
    )


def decide(fleet: Fleet, config: PlannerConfig) -> tuple[str, Changes]:
    """(how it was found, the best changes), over as many solver rounds as pay off.

    On the whole problem one round is the answer. On a neighbourhood, the
    improved placement has a new neighbourhood, so the round repeats from it
    (large-neighbourhood search) until a round finds no gain or the
    deterministic-time budget is spent — the plan then leaves little for the
    next one to find. Each accepted round raises the objective measured from
    the fleet as it is now.
    """
    if not _anything_to_decide(fleet):
        return "none (every model has the replicas its demand wants)", Changes()
    total, label, rounds = Changes(), "", 0
    budget, current = config.solve_deterministic_time, fleet
    while rounds < MAX_ROUNDS:
        step_label, step, work, whole = _round(current, config, budget)
        budget -= work
        candidate = compose(total, step)
        # The first round is the best feasible answer (changing nothing may not be
        # feasible: a node over its budget); a later one must raise the objective and,
        # composed with the rounds before it, still keep every rule.
        if not step.size or (
            rounds
            and (
                objective(fleet, candidate) <= objective(fleet, total)
                or not feasible(fleet, candidate)
            )
        ):
            label = label or step_label
            break
        total, label, rounds = candidate, step_label, rounds + 1
        if whole or budget <= 0:
            break
        current = advance(current, step)
    if rounds > 1:
        label = label.replace("(neighbourhood)", f"(neighbourhood, {rounds} rounds)")
    return label, _prefer_current(fleet, total)


class _Round(NamedTuple):
    label: str
    #: None at all unless they beat changing nothing.
    changes: Changes
    #: Deterministic time the solver spent.
    work: float
    #: Whether the solver saw the whole problem (so no further round can gain).
    whole: bool


def _round(fleet: Fleet, config: PlannerConfig, budget: float) -> _Round:
    """One round: FFD, then CP-SAT from it; the better by the objective (ties: fewer changes)."""
    start = Packing(fleet)  # built once, for both FFD (a copy) and the neighbourhood
    costs = None if is_whole(fleet) else start.eviction_costs()
    mine = start.copy()
    greedy = tidy(fleet, first_fit_decreasing(fleet, mine, costs and costs.copy_for(mine)))
    sub = neighbourhood(fleet, greedy, start, costs)
    solved = _cpsat.solve(fleet, sub, greedy, seed=config.seed, budget=max(budget, 0.0))
    found = solved.changes
    if found is None or not feasible(fleet, found):
        label = f"first-fit-decreasing (cp-sat {solved.status})"
        return _Round(label, _prefer_current(fleet, greedy), solved.work, sub.whole)
    options = [
        (f"cp-sat {solved.status}" + ("" if sub.whole else " (neighbourhood)"), tidy(fleet, found)),
        ("first-fit-decreasing", greedy),
    ]
    label, best = max(options, key=lambda o: (objective(fleet, o[1]), -o[1].size))
    return _Round(label, _prefer_current(fleet, best), solved.work, sub.whole)


def _prefer_current(fleet: Fleet, changes: Changes) -> Changes:
    """``changes``, unless changing nothing scores as well: ties keep what runs."""
    nothing = Changes()
    if (
        changes.size
        and feasible(fleet, nothing)
        and objective(fleet, nothing) >= objective(fleet, changes)
    ):
        return nothing
    return changes


def _anything_to_decide(fleet: Fleet) -> bool:
    """Whether any model is short of the replicas it wants or any node over its room.

    If neither, no change can raise the value and every change costs, so the
    current placement is optimal and the solver need not run.
    """
    return bool(fleet.over_room) or any(t.replicas < t.desired for t in fleet.models.values())


def tidy(fleet: Fleet, changes: Changes) -> Changes:
    """``changes`` without unloads that still fit and loads worth no more than they cost.

    A solver stopped by its time limit, or a greedy pass, may leave such slack;
    each step here raises the objective or keeps it, so any answer can be
    tidied before use. Restoring can make a load redundant and dropping a load
    can make room to restore, so the two alternate until neither changes.
    """
    while True:
        tidier = _drop_worthless_loads(fleet, _restore_unloads(fleet, changes))
        if tidier == changes:
            return changes
        changes = tidier


def _restore_unloads(fleet: Fleet, changes: Changes) -> Changes:
    """Keep every unloaded placement that fits back, the most valuable first."""
    unloads = set(changes.unloads)
    counts = counts_after(fleet, changes)
    by_id = fleet.by_id
    room = usage(fleet, changes, {n for n, _ in unloads})

    def value(p: Pair) -> tuple[int, Pair]:
        return (-fleet.models[p[1]].marginal(counts[p[1]] + 1), p)

    for node_id, m in sorted(unloads, key=value):
        t, node = fleet.models[m], by_id[node_id]
        vram, disk = room[node_id]
        if vram + t.vram <= node.vram_room and disk + t.disk <= node.disk_room:
            unloads.remove((node_id, m))
            counts[m] += 1
            room[node_id] = (vram + t.vram, disk + t.disk)
    return Changes(unloads=frozenset(unloads), loads=changes.loads)


def _drop_worthless_loads(fleet: Fleet, changes: Changes) -> Changes:
    """Drop loads whose replica adds no more value than the load costs, costliest first."""
    loads = set(changes.loads)
    counts = counts_after(fleet, changes)
    by_id = fleet.by_id

    def cost(p: Pair) -> int:
        return fleet.load_cost(by_id[p[0]], p[1])

    # A load that a last copy made room for stays: dropping it would leave that unload
    # without its cause (restoring the unload is the other step's job).
    needed = {
        (n, m)
        for n, m in loads
        for u, v in changes.unloads
        if u == n and counts[v] <= 0 and first_copy_for(fleet, v, m)
    }
    for pair in sorted(loads - needed, key=lambda p: (-cost(p), p)):
        m = pair[1]
        if fleet.models[m].marginal(counts[m]) <= cost(pair):
            loads.remove(pair)
            counts[m] -= 1
    return Changes(unloads=changes.unloads, loads=frozenset(loads))


def _evictions(fleet: Fleet, changes: Changes) -> list[UnloadDecision]:
    """Each unload for room, with the model it made room for (the most demanded loaded there)."""
    loaded_on: defaultdict[str, list[tuple[str, float]]] = defaultdict(list)
    for node_id, m in sorted(changes.loads):
        loaded_on[node_id].append((m, fleet.models[m].rate))
    counts = counts_after(fleet, changes)
    out = []
    for node_id, m in sorted(changes.unloads):
        room_for = sorted(loaded_on[node_id], key=lambda x: (-x[1], x[0]))
        out.append(
            UnloadDecision(
                node_id=node_id,
                model_id=m,
                reason="evicted",
                evicted_for=room_for[0][0] if room_for else "",
                detail=eviction_detail(m, fleet.models[m].rate, counts[m], room_for),
            )
        )
    return out


def _loads(fleet: Fleet, changes: Changes) -> tuple[LoadDecision, ...]:
    leaving: defaultdict[str, list[str]] = defaultdict(list)
    for node_id, m in sorted(changes.unloads):
        leaving[m].append(node_id)
    by_id = fleet.by_id
    out = []
    for node_id, m in sorted(changes.loads):
        t = fleet.models[m]
        reason = load_reason(t.rate, t.desired, t.replicas, m in by_id[node_id].on_disk, leaving[m])
        out.append(LoadDecision(node_id=node_id, model_id=m, reason=reason))
    return tuple(out)


def _unplaceable(
    state: FleetState,
    fleet: Fleet,
    changes: Changes,
    *,
    now: float,
    config: PlannerConfig,
    busy: Busy,
) -> tuple[Unplaceable, ...]:
    """Models with demand left with no replica at all, and why no node takes them."""
    counts = counts_after(fleet, changes)
    nodes = filters.provisionable_nodes(state)
    out = []
    for m, t in sorted(fleet.models.items()):
        if t.rate <= 0 or counts[m] > 0:
            continue
        why = why_unplaceable(
            state, state.catalog[m].entry, nodes, now=now, config=config, busy=busy
        ) or (
            f"no node has room for it without evicting models worth more to keep "
            f"(its demand is {rps(t.rate)})"
        )
        out.append(Unplaceable(model_id=m, reason=why))
    return tuple(out)
