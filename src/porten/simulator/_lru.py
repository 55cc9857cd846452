"""The baseline: per-node LRU with a keep-alive, as Ollama (and ModelMesh-style caches) do.

What it does, and nothing more:

* a model is loaded only when a request finds no replica ready or loading
  (the kernel routes warm requests and shares a load in flight exactly as for
  Porten, so only the decisions below differ);
* the node for a cold model is the one that can fit it with the fewest
  evictions, then the least loaded (requests running and queued), then the
  one with the most free VRAM (Ollama orders GPUs by free memory, and it
  keeps the choice independent of node names), then by id;
  evictions on that node take idle ready models, least recently used first
  (recency is the placement's ``last_used_at``: its last request's end);
* a model unloads after ``keep_alive_s`` without a request (Ollama's
  ``OLLAMA_KEEP_ALIVE``, 5 minutes by default); a model with requests running
  or queued is never evicted;
* one copy per model: it never adds a replica for load, never pre-loads, and
  has no idea of demand beyond recency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from porten.domain.state import NodeState, vram_free_mb
from porten.scheduler.eligibility import node_admits
from porten.scheduler.plan import (
    LoadDecision,
    UnloadDecision,
    Unplaceable,
    UrgentDecision,
    UrgentPlacement,
)

if TYPE_CHECKING:
    from porten.simulator._kernel import Simulation


class LruPolicy:
    """Least-recently-used eviction per node, keep-alive unloads, no planner."""

    name = "lru"

    def __init__(self, keep_alive_s: float = 300.0) -> None:
        self.keep_alive_s = keep_alive_s
        self._timers: set[tuple[str, str]] = set()
        self._counts = {"cold_placements": 0, "cold_refused": 0, "keep_alive_checks": 0}

    def params(self) -> dict[str, float | int | str]:
        """The baseline's knobs as the report states them."""
        return {
            "keep_alive_s": self.keep_alive_s,
            "eviction": "per-node least recently used, idle models only",
            "node_choice": "fewest evictions, least loaded, most free VRAM, node id",
            "replicas": "one per model, loaded on a cold request only",
        }

    def diagnostics(self) -> dict[str, int | str]:
        """Cold placements made and refused, keep-alive timers fired."""
        return dict(self._counts)

    def place_cold(
        self, sim: Simulation, model_id: str, now: float
    ) -> UrgentDecision:
        """The node that fits ``model_id`` with the fewest LRU evictions (then least loaded)."""
        from porten.simulator._kernel import REQUESTER

        need = sim.entries[model_id].vram_mb
        best: tuple[int, int, int, str] | None = None
        best_victims: list[str] = []
        for node_id in sorted(sim.state.nodes):
            node = sim.state.nodes[node_id]
            if not node.online or not node.provisionable or node.vram_budget_mb < need:
                continue
            if not node_admits(REQUESTER, node):
                continue
            victims = self._victims(sim, node, need)
            if victims is None:
                continue
            free = vram_free_mb(sim.state, node)
            key = (len(victims), sim.node_load(node_id), -free, node_id)
            if best is None or key < best:
                best, best_victims = key, victims
        if best is None:
            self._counts["cold_refused"] += 1
            return Unplaceable(model_id=model_id, reason="no node can free enough idle VRAM")
        self._counts["cold_placements"] += 1
        node_id = best[3]
        evictions = tuple(
            UnloadDecision(
                node_id=node_id,
                model_id=v,
                reason="evicted",
                evicted_for=model_id,
                detail="least recently used",
            )
            for v in best_victims
        )
        reason = f"lru: cold request for {model_id}"
        load = LoadDecision(node_id=node_id, model_id=model_id, reason=reason)
        return UrgentPlacement(load=load, evictions=evictions)

    def _victims(self, sim: Simulation, node: NodeState, need: int) -> list[str] | None:
        """Idle ready models to evict from ``node``, LRU first, until ``need`` MiB fit."""
        free = vram_free_mb(sim.state, node)
        if free >= need:
            return []
        idle = sorted(
            (p.last_used_at, m)
            for m, p in node.placements.items()
            if p.phase == "ready" and not sim.busy.get((node.node_id, m))
        )
        victims = []
        for _, m in idle:
            victims.append(m)
            free += sim.entries[m].vram_mb
            if free >= need:
                return victims
        return None

    def on_window(self, sim: Simulation, now: float) -> None:
        """The baseline ignores demand."""

    def on_idle(self, sim: Simulation, node_id: str, model_id: str, now: float) -> None:
        """Start the keep-alive clock (one pending timer per placement at most)."""
        key = (node_id, model_id)
        if key not in self._timers:
            self._timers.add(key)
            sim.set_timer(now + self.keep_alive_s, key)

    def on_timer(self, sim: Simulation, payload: object, now: float) -> None:
        """Unload if idle for the whole keep-alive; else wait for the new expiry."""
        assert isinstance(payload, tuple)
        node_id, model_id = payload
        self._timers.discard(payload)
        self._counts["keep_alive_checks"] += 1
        node = sim.state.nodes.get(node_id)
        p = node.placements.get(model_id) if node is not None else None
        if p is None or p.phase != "ready" or sim.busy.get(payload):
            return  # gone, or busy: the next on_idle restarts the clock
        expiry = p.last_used_at + self.keep_alive_s
        if expiry <= now:
            sim.unload(node_id, model_id, "idle", detail=f"idle {self.keep_alive_s:g} s")
        else:
            self._timers.add(payload)
            sim.set_timer(expiry, payload)
