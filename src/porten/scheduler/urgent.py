"""Urgent placement: where a just-requested cold model goes now, and what makes room for it.

A request is blocking on this decision, so it is small, greedy and
separate from the global plan (which rebalances on its next cadence). The
candidates are only nodes the requester's key admits — fail-closed, for
loading exactly as for serving — that are online, provisionable, could ever
hold the model and are not backing off from it. A node where it fits now
wins (weights already on disk first, then the most free VRAM, then node id).
Otherwise, on each candidate, the ready models with no request in flight are
evicted lowest demand first until it fits, and the node whose evicted demand
is smallest wins (then fewer evictions, then node id). It happens at once:
a requested model does not wait out an anti-thrash delay. A model serving
requests and a load in progress are never evicted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from porten.domain.state import FleetState, NodeState, vram_free_mb
from porten.domain.values import CatalogEntry
from porten.scheduler import filters as f
from porten.scheduler._explain import listed, rps, why_unplaceable
from porten.scheduler.eligibility import Requester, model_allowed, node_admits
from porten.scheduler.plan import (
    Busy,
    LoadDecision,
    PlannerConfig,
    UnloadDecision,
    Unplaceable,
    UrgentPlacement,
)


def place_urgently(  # noqa: PLR0917 (the signature the shell calls)
    state: FleetState,
    model_id: str,
    requester: Requester,
    now: float,
    config: PlannerConfig,
    busy: Busy,
) -> UrgentPlacement | Unplaceable:
    """Where to load ``model_id`` for ``requester`` right now, or why nowhere can."""
    refused = _refused(state, model_id, requester)
    if refused:
        return Unplaceable(model_id=model_id, reason=refused)
    existing = _already_placed(state, model_id, requester)
    if existing is not None:
        return existing
    nodes = [n for n in f.provisionable_nodes(state) if node_admits(requester, n)]
    entry = state.catalog[model_id].entry
    candidates = [
        n
        for n in nodes
        if f.fits_at_all(state, n, model_id) and not f.in_backoff(n, model_id, now, config)
    ]
    free = [n for n in candidates if _fits_now(state, n, entry, ())]
    if free:
        return _into_free_room(state, entry, free)
    chosen = _cheapest_eviction(state, entry, candidates, now=now, config=config, busy=busy)
    if chosen is not None:
        return chosen
    if not nodes:
        why = "no online provisionable node satisfies this key's policy"
    else:
        why = why_unplaceable(
            state, entry, nodes, now=now, config=config, busy=busy, scope="eligible node"
        )
    return Unplaceable(model_id=model_id, reason=why or "no eligible node has room for it")


def _refused(state: FleetState, model_id: str, requester: Requester) -> str:
    """Why this model is not placed for anyone asking with this key ("" if it may be)."""
    c = state.catalog.get(model_id)
    if c is None or not c.offered:
        return f"{model_id} is not offered"
    if not model_allowed(requester, model_id):
        return f"this key may not use {model_id}"
    return ""


def _already_placed(
    state: FleetState, model_id: str, requester: Requester
) -> UrgentPlacement | None:
    """The node already serving (or else loading) it for this requester, if any."""
    found = sorted(
        (p.phase != "ready", n.node_id, p.phase)
        for n in state.nodes.values()
        if n.online and (p := n.placements.get(model_id)) is not None and node_admits(requester, n)
    )
    if not found:
        return None
    loading, node_id, phase = found[0]
    reason = f"already {phase} on {node_id}" if loading else f"already ready on {node_id}"
    return UrgentPlacement(load=LoadDecision(node_id=node_id, model_id=model_id, reason=reason))


def _fits_now(
    state: FleetState, node: NodeState, entry: CatalogEntry, evicted: Sequence[str]
) -> bool:
    """Whether ``entry`` fits ``node``'s VRAM and disk once ``evicted`` are gone.

    Disk counts the weights of every model in memory plus the new one: files
    not in memory are the agent's LRU cache, removed when room is needed.
    """
    vram = vram_free_mb(state, node) + f.memory_vram_mb(state, node, evicted)
    disk_used = f.memory_disk_mb(state, node) - sum(
        c.entry.disk_mb for m in evicted if (c := state.catalog.get(m)) is not None
    )
    return entry.vram_mb <= vram and disk_used + entry.disk_mb <= node.disk_budget_mb


def _into_free_room(
    state: FleetState, entry: CatalogEntry, free: Sequence[NodeState]
) -> UrgentPlacement:
    best = min(free, key=lambda n: (entry.id not in n.on_disk, -vram_free_mb(state, n), n.node_id))
    room = vram_free_mb(state, best)
    weights = "weights already on disk" if entry.id in best.on_disk else "downloading weights"
    reason = f"requested now; fits in free VRAM on {best.node_id} ({room} MB free); {weights}"
    return UrgentPlacement(
        load=LoadDecision(node_id=best.node_id, model_id=entry.id, reason=reason)
    )


def _cheapest_eviction(
    state: FleetState,
    entry: CatalogEntry,
    candidates: Sequence[NodeState],
    *,
    now: float,
    config: PlannerConfig,
    busy: Busy,
) -> UrgentPlacement | None:
    """Evict the least-demanded ready models on the node where that loses the least demand."""
    rates: dict[str, float] = {}

    def rate(m: str) -> float:
        if m not in rates:
            rates[m] = f.demand_rate(state, m, now, config)
        return rates[m]

    best: tuple[float, int, str, list[str]] | None = None
    for node in candidates:
        victims = _victims(state, node, entry, rate, busy)
        if victims is not None:
            key = (sum(rate(m) for m in victims), len(victims), node.node_id)
            if best is None or key < best[:3]:
                best = (*key, victims)
    if best is None:
        return None
    _, _, node_id, victims = best
    return _evicting(state, entry, node_id, [(m, rate(m)) for m in victims])


def _evicting(
    state: FleetState, entry: CatalogEntry, node_id: str, victims: Sequence[tuple[str, float]]
) -> UrgentPlacement:
    """The load on ``node_id`` and its evictions, each with its reason."""
    on_disk = entry.id in state.nodes[node_id].on_disk
    weights = "weights already on disk" if on_disk else "downloading weights"
    names = [m for m, _ in victims]
    demand = ", ".join(f"{m} {rps(r)}" for m, r in victims)
    reason = f"requested now; evicting {listed(names)} on {node_id} (least demand: {demand}); "
    evictions = tuple(
        UnloadDecision(
            node_id=node_id,
            model_id=m,
            reason="evicted",
            evicted_for=entry.id,
            detail=f"made room for {entry.id}, requested now; {m} had {rps(r)}",
        )
        for m, r in victims
    )
    load = LoadDecision(node_id=node_id, model_id=entry.id, reason=reason + weights)
    return UrgentPlacement(load=load, evictions=evictions)


def _victims(
    state: FleetState,
    node: NodeState,
    entry: CatalogEntry,
    rate: Callable[[str], float],
    busy: Busy,
) -> list[str] | None:
    """The shortest lowest-demand-first run of evictable models that makes room, if any."""
    order = sorted(
        f.evictable(node, busy),
        key=lambda m: f.victim_key(rate(m), _vram(state, m), m),
    )
    for k in range(1, len(order) + 1):
        if _fits_now(state, node, entry, order[:k]):
            return order[:k]
    return None


def _vram(state: FleetState, model_id: str) -> int:
    c = state.catalog.get(model_id)
    return c.entry.vram_mb if c is not None else 0
