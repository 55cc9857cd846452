"""Urgent placement: where a just-requested cold model goes now, and what makes room for it.

A request is blocking on this decision, so it is small, greedy and
separate from the global plan (which rebalances on its next cadence). The
candidates are only nodes the requester's key admits — fail-closed, for
loading exactly as for serving — that are online, provisionable, could ever
hold the model, are not backing off from it and do not hold it already.

1. **Free room.** A node where it fits now wins: weights already on disk
   first (seconds to load instead of minutes), else the node with the least
   left to download ahead of it (one link per node: queued behind another
   model's download, a first load takes twice as long), then the tightest
   fit — the least VRAM left over — so small models fill small gaps and a
   big node's room stays whole for a big model (worst fit strands large
   models: simulations/README.md), then node id.
2. **Evict idle copies, by demand.** Each copy is costed by the demand it
   would leave unserved, and may go only for a model with more demand than
   that, or when it is the long tail (``_room``,
   :func:`~porten.scheduler.filters.may_evict_for`): a rarely used model
   never pushes out one the fleet serves more, so two models never evict
   each other back and forth. The node losing the least demand wins. It
   happens at once: a requested model does not wait out an anti-thrash delay.
3. **Drain busy copies.** Where only copies serving requests stand in the
   way, the admissible ones are drained (:class:`DrainPlacement`): they take
   no new requests and are unloaded when those in flight finish, and the
   model is placed once the room is free. A request in flight is never cut
   off, and a busy tail model cannot hold its room against another for ever.

A load in progress is never evicted or drained. When only protected models
could make room, the answer is :class:`Unplaceable` with the reason; the
request is retried (the hub answers 503 with ``Retry-After``) and the global
planner weighs the model's unmet demand on its next round.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from porten.domain.state import FleetState, NodeState, vram_free_mb
from porten.domain.values import CatalogEntry
from porten.scheduler import _room
from porten.scheduler import filters as f
from porten.scheduler._explain import listed, rps, why_unplaceable
from porten.scheduler.eligibility import Requester, model_allowed, node_admits
from porten.scheduler.plan import (
    Busy,
    DrainPlacement,
    LoadDecision,
    PlannerConfig,
    UnloadDecision,
    Unplaceable,
    UrgentDecision,
    UrgentPlacement,
)


def place_urgently(  # noqa: PLR0917 (the signature the shell calls)
    state: FleetState,
    model_id: str,
    requester: Requester,
    now: float,
    config: PlannerConfig,
    busy: Busy,
) -> UrgentDecision:
    """Where to load ``model_id`` for ``requester`` right now, what makes room, or why not."""
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
        if model_id not in n.placements
        and f.fits_at_all(state, n, model_id)
        and not f.in_backoff(n, model_id, now, config)
    ]
    free = [n for n in candidates if _room.fits_once_gone(state, n, entry, ())]
    if free:
        return _into_free_room(state, entry, free)
    costs = _room.Costs(state, entry, now, config, busy)
    made = _make_room(state, entry, candidates, costs, busy)
    if made is not None:
        return made
    if not nodes:
        why = "no online provisionable node satisfies this key's policy"
    else:
        why = why_unplaceable(
            state, entry, nodes, now=now, config=config, busy=busy, scope="eligible node"
        )
    return Unplaceable(
        model_id=model_id,
        reason=why or "no eligible node has room for it",
        retry_after_s=_backoff_left(state, entry, nodes, now, config),
    )


def _backoff_left(
    state: FleetState,
    entry: CatalogEntry,
    nodes: Sequence[NodeState],
    now: float,
    config: PlannerConfig,
) -> float:
    """Seconds until the first node that could hold the model ends its back-off (0 if none is
    backing off): when a retry could start a load, per the back-off schedule."""
    ends = [
        f.backoff_ends_at(n, entry.id, config)
        for n in nodes
        if f.fits_at_all(state, n, entry.id) and f.in_backoff(n, entry.id, now, config)
    ]
    return max(min(ends) - now, 0.0) if ends else 0.0


def _make_room(
    state: FleetState,
    entry: CatalogEntry,
    candidates: Sequence[NodeState],
    costs: _room.Costs,
    busy: Busy,
) -> UrgentDecision | None:
    """Evict idle copies, else drain busy ones; None if even every copy could not make room."""
    evicting = _room.cheapest_eviction(state, entry, candidates, costs, busy)
    if evicting is not None:
        return _evicting(state, entry, evicting, costs)
    draining = _room.cheapest_drain(state, entry, candidates, costs, busy)
    if draining is not None:
        return _draining(state, entry, draining, costs)
    protected = _room.protected(state, entry, candidates, costs)
    if protected:
        return Unplaceable(model_id=entry.id, reason=_protected_reason(costs, protected))
    return None


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
    """The node already serving (or else loading) it for this requester, if any.

    A copy draining away is neither: it takes no new requests.
    """
    found = sorted(
        (p.phase != "ready", n.node_id, p.phase)
        for n in state.nodes.values()
        if n.online
        and (p := n.placements.get(model_id)) is not None
        and not p.draining
        and node_admits(requester, n)
    )
    if not found:
        return None
    loading, node_id, phase = found[0]
    reason = f"already {phase} on {node_id}" if loading else f"already ready on {node_id}"
    return UrgentPlacement(load=LoadDecision(node_id=node_id, model_id=model_id, reason=reason))


def _into_free_room(
    state: FleetState, entry: CatalogEntry, free: Sequence[NodeState]
) -> UrgentPlacement:
    """Weights on disk first; else the node with the least left to download before it (its
    link is the wait); then the tightest fit (least VRAM left); then node id."""

    def ahead(n: NodeState) -> int:
        return 0 if entry.id in n.on_disk else f.download_queue_mb(state, n)

    best = min(
        free,
        key=lambda n: (entry.id not in n.on_disk, ahead(n), vram_free_mb(state, n), n.node_id),
    )
    room, queued = vram_free_mb(state, best), ahead(best)
    behind = f" behind {queued} MB of other downloads" if queued else ""
    reason = (
        f"requested now; fits in free VRAM on {best.node_id} ({room} MB free{behind}); "
        f"{_weights(entry, best)}"
    )
    return UrgentPlacement(
        load=LoadDecision(node_id=best.node_id, model_id=entry.id, reason=reason)
    )


def _evicting(
    state: FleetState, entry: CatalogEntry, room: _room.Room, costs: _room.Costs
) -> UrgentPlacement:
    """The load on the chosen node and its evictions, each with its reason."""
    node = state.nodes[room.node_id]
    reason = (
        f"requested now ({rps(costs.wanted)}); evicting {listed(room.victims)} on "
        f"{room.node_id} ({_losses(costs, room)}); {_weights(entry, node)}"
    )
    evictions = _unloads(entry, room, costs, "made room for {m}, requested now")
    load = LoadDecision(node_id=room.node_id, model_id=entry.id, reason=reason)
    return UrgentPlacement(load=load, evictions=evictions)


def _draining(
    state: FleetState, entry: CatalogEntry, room: _room.Room, costs: _room.Costs
) -> DrainPlacement:
    """The drains that make room on the chosen node (none: drains under way will)."""
    node = state.nodes[room.node_id]
    going = sorted(m for m, p in node.placements.items() if p.draining)
    if not room.victims:
        reason = f"waiting for {listed(going)} to finish draining on {room.node_id}"
    else:
        reason = (
            f"requested now ({rps(costs.wanted)}); draining {listed(room.victims)} on "
            f"{room.node_id} ({_losses(costs, room)}): they finish the requests "
            "they are serving, take no new ones, then unload"
        )
    drains = _unloads(entry, room, costs, "drained to make room for {m}, requested now")
    return DrainPlacement(
        model_id=entry.id, node_id=room.node_id, drains=drains, reason=reason
    )


def _unloads(
    entry: CatalogEntry, room: _room.Room, costs: _room.Costs, why: str
) -> tuple[UnloadDecision, ...]:
    return tuple(
        UnloadDecision(
            node_id=room.node_id,
            model_id=m,
            reason="evicted",
            evicted_for=entry.id,
            detail=f"{why.format(m=entry.id)}; {m} had {_loss_words(costs, room.node_id, m)}",
        )
        for m in room.victims
    )


def _losses(costs: _room.Costs, room: _room.Room) -> str:
    return ", ".join(f"{m} {_loss_words(costs, room.node_id, m)}" for m in room.victims)


def _loss_words(costs: _room.Costs, node_id: str, m: str) -> str:
    """``"0.02 req/s"``, with why it may go when that is not less than what is wanted."""
    loss = costs.loss(node_id, m)
    words = rps(loss)
    if costs.copies[m] > 1:
        words += f" beyond its other {costs.copies[m] - 1} ready copies"
    if loss >= costs.wanted:
        words += ", the long tail"
    return words


def _protected_reason(costs: _room.Costs, protected: Iterable[tuple[str, str]]) -> str:
    """Why the copies that could make room may not, each in a few words."""

    def why(node_id: str, m: str) -> str:
        node = costs.state.nodes[node_id]
        words = [rps(costs.loss(node_id, m))]
        if f.is_busy(costs.busy, node_id, m):
            words.append("serving requests")
        if _room.just_loaded(node, m, costs.now, costs.config):
            words.append("just loaded")
        return f"{m} on {node_id}: {', '.join(words)}"

    named = "; ".join(why(n, m) for n, m in sorted(protected))
    return (
        f"making room would take copies with more demand than its own {rps(costs.wanted)}, "
        f"serving requests or loaded too recently to judge ({named}); it is retried as "
        "demand or room changes"
    )


def _weights(entry: CatalogEntry, node: NodeState) -> str:
    return "weights already on disk" if entry.id in node.on_disk else "downloading weights"
