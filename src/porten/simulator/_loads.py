"""How a load, an unload and a request take simulated time, emitted as the hub would log them.

A load is ``load_requested``, then ``load_progressed`` (``downloading``, only
when the weights are not on the node's disk), ``load_progressed``
(``loading``) and ``model_loaded``. Downloads on one node share its link
first come, first served (``disk_mb / download_mb_per_s`` each); loading
into memory takes ``load_s_per_gb`` per GiB of the model's VRAM footprint —
the engine's :class:`~porten.agent.engines.sim.SimProfile` helpers, so the
simulator, the sim engine and both policies share one timing model.

Every decision is re-checked against the current state before its events
are appended (a busy model is never unloaded, a load that does not fit is
refused), as the hub's applier does; a refused decision is counted in the
report, and it should stay zero.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Literal

from porten.agent.engines.sim import download_time_s, generation_time_s, load_time_s
from porten.domain import events as ev
from porten.domain.state import FleetState, NodeState, disk_free_mb, vram_free_mb, vram_used_mb
from porten.domain.values import CatalogEntry, UnloadReason
from porten.scheduler.plan import DrainPlacement, UnloadDecision, UrgentPlacement
from porten.simulator._fleet import SimNode
from porten.simulator._metrics import Metrics

DOWNLOADED: Final = 1
READY: Final = 2
_MIB: Final = 1 << 20


class Request:
    """One trace request on its way through the fleet."""

    __slots__ = ("arrival", "cold", "index", "model", "node", "start", "waiting_on_load")

    def __init__(self, index: int, arrival: float, model: str) -> None:
        self.index, self.arrival, self.model = index, arrival, model
        self.node = ""
        self.start = 0.0
        self.cold = False
        self.waiting_on_load = False


class Load:
    """A load under way, and the requests waiting for it (one load, shared by all of them)."""

    __slots__ = ("cancelled", "load_id", "model_id", "node_id", "ready_at", "waiters")

    def __init__(self, node_id: str, model_id: str, load_id: str, ready_at: float) -> None:
        self.node_id, self.model_id, self.load_id = node_id, model_id, load_id
        self.ready_at = ready_at
        self.waiters: list[Request] = []
        self.cancelled = False


class NodeRun:
    """What the shell knows of a node beyond the log: slots in use, its queue, its link."""

    __slots__ = ("in_flight", "link_free_at", "node", "queue")

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self.in_flight = 0
        self.queue: deque[Request] = deque()
        self.link_free_at = 0.0


def service_s(node: SimNode, prompt_tokens: int, completion_tokens: int) -> float:
    """Seconds a request holds a slot: prefill (if modelled), first token, then the rest."""
    prefill = prompt_tokens / node.prefill_tokens_per_s if node.prefill_tokens_per_s else 0.0
    return prefill + generation_time_s(node.profile, completion_tokens)


class LoadMechanics:
    """Loads, unloads and disk space; mixed into the simulation, which provides the fields."""

    state: FleetState
    now: float
    nodes: dict[str, SimNode]
    runs: dict[str, NodeRun]
    entries: dict[str, CatalogEntry]
    busy: dict[tuple[str, str], int]
    loading: dict[str, list[Load]]
    metrics: Metrics
    ever_ready: set[str]
    _disk_used_at: dict[tuple[str, str], float]
    _drains: dict[tuple[str, str], UnloadDecision]
    _load_seq: int

    def emit(self, event: ev.AnyEvent) -> None:
        """Fold ``event`` into the state."""
        raise NotImplementedError

    def schedule(self, at: float, kind: int, payload: object) -> None:
        """Push a happening at ``at``."""
        raise NotImplementedError

    def freed(self) -> None:
        """Note that memory was released or a model became evictable."""
        raise NotImplementedError

    def assign(self, node_id: str, req: Request) -> None:
        """Queue ``req`` on ``node_id``."""
        raise NotImplementedError

    def policy_idle(self, node_id: str, model_id: str) -> None:
        """Tell the policy a ready placement has nothing to do."""
        raise NotImplementedError

    def apply_urgent(self, p: UrgentPlacement) -> bool:
        """Evict, then load, if the whole placement is still valid; else change nothing."""
        node_id, model_id = p.load.node_id, p.load.model_id
        node = self.state.nodes.get(node_id)
        entry = self.entries.get(model_id)
        if node is None or entry is None:
            self.metrics.rejected += 1
            return False
        if model_id in node.placements and not p.evictions:
            return True  # already ready or loading there: the caller attaches to it
        freed = 0
        for u in p.evictions:
            victim = self.state.nodes.get(u.node_id)
            vp = victim.placements.get(u.model_id) if victim is not None else None
            if vp is None or self.busy.get((u.node_id, u.model_id)):
                self.metrics.rejected += 1
                return False
            if u.node_id == node_id:
                freed += self.entries[u.model_id].vram_mb
        if vram_free_mb(self.state, node) + freed < entry.vram_mb:
            self.metrics.rejected += 1
            return False
        for u in p.evictions:
            self.unload(
                u.node_id,
                u.model_id,
                u.reason,
                evicted_for=u.evicted_for or model_id,
                detail=u.detail,
            )
        if self.start_load(node_id, model_id, p.load.reason):
            return True
        self.metrics.rejected += 1
        return False

    def apply_drain(self, d: DrainPlacement) -> None:
        """Drain each copy still ready there: no new requests; unloaded when its last ends."""
        for u in d.drains:
            node = self.state.nodes.get(u.node_id)
            p = node.placements.get(u.model_id) if node is not None else None
            if p is None or p.phase != "ready" or p.draining:
                self.metrics.rejected += 1
                continue
            self.emit(
                ev.ModelDraining(
                    at=self.now,
                    actor="planner",
                    node_id=u.node_id,
                    model_id=u.model_id,
                    evicted_for=u.evicted_for,
                    detail=u.detail,
                )
            )
            self._drains[(u.node_id, u.model_id)] = u
            if not self.busy.get((u.node_id, u.model_id)):
                self.finish_drain(u.node_id, u.model_id)

    def finish_drain(self, node_id: str, model_id: str) -> None:
        """The drained copy's last request ended: unload it."""
        u = self._drains.pop((node_id, model_id), None)
        self.unload(
            node_id,
            model_id,
            "evicted",
            evicted_for=u.evicted_for if u is not None else "",
            detail=u.detail if u is not None else "drained",
        )

    def start_load(self, node_id: str, model_id: str, reason: str) -> bool:
        """Append the load's first events and schedule the rest; False if it cannot start."""
        node = self.state.nodes.get(node_id)
        entry = self.entries.get(model_id)
        if (
            node is None
            or entry is None
            or not node.online
            or model_id in node.placements
            or vram_free_mb(self.state, node) < entry.vram_mb
        ):
            return False
        download = model_id not in node.on_disk
        if download and not self._make_disk_room(node, entry):
            return False
        self._load_seq += 1
        load_id = f"L{self._load_seq}"
        now, sim_node, run = self.now, self.nodes[node_id], self.runs[node_id]
        self.emit(
            ev.LoadRequested(
                at=now,
                actor="planner",
                node_id=node_id,
                model_id=model_id,
                load_id=load_id,
                reason=reason,
            )
        )
        self._check_vram(node_id)
        self.metrics.loads += 1
        self.metrics.vram(now, claimed=entry.vram_mb)
        self._disk_used_at[(node_id, model_id)] = now
        load_s = load_time_s(sim_node.profile, entry.vram_mb)
        total = entry.disk_mb * _MIB
        if download:
            self._progress(now, node_id, model_id, load_id, phase="downloading", done=0,
                           total=total)
            done = max(now, run.link_free_at) + download_time_s(sim_node.profile, entry.disk_mb)
            run.link_free_at = done
            self.metrics.downloads += 1
            self.metrics.bytes_downloaded += total
            load = Load(node_id, model_id, load_id, done + load_s)
            self.schedule(done, DOWNLOADED, load)
        else:
            self._progress(now, node_id, model_id, load_id, phase="loading", done=total,
                           total=total)
            load = Load(node_id, model_id, load_id, now + load_s)
            self.schedule(now + load_s, READY, load)
        self.loading.setdefault(model_id, []).append(load)
        return True

    def downloaded(self, load: Load) -> None:
        """The weights are on disk: load them into memory."""
        if load.cancelled:
            return
        total = self.entries[load.model_id].disk_mb * _MIB
        self._progress(self.now, load.node_id, load.model_id, load.load_id, phase="loading",
                       done=total, total=total)
        self.schedule(load.ready_at, READY, load)

    def _progress(
        self,
        at: float,
        node_id: str,
        model_id: str,
        load_id: str,
        *,
        phase: Literal["downloading", "loading"],
        done: int,
        total: int,
    ) -> None:
        """Record a load's progress as the node's agent would report it."""
        self.emit(
            ev.LoadProgressed(
                at=at, actor=f"node:{node_id}", node_id=node_id, model_id=model_id,
                load_id=load_id, phase=phase, done_bytes=done, total_bytes=total,
            )
        )

    def loaded(self, load: Load) -> None:
        """The model is ready: its waiters join the node's queue in arrival order."""
        if load.cancelled:
            return
        self.emit(
            ev.ModelLoaded(
                at=self.now,
                actor=f"node:{load.node_id}",
                node_id=load.node_id,
                model_id=load.model_id,
                load_id=load.load_id,
            )
        )
        self._forget(load)
        self.ever_ready.add(load.model_id)
        self.metrics.vram(self.now, ready=self.entries[load.model_id].vram_mb)
        for req in load.waiters:
            self.assign(load.node_id, req)
        if not load.waiters:
            self.freed()
            self.policy_idle(load.node_id, load.model_id)

    def unload(
        self,
        node_id: str,
        model_id: str,
        reason: UnloadReason,
        *,
        evicted_for: str = "",
        detail: str = "",
    ) -> bool:
        """Unload a placement nobody is using (cancelling its load if not ready yet)."""
        node = self.state.nodes.get(node_id)
        p = node.placements.get(model_id) if node is not None else None
        if p is None or self.busy.get((node_id, model_id)):
            return False
        if p.phase != "ready":
            for load in self.loading.get(model_id, ()):
                if load.node_id == node_id:
                    load.cancelled = True
                    self._forget(load)
                    break
        self.emit(
            ev.ModelUnloaded(
                at=self.now,
                actor="planner",
                node_id=node_id,
                model_id=model_id,
                reason=reason,
                evicted_for=evicted_for,
                detail=detail,
            )
        )
        vram = self.entries[model_id].vram_mb
        self.metrics.vram(self.now, claimed=-vram, ready=-vram if p.phase == "ready" else 0)
        if reason == "evicted":
            self.metrics.evictions += 1
        elif reason == "idle":
            self.metrics.idle_unloads += 1
        else:
            self.metrics.other_unloads += 1
        self.freed()
        return True

    def _forget(self, load: Load) -> None:
        loads = self.loading[load.model_id]
        loads.remove(load)
        if not loads:
            del self.loading[load.model_id]

    def _check_vram(self, node_id: str) -> None:
        node = self.state.nodes[node_id]
        used = vram_used_mb(self.state, node)
        if used > node.vram_budget_mb:
            self.metrics.vram_violations += 1
        if used > self.metrics.peak_mb.get(node_id, 0):
            self.metrics.peak_mb[node_id] = used

    def _make_disk_room(self, node: NodeState, entry: CatalogEntry) -> bool:
        """Delete least recently used weights no placement needs until ``entry`` fits on disk.

        The agent would report its disk afterwards, so the deletion is a
        ``node_capabilities_reported`` event (the fold's only way to shrink ``on_disk``).
        """
        free = disk_free_mb(self.state, node)
        if free >= entry.disk_mb:
            return True
        spare = sorted(
            (m for m in node.on_disk if m not in node.placements),
            key=lambda m: (self._disk_used_at.get((node.node_id, m), float("-inf")), m),
        )
        keep = set(node.on_disk)
        for m in spare:
            if free >= entry.disk_mb:
                break
            keep.discard(m)
            free += self.entries[m].disk_mb if m in self.entries else 0
        if free < entry.disk_mb:
            return False
        ready = sorted(m for m, p in node.placements.items() if p.phase == "ready")
        self.emit(
            ev.NodeCapabilitiesReported(
                at=self.now,
                actor=f"node:{node.node_id}",
                node_id=node.node_id,
                engine=node.engine,
                provisionable=node.provisionable,
                vram_total_mb=node.vram_total_mb,
                vram_budget_mb=node.vram_budget_mb,
                disk_budget_mb=node.disk_budget_mb,
                models_on_disk=tuple(sorted(keep)),
                models_loaded=tuple(ready),
            )
        )
        self.metrics.disk_cleanups += 1
        return True
