"""First-fit-decreasing with eviction: the greedy planner, CP-SAT's hint and its fallback.

Starting from what is loaded, it first sheds evictable placements from nodes
over their room (lowest-value first), then takes the wanted-but-missing
replicas in decreasing order of value (ties: larger first, then model id) and
puts each on the first node in id order where it fits — nodes holding the
weights on disk first. Where no node has room, it evicts the least valuable
placements on the node where that loses the least, if the gain is real
(value lost plus unload and load costs below the replica's value). Nodes are
ranked by per-node prefix sums of their cheapest-first victims, and the best
few are checked exactly. It never evicts what it loaded itself, and a model
whose replica found no place gets no further ones, so it ends quickly.
Everything is sorted, so it is deterministic; the scans are array operations,
so it stays fast at thousands of nodes.
"""

from __future__ import annotations

import numpy as np

from porten.scheduler._fleet import Changes, Fleet, ModelTerm
from porten.scheduler._packing import EvictionCosts, Packing

#: Eviction candidates checked exactly per replica, best-ranked first.
VERIFIED_CANDIDATES = 8


def first_fit_decreasing(
    fleet: Fleet, start: Packing | None = None, costs: EvictionCosts | None = None
) -> Changes:
    """A feasible improvement of the current placement, greedily (see the module docstring).

    ``start`` (the packing of ``fleet`` as it is) and ``costs`` (following it)
    save rebuilding them when the caller has them; both are changed.
    """
    p = start or Packing(fleet)
    for shed_node in shed(p):
        if costs is not None:
            costs.refresh(shed_node)
    stuck: set[str] = set()
    for t in _replicas_wanted(fleet, p.counts):
        value = t.marginal(p.counts[t.model_id] + 1)
        if value <= 0 or t.model_id in stuck:
            continue
        i = _first_fit(p, t, value)
        if i is None:
            costs = costs or p.eviction_costs()
            i = _evict_for(p, costs, t, value)
        if i is None:
            stuck.add(t.model_id)  # its next replicas are worth no more and are as large
        else:
            p.load(i, t.model_id)
            if costs is not None:
                costs.refresh(i)
    return p.changes()


def shed(p: Packing) -> list[int]:
    """Unload the least valuable evictable placements from nodes over their room; those nodes."""
    over = [int(i) for i in np.flatnonzero((p.free_v < 0) | (p.free_d < 0))]
    for i in over:
        for m in p.victims(i):
            if p.free_v[i] >= 0 and p.free_d[i] >= 0:
                break
            p.unload(i, m)
    return over


def _replicas_wanted(fleet: Fleet, counts: dict[str, int]) -> list[ModelTerm]:
    """One entry per missing replica, most valuable first (ties: larger, then id)."""
    items: list[tuple[int, int, str, int]] = []
    for m, t in fleet.models.items():
        items.extend((-t.values[k], -t.vram, m, k) for k in range(max(0, counts[m]), t.desired))
    items.sort()
    return [fleet.models[m] for _, _, m, _ in items]


def _first_fit(p: Packing, t: ModelTerm, value: int) -> int | None:
    """The first node (weights on disk first, then by id) with room for ``t`` now."""
    fits = p.fit_mask(t)
    if value > p.fleet.load_cost_on_disk:
        for i in p.disk_nodes.get(t.model_id, ()):
            if fits[i] and p.allowed(i, t):
                return i
    if value > p.fleet.load_cost_download:
        for i in np.flatnonzero(fits).tolist():
            if p.allowed(i, t):
                return int(i)
    return None


def _evict_for(p: Packing, costs: EvictionCosts, t: ModelTerm, value: int) -> int | None:
    """Evict for ``t`` where the value lost is smallest, if that is a real gain; the node."""
    cheapest = value - p.fleet.load_cost_on_disk
    if cheapest <= p.fleet.unload_cost:
        return None  # even the cheapest eviction costs more than the replica is worth
    loss, victims = costs.for_model(t)
    ok = (loss < cheapest) & (victims > 0) & (p.budget_v >= t.vram) & (p.budget_d >= t.disk)
    candidates = np.flatnonzero(ok)
    ranked = candidates[np.lexsort((candidates, victims[candidates], loss[candidates]))]
    best: tuple[int, int, int, list[str]] | None = None
    checked = 0
    for i in ranked.tolist():
        if checked == VERIFIED_CANDIDATES:
            break
        if not p.allowed(i, t):
            continue
        checked += 1
        found = p.greedy_victims(i, t, value - p.fleet.load_cost(p.fleet.nodes[i], t.model_id))
        if found is not None and (best is None or (found[0], len(found[1]), i) < best[:3]):
            best = (found[0], len(found[1]), i, found[1])
    if best is None:
        return None
    _, _, i, evicted = best
    for m in evicted:
        p.unload(i, m)
    return i
