"""Which part of the fleet CP-SAT decides: all of it when small, what could change when large.

A fleet of a few dozen nodes goes to the solver whole, and its answer is
optimal for the whole problem. At thousands of nodes a boolean per (model,
node) pair is more than a second's worth of model (DESIGN-NOTES: 151k
booleans at 1,000 x 200), and almost all of the fleet is already right. So
the solver gets a neighbourhood instead:

* the models short of the replicas their demand wants, each with its best
  candidate nodes — a few where it fits in free room now (weights on disk
  first, then the tightest fit) and a few where evicting the cheapest
  placements makes room (least value lost first) — ``missing + 2`` of each,
  at most 16, ties to the lowest node id. Interchangeable nodes (same room,
  same placements, same weights on disk) rank identically, so a class of
  them contributes its first few members instead of all of them: the
  aggregation DESIGN-NOTES asks for, done by ranking rather than counting;
* every node the first-fit-decreasing hint touches and every node over its
  room, so the hint is a complete, feasible solution of the neighbourhood
  (CP-SAT can only improve on it);
* the models with demand that could be evicted from those nodes, each with
  two nodes where it fits now, so a move that frees a big node for a big
  model is within reach.

Every evictable placement on a chosen node is a decision; everything else
stays as it is and enters the objective as a constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from porten.scheduler._fleet import Changes, Fleet, ModelTerm
from porten.scheduler._packing import EvictionCosts, Packing

#: A problem with at most this many (model, node) load candidates goes to the solver whole.
WHOLE_PROBLEM_PAIRS = 4_000
#: The most free-room (and eviction) candidates one short model adds, however short it is.
MAX_CANDIDATES = 16
#: Free-room candidates for a model that moves off a node in the neighbourhood.
MOVER_CANDIDATES = 2

Load = tuple[int, str]
"""(node index, model id)."""


@dataclass(frozen=True, slots=True)
class SubProblem:
    """The nodes whose evictable placements are decisions, and the candidate loads."""

    nodes: tuple[int, ...]
    loads: tuple[Load, ...]
    #: Whether this is the whole problem (so "optimal" means optimal for the fleet).
    whole: bool


def is_whole(fleet: Fleet) -> bool:
    """Whether ``fleet`` is small enough to go to the solver whole."""
    wanted = sum(1 for t in fleet.models.values() if t.values)
    return len(fleet.nodes) * wanted <= WHOLE_PROBLEM_PAIRS


def neighbourhood(
    fleet: Fleet,
    hint: Changes,
    start: Packing | None = None,
    costs: EvictionCosts | None = None,
) -> SubProblem:
    """What the solver decides for ``fleet``, given the greedy ``hint`` (see the module doc).

    ``start`` (the packing of ``fleet`` as it is) and ``costs`` (following it)
    save rebuilding them when the caller has them; neither is changed.
    """
    wanted = [t for t in fleet.models.values() if t.values]
    if is_whole(fleet):
        return _whole(fleet, wanted)
    p = start or Packing(fleet)
    costs = costs or p.eviction_costs()
    index = {n.node_id: i for i, n in enumerate(fleet.nodes)}
    nodes = {index[n] for n, _ in hint.unloads | hint.loads} | {index[n] for n in fleet.over_room}
    loads = {(index[n], m) for n, m in hint.loads}
    for t in wanted:
        missing = t.desired - t.replicas
        if missing > 0:
            k = candidates_for(missing)
            loads |= {(i, t.model_id) for i in _fits_now(p, t, k)}
            loads |= {(i, t.model_id) for i in _by_eviction(p, costs, t, k)}
    nodes |= {i for i, _ in loads}
    movers = sorted({m for i in nodes for m in fleet.nodes[i].evictable})
    for m in movers:
        t = fleet.models[m]
        if t.values:
            loads |= {(i, m) for i in _fits_now(p, t, MOVER_CANDIDATES)}
    nodes |= {i for i, _ in loads}
    return SubProblem(nodes=tuple(sorted(nodes)), loads=tuple(sorted(loads)), whole=False)


def candidates_for(missing: int) -> int:
    """How many free-room and how many eviction candidates a model short of ``missing`` gets.

    Two spare choices per pool, capped: measured at 1,000 x 200 and 5,000 x 500,
    ``2 * missing + 2`` uncapped found no better plan at 3-4 times the solve time,
    and at 5,000 nodes ran out of deterministic time before proving optimality.
    """
    return min(missing + 2, MAX_CANDIDATES)


def _whole(fleet: Fleet, wanted: list[ModelTerm]) -> SubProblem:
    loads = [
        (i, t.model_id) for i, n in enumerate(fleet.nodes) for t in wanted if fleet.may_load(n, t)
    ]
    nodes = sorted({i for i, _ in loads} | {i for i, n in enumerate(fleet.nodes) if n.evictable})
    return SubProblem(nodes=tuple(nodes), loads=tuple(loads), whole=True)


def _fits_now(p: Packing, t: ModelTerm, k: int) -> list[int]:
    """Up to ``k`` nodes with free room for ``t``: weights on disk first, then tightest fit."""
    mask = p.fit_mask(t)
    fits = np.flatnonzero(mask)
    if not len(fits):
        return []
    on_disk = np.zeros(len(mask), dtype=np.bool_)
    on_disk[p.disk_nodes.get(t.model_id, [])] = True
    leftover = p.free_v[fits] - t.vram
    order = fits[np.lexsort((fits, leftover, ~on_disk[fits]))]
    return _first_allowed(p, t, order.tolist(), k)


def _by_eviction(p: Packing, costs: EvictionCosts, t: ModelTerm, k: int) -> list[int]:
    """Up to ``k`` nodes where evicting cheapest-first makes room for ``t`` at a real gain."""
    loss, victims = costs.for_model(t)
    gain = t.marginal(t.replicas + 1) - p.fleet.load_cost_on_disk
    ok = (loss < gain) & (victims > 0) & (p.budget_v >= t.vram) & (p.budget_d >= t.disk)
    candidates = np.flatnonzero(ok)
    if not len(candidates):
        return []
    order = candidates[np.lexsort((candidates, victims[candidates], loss[candidates]))]
    return _first_allowed(p, t, order.tolist(), k)


def _first_allowed(p: Packing, t: ModelTerm, order: list[int], k: int) -> list[int]:
    out: list[int] = []
    for i in order:
        if len(out) == k:
            break
        if p.allowed(i, t):
            out.append(i)
    return out
