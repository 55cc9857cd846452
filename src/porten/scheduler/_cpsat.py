"""The CP-SAT model of placement: the one module that imports OR-Tools.

Decisions, over the :class:`SubProblem` the planner hands over:

* ``keep[n, m]`` — a bool per evictable placement on a chosen node (0 = unload);
* ``load[n, m]`` — a bool per candidate load;
* ``level[m, k]`` — a bool per replica level a model could reach beyond the
  replicas that cannot change, with ``Σ_k level[m, k] ≤ Σ keep[·, m] + Σ load[·, m]``
  and ``level[m, k] ≥ level[m, k+1]``.

Per node, ``Σ vram·(keep + load) ≤ room`` and the same for disk, where room is
the budget less what must stay (loads in progress, models serving requests).
The objective maximises ``Σ value[m, k]·level[m, k] - unload_cost·Σ(1 - keep)
- Σ load_cost·load``: a model's marginal replica values never increase, so the
levels linearise a concave value exactly, and churn is paid only where the
gain is real. Every decision is hinted with the greedy first-fit-decreasing
answer — which is the current placement wherever FFD changed nothing — so
the first solution is never worse than it. One worker, a fixed seed and a
limit in deterministic time (never wall time) make the same input give the
same answer on every machine.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import NamedTuple

from ortools.sat.python import cp_model

from porten.scheduler._fleet import Changes, Fleet, Pair, first_copy_for
from porten.scheduler._neighbourhood import SubProblem

_STATUS = {cp_model.OPTIMAL: "optimal", cp_model.FEASIBLE: "feasible"}


class Solved(NamedTuple):
    """What a solve gave: "optimal", "feasible" or the failing status, and the work it took."""

    status: str
    changes: Changes | None
    #: Deterministic time spent (CP-SAT's own unit, about a second of one core).
    work: float


def solve(fleet: Fleet, sub: SubProblem, hint: Changes, *, seed: int, budget: float) -> Solved:
    """Solve ``sub`` from ``hint`` within ``budget`` deterministic time."""
    model = cp_model.CpModel()
    keep, load = _decisions(model, fleet, sub)
    _capacity(model, fleet, sub, keep, load)
    levels = _levels(model, fleet, keep, load)
    _last_copies(model, fleet, keep, load, levels)
    by_id = fleet.by_id
    terms = [*keep.values(), *load.values(), *levels.values()]
    coeffs = [fleet.unload_cost] * len(keep)  # a kept placement saves its unload
    coeffs += [-fleet.load_cost(by_id[n], m) for n, m in load]
    coeffs += [fleet.models[m].values[k] for m, k in levels]
    model.maximize(cp_model.LinearExpr.weighted_sum(terms, coeffs))
    _hint(model, fleet=fleet, keep=keep, load=load, levels=levels, hint=hint)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    solver.parameters.max_deterministic_time = budget
    # Measured at 1,000 x 200: presolve spends most of a second on symmetry, dominance
    # and clique detection and then searches no better, so it is skipped; the stronger
    # linear relaxation (level 2) proves optimality about twice as fast under contention.
    solver.parameters.cp_model_presolve = False
    solver.parameters.linearization_level = 2
    status = solver.solve(model)
    work = solver.deterministic_time
    if status not in _STATUS:
        return Solved(solver.status_name(status).lower(), None, work)
    unloads = frozenset(pair for pair, v in keep.items() if not solver.boolean_value(v))
    loads = frozenset(pair for pair, v in load.items() if solver.boolean_value(v))
    return Solved(_STATUS[status], Changes(unloads=unloads, loads=loads), work)


_Vars = dict[Pair, cp_model.IntVar]


def _decisions(model: cp_model.CpModel, fleet: Fleet, sub: SubProblem) -> tuple[_Vars, _Vars]:
    keep: _Vars = {}
    for i in sub.nodes:
        node = fleet.nodes[i]
        for m in node.evictable:
            keep[node.node_id, m] = model.new_bool_var(f"keep[{node.node_id},{m}]")
    load: _Vars = {}
    for i, m in sub.loads:
        node_id = fleet.nodes[i].node_id
        load[node_id, m] = model.new_bool_var(f"load[{node_id},{m}]")
    return keep, load


def _capacity(
    model: cp_model.CpModel, fleet: Fleet, sub: SubProblem, keep: _Vars, load: _Vars
) -> None:
    """VRAM and disk per node, only where the decisions could exceed the room."""
    per_node: defaultdict[str, list[tuple[str, cp_model.IntVar]]] = defaultdict(list)
    for (n, m), v in (*keep.items(), *load.items()):
        per_node[n].append((m, v))
    for i in sub.nodes:
        node = fleet.nodes[i]
        terms = per_node.get(node.node_id, [])
        sizes = [fleet.models[m] for m, _ in terms]
        vars_ = [v for _, v in terms]
        if sum(t.vram for t in sizes) > node.vram_room:
            model.add(
                cp_model.LinearExpr.weighted_sum(vars_, [t.vram for t in sizes]) <= node.vram_room
            )
        if sum(t.disk for t in sizes) > node.disk_room:
            model.add(
                cp_model.LinearExpr.weighted_sum(vars_, [t.disk for t in sizes]) <= node.disk_room
            )


def _levels(
    model: cp_model.CpModel, fleet: Fleet, keep: _Vars, load: _Vars
) -> dict[tuple[str, int], cp_model.IntVar]:
    """Replica levels each model can reach, tied to its keep and load decisions."""
    per_model: defaultdict[str, list[cp_model.IntVar]] = defaultdict(list)
    kept_here: defaultdict[str, int] = defaultdict(int)
    for (_, m), v in keep.items():
        per_model[m].append(v)
        kept_here[m] += 1
    for (_, m), v in load.items():
        per_model[m].append(v)
    levels: dict[tuple[str, int], cp_model.IntVar] = {}
    for m in sorted(per_model):
        t = fleet.models[m]
        fixed = t.replicas - kept_here[m]
        reach = range(fixed, min(t.desired, fixed + len(per_model[m])))
        row = [model.new_bool_var(f"level[{m},{k + 1}]") for k in reach]
        if not row:
            continue
        model.add(sum(row) <= sum(per_model[m]))
        for hi, lo in itertools.pairwise(row):
            model.add_implication(lo, hi)
        levels.update(((m, k), v) for k, v in zip(reach, row, strict=True))
    return levels


def _last_copies(
    model: cp_model.CpModel,
    fleet: Fleet,
    keep: _Vars,
    load: _Vars,
    levels: dict[tuple[str, int], cp_model.IntVar],
) -> None:
    """A model with demand keeps a copy, or its last one made room for a first copy of a
    model with more demand on the same node (``_fleet.first_copy_for``).

    Per evictable copy whose model could end with none (``level[m, 0]`` is a
    decision): ``keep + level[m, 0] + Σ load[n, x] ≥ 1`` over the loads on that
    node the rule accepts. Nodes over their room are exempt: they shed.
    """
    loads_on: defaultdict[str, list[tuple[str, cp_model.IntVar]]] = defaultdict(list)
    for (n, m), v in load.items():
        loads_on[n].append((m, v))
    for (n, m), v in keep.items():
        first = levels.get((m, 0))
        if first is None or fleet.models[m].rate <= 0 or n in fleet.over_room:
            continue
        causes = [x for other, x in loads_on[n] if first_copy_for(fleet, m, other)]
        model.add(sum([v, first, *causes]) >= 1)


def _hint(
    model: cp_model.CpModel,
    *,
    fleet: Fleet,
    keep: _Vars,
    load: _Vars,
    levels: dict[tuple[str, int], cp_model.IntVar],
    hint: Changes,
) -> None:
    """Hint every decision with ``hint``, and each level with the count it implies."""
    count = {m: t.replicas for m, t in fleet.models.items()}
    for pair, v in keep.items():
        gone = pair in hint.unloads
        model.add_hint(v, not gone)
        count[pair[1]] -= gone
    for pair, v in load.items():
        on = pair in hint.loads
        model.add_hint(v, on)
        count[pair[1]] += on
    for (m, k), v in levels.items():
        model.add_hint(v, k < count[m])
