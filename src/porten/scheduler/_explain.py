"""Reasons in words: why a model cannot be placed, why a load or an eviction happens.

These strings end up in the log (``load_requested.reason``,
``model_unloaded.detail``) and in ``porten events explain``, so each names
the number that decided — the size against the largest budget, the demand
against the replicas running, the failures behind a back-off — rather than a
code. Pure functions of their arguments, like the rest of the core.
"""

from __future__ import annotations

from collections.abc import Sequence

from porten.domain.state import FleetState, NodeState
from porten.domain.values import CatalogEntry
from porten.scheduler import filters as f
from porten.scheduler.plan import Busy, PlannerConfig

#: How many node names a reason lists before it says "and N more".
_MAX_LISTED = 3


def plural(n: int, word: str) -> str:
    """``"1 replica"``, ``"2 replicas"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def listed(names: Sequence[str]) -> str:
    """``"n1, n2, n3 and 4 more"``."""
    shown = ", ".join(names[:_MAX_LISTED])
    rest = len(names) - _MAX_LISTED
    return f"{shown} and {rest} more" if rest > 0 else shown


def rps(rate: float) -> str:
    """A demand rate as people read it: ``"3.2 req/s"``, ``"0.004 req/s"``."""
    if rate == 0:
        return "0 req/s"
    return f"{rate:.1f} req/s" if rate >= 0.1 else f"{rate:.2g} req/s"


def why_unplaceable(
    state: FleetState,
    entry: CatalogEntry,
    nodes: Sequence[NodeState],
    *,
    now: float,
    config: PlannerConfig,
    busy: Busy,
    scope: str = "node",
) -> str:
    """Why ``entry`` fits none of ``nodes`` (online, provisionable, allowed); "" if one could.

    ``scope`` names what ``nodes`` are in the words ("eligible node" when a
    key's policy already narrowed them).

    The checks go from the most permanent to the most passing: the size
    against the budgets, back-off after failures, then room that only
    requests in flight or loads in progress are holding.
    """
    m = entry.id
    if not nodes:
        return "no online provisionable node"
    by_vram = [n for n in nodes if entry.vram_mb <= n.vram_budget_mb]
    if not by_vram:
        largest = max(n.vram_budget_mb for n in nodes)
        return f"{m} needs {entry.vram_mb} MB of VRAM; the largest {scope} budget is {largest} MB"
    fitting = [n for n in by_vram if entry.disk_mb <= n.disk_budget_mb]
    if not fitting:
        largest = max(n.disk_budget_mb for n in by_vram)
        return (
            f"{m} needs {entry.disk_mb} MB of disk; the largest disk budget of a {scope} "
            f"with the VRAM for it is {largest} MB"
        )
    open_ = [n for n in fitting if not f.in_backoff(n, m, now, config)]
    if not open_:
        return _backing_off(fitting, m, now, config)
    return _pinned(state, entry, open_, busy)


def _backing_off(nodes: Sequence[NodeState], m: str, now: float, config: PlannerConfig) -> str:
    if len(nodes) == 1:
        n = nodes[0]
        failures = n.failures[m].count
        wait = f.backoff_ends_at(n, m, config) - now
        return (
            f"backing off after {plural(failures, 'failed load')} on {n.node_id} "
            f"(next try in {wait:.0f} s)"
        )
    named = [f"{n.node_id} ({n.failures[m].count})" for n in nodes]
    return f"backing off after failed loads on every node that could hold it: {listed(named)}"


def _pinned(state: FleetState, entry: CatalogEntry, nodes: Sequence[NodeState], busy: Busy) -> str:
    """Why no node has room even after evicting everything evictable ("" if one has)."""
    serving: list[str] = []
    for n in nodes:
        evictable = set(f.evictable(n, busy))
        keep = [m for m in n.placements if m not in evictable]
        vram = f.memory_vram_mb(state, n, keep) + entry.vram_mb
        disk = sum(c.entry.disk_mb for m in keep if (c := state.catalog.get(m))) + entry.disk_mb
        if vram <= n.vram_budget_mb and disk <= n.disk_budget_mb:
            return ""
        if any(f.is_busy(busy, n.node_id, m) for m in n.placements):
            serving.append(n.node_id)
    if serving:
        return (
            "every node that could hold it is serving requests for the models it would evict "
            f"({listed(serving)})"
        )
    return "every node that could hold it is busy loading other models"


def load_reason(
    rate: float, desired: int, running: int, on_disk: bool, replacing: Sequence[str]
) -> str:
    """Why the planner loads a replica: the demand, the replicas it wants, what runs now."""
    words = f"demand {rps(rate)} wants {plural(desired, 'replica')}; {running} running"
    if replacing:
        words += f"; replaces the one leaving {listed(replacing)}"
    return words + ("; weights already on disk" if on_disk else "; downloading weights")


def eviction_detail(
    model_id: str, rate: float, left: int, made_room_for: Sequence[tuple[str, float]]
) -> str:
    """Why a placement is evicted for room: what it loses to, and what the model keeps.

    ``left`` is how many replicas the evicted model still has after the plan.
    """
    keeps = f"keeps {plural(left, 'replica')}" if left else "has no other replica"
    if not made_room_for:
        return f"the node is over its budget; {model_id} ({rps(rate)}) is the cheapest to lose"
    who = ", ".join(f"{m} ({rps(r)})" for m, r in made_room_for)
    return f"made room for {who}; {model_id} ({rps(rate)}) {keeps}"
