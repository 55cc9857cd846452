"""Filters and scores: the small pure functions the planner and the urgent placer are made of.

Each answers one question about the fleet as the log says it is — may this
node ever hold that model, is it backing off, how much is a model wanted, how
many replicas does that want, what is each replica worth — so each can be
tested on its own, without the solver. Nodes come back sorted by id and
nothing here reads a clock: ``now`` is an argument, so a replay decides the
same way.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from porten.domain.state import FleetState, NodeState, Placement, model_disk_mb, model_vram_mb
from porten.scheduler.plan import Busy, PlannerConfig, UnloadDecision

#: The largest exponent back-off doubling is taken to; beyond it the cap applies anyway.
_MAX_DOUBLINGS = 60
_MIB = 1 << 20


# --- nodes --------------------------------------------------------------------------------------


def provisionable_nodes(state: FleetState) -> list[NodeState]:
    """Nodes the hub may load onto and evict from: online, provisionable, budgets > 0, by id.

    A node that reports a VRAM or disk budget of 0 has been switched off for
    placement by its owner; fixed-set nodes (Ollama, OpenAI engines) serve what
    their owner installed and are never touched.
    """
    return sorted(
        (
            n
            for n in state.nodes.values()
            if n.online and n.provisionable and n.vram_budget_mb > 0 and n.disk_budget_mb > 0
        ),
        key=lambda n: n.node_id,
    )


def fits_at_all(state: FleetState, node: NodeState, model_id: str) -> bool:
    """Whether ``node``'s budgets could ever hold ``model_id`` (on an otherwise empty node).

    A model the catalog does not know never fits: its size is unknown.
    """
    c = state.catalog.get(model_id)
    if c is None:
        return False
    return c.entry.vram_mb <= node.vram_budget_mb and c.entry.disk_mb <= node.disk_budget_mb


def is_pending(p: Placement) -> bool:
    """Whether a load is in progress (requested, downloading or loading): never evicted."""
    return p.phase != "ready"


def download_queue_mb(state: FleetState, node: NodeState) -> int:
    """Weights ``node`` still has to download for loads in progress: a new download waits
    for them (one link). A requested load of weights not on disk counts whole."""
    left = 0
    for m, p in node.placements.items():
        if p.phase == "downloading":
            total = p.total_bytes or model_disk_mb(state, m) * _MIB
            left += max(total - p.done_bytes, 0) // _MIB
        elif p.phase == "requested" and m not in node.on_disk:
            left += model_disk_mb(state, m)
    return left


def is_busy(busy: Busy, node_id: str, model_id: str) -> bool:
    """Whether requests are in flight for ``model_id`` on ``node_id``: never evicted."""
    return busy.get((node_id, model_id), 0) > 0


def evictable(node: NodeState, busy: Busy) -> list[str]:
    """Models on ``node`` that may be unloaded: ready, not serving a request and not already
    draining (the shell unloads those as their last request ends), by id."""
    return sorted(
        m
        for m, p in node.placements.items()
        if not is_pending(p) and not p.draining and not is_busy(busy, node.node_id, m)
    )


def memory_disk_mb(state: FleetState, node: NodeState) -> int:
    """Disk held by the weights of models in memory (any phase) on ``node``.

    Weights on disk but not in memory do not count: the agent's LRU cache
    removes them when a new download needs the room.
    """
    return sum(model_disk_mb(state, m) for m in node.placements)


def memory_vram_mb(state: FleetState, node: NodeState, models: Iterable[str]) -> int:
    """VRAM the catalog says ``models`` take (unknown models take none)."""
    return sum(model_vram_mb(state, m) for m in models)


# --- back-off -------------------------------------------------------------------------------------


def backoff_s(failures: int, config: PlannerConfig) -> float:
    """How long to wait after ``failures`` consecutive failed loads: base * 2^(n-1), capped."""
    if failures <= 0:
        return 0.0
    doublings = min(failures - 1, _MAX_DOUBLINGS)
    return min(config.failure_backoff_s * 2.0**doublings, config.failure_backoff_max_s)


def backoff_ends_at(node: NodeState, model_id: str, config: PlannerConfig) -> float:
    """When ``node`` may try ``model_id`` again (0.0 if it never failed there)."""
    f = node.failures.get(model_id)
    if f is None or f.count <= 0:
        return 0.0
    return f.last_at + backoff_s(f.count, config)


def in_backoff(node: NodeState, model_id: str, now: float, config: PlannerConfig) -> bool:
    """Whether loads of ``model_id`` on ``node`` are paused after consecutive failures."""
    return now < backoff_ends_at(node, model_id, config)


# --- demand and value -----------------------------------------------------------------------------


def demand_rate(state: FleetState, model_id: str, now: float, config: PlannerConfig) -> float:
    """Requests per second for ``model_id`` (served + unmet) over the last demand window.

    Windows count when they start within ``[now - demand_window_s, now]``.
    Unmet requests count as much as served ones: they are demand the fleet
    failed, which is exactly what should pull a model in.
    """
    d = state.demand.get(model_id)
    if d is None or config.demand_window_s <= 0:
        return 0.0
    since = now - config.demand_window_s
    total = sum(w.served + w.unmet for w in d.windows if since <= w.start <= now)
    return total / config.demand_window_s


def desired_replicas(rate: float, config: PlannerConfig, eligible_nodes: int) -> int:
    """Replicas ``rate`` wants: one per ``replica_capacity_rps``, at least one, capped.

    No demand wants none. The cap is ``max_replicas`` and the number of nodes
    that could hold the model (two replicas never share a node).
    """
    if rate <= 0.0 or eligible_nodes <= 0:
        return 0
    per_replica = max(config.replica_capacity_rps, 1e-9)
    wanted = max(1, math.ceil(rate / per_replica - 1e-9))
    return min(wanted, config.max_replicas, eligible_nodes)


def availability_value(config: PlannerConfig) -> float:
    """What serving a model at all is worth, on top of the demand its first replica serves.

    It exceeds a download plus an eviction plus a full replica's worth of
    demand, so every wanted model gets its first replica before any model gets
    a second one — a cold model's requests wait minutes, a busy model's extra
    requests only queue — while between two first replicas it cancels out and
    demand alone decides.
    """
    full_replica = config.value_per_rps * config.replica_capacity_rps
    return config.load_cost_download + config.unload_cost + full_replica


def replica_values(rate: float, desired: int, config: PlannerConfig) -> tuple[float, ...]:
    """The marginal value of the 1st, 2nd, … ``desired``-th replica of a model with ``rate``.

    Replica k serves what the first k-1 leave over, up to one replica's
    capacity; the first also carries :func:`availability_value`. The values
    never increase, so the fleet's value is concave in each model's replicas.
    """
    c = config.replica_capacity_rps
    out: list[float] = []
    for k in range(desired):
        served = min(c, max(0.0, rate - k * c)) if k else min(c, rate)
        value = served * config.value_per_rps
        out.append(value + availability_value(config) if k == 0 else value)
    return tuple(out)


def victim_key(rate: float, vram_mb: int, model_id: str) -> tuple[float, int, str]:
    """Order eviction candidates: lowest demand first, then the largest (fewer evictions), id."""
    return (rate, -vram_mb, model_id)


# --- what an urgent eviction costs ------------------------------------------------------------


def ready_copies(state: FleetState) -> Counter[str]:
    """Per model, the online nodes that have it ready."""
    out: Counter[str] = Counter()
    for n in state.nodes.values():
        if n.online:
            out.update(m for m, p in n.placements.items() if p.phase == "ready")
    return out


def copy_loss(rate: float, copies: int, config: PlannerConfig) -> float:
    """Demand left unserved if one of ``copies`` ready copies of a model with ``rate`` goes.

    The only copy loses all of it: every request becomes a cold start. A
    replica loses only what the others cannot absorb at
    ``replica_capacity_rps`` each — its requests queue, they do not start cold —
    so a replica is the cheapest thing to evict.
    """
    return max(0.0, rate - max(copies - 1, 0) * config.replica_capacity_rps)


def reload_requests(rate: float, vram_mb: int, config: PlannerConfig) -> float:
    """Requests expected while a model with ``rate`` loads again from local disk."""
    return rate * vram_mb / 1024 * config.reload_s_per_gib


def may_evict_for(
    loss: float,
    vram_mb: int,
    wanted: tuple[float, int],
    config: PlannerConfig,
    *,
    serving: bool = False,
    starved: bool = False,
) -> bool:
    """Urgent placement's admission rule: may a copy losing ``loss`` (``vram_mb`` large)
    make room for a model wanted at ``wanted`` = (its demand, its VRAM)?

    * An idle copy goes for a model with ``displace_ratio`` times the demand it
      loses — the long tail never pushes out what the fleet serves more, and
      two models with about the same demand never evict each other back and
      forth as their windowed rates wobble — or when it is itself the long
      tail (fewer than ``tail_requests`` requests expected while it reloads),
      so rarely used models take turns in the room they share.
    * A copy serving requests is drained (it finishes them, takes no new ones)
      for such a model when that is not the long tail itself — tail models
      wait for each other to go idle — or, when it is the long tail, for a
      ``starved`` model (:func:`starved_s`), so a busy tail model cannot hold
      the room for ever.
    """
    more = loss * config.displace_ratio < wanted[0]
    tail = reload_requests(loss, vram_mb, config) < config.tail_requests
    if not serving:
        return more or tail
    wanted_tail = reload_requests(wanted[0], wanted[1], config) < config.tail_requests
    return (more and not wanted_tail) or (starved and tail)


def starved_s(state: FleetState, model_id: str, now: float) -> float:
    """How long ``model_id``'s requests have gone unmet with none served (0.0 if they have not).

    Read from the recorded demand windows, newest first: the run of windows
    with unmet requests and nothing served, back to its oldest start. Windows
    without traffic are not recorded, so quiet gaps do not end the run; one
    served request does.
    """
    d = state.demand.get(model_id)
    if d is None or not d.windows:
        return 0.0
    start = None
    for w in reversed(d.windows):
        if w.served or not w.unmet:
            break
        start = w.start
    return max(0.0, now - start) if start is not None else 0.0


# --- withdrawn models ----------------------------------------------------------------------------


def withdrawn_unloads(state: FleetState, busy: Busy) -> list[UnloadDecision]:
    """Idle ready copies of models the catalog no longer offers, on provisionable nodes.

    Withdrawing a model stops new requests at once; the copies left in memory
    go here, reason ``operator`` (an operator withdrew it), when no request is
    in flight — a busy one on a later plan, once its requests have ended.
    Fixed-set nodes keep what their owner installed.
    """
    out: list[UnloadDecision] = []
    for node in sorted(state.nodes.values(), key=lambda n: n.node_id):
        if not (node.online and node.provisionable):
            continue
        for m in evictable(node, busy):
            c = state.catalog.get(m)
            if c is None or not c.offered:
                detail = f"{m} was withdrawn from the catalog"
                out.append(
                    UnloadDecision(
                        node_id=node.node_id, model_id=m, reason="operator", detail=detail
                    )
                )
    return out


# --- idle eviction ------------------------------------------------------------------------------


def idle_unloads(
    state: FleetState, now: float, config: PlannerConfig, busy: Busy
) -> list[UnloadDecision]:
    """Ready models on online provisionable nodes that nobody wanted for a whole window.

    A placement goes when it has served nothing for ``demand_window_s`` (its
    ``last_used_at`` is at least that old), has no request in flight, and its
    model saw no request at all (served or unmet) in the window. Fixed-set
    nodes are never idle-evicted; their owner decides what they hold.
    """
    out: list[UnloadDecision] = []
    window = config.demand_window_s
    rates: dict[str, float] = {}
    for node in sorted(state.nodes.values(), key=lambda n: n.node_id):
        if not (node.online and node.provisionable):
            continue
        for m in evictable(node, busy):
            unused_s = now - node.placements[m].last_used_at
            if unused_s < window:
                continue
            if m not in rates:
                rates[m] = demand_rate(state, m, now, config)
            if rates[m] > 0.0:
                continue
            detail = f"unused for {unused_s:.0f} s and no request in the last {window:.0f} s"
            out.append(
                UnloadDecision(node_id=node.node_id, model_id=m, reason="idle", detail=detail)
            )
    return out
