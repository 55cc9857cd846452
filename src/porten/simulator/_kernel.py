"""The discrete-event core: a simulated clock, a heap of timed happenings, and the real fold.

Every change to the fleet is a domain event passed through
:func:`porten.domain.fold.evolve`, so the state a policy reads is exactly the
fold of the events this run emitted — the same code the hub runs, not a
model of it. What the log does not hold (requests waiting in a node's queue,
who waits for which load, how busy the download link is) lives here, in the
shell, as it does in the hub.

The loop merges two sorted streams: the trace's arrivals (read in place from
the trace's columns) and a heap of timed happenings (request done, download
done, load done, demand window closed, policy timers). Ties are broken by
insertion order, and every iteration over a map is sorted, so a run is a
pure function of its inputs. The mechanics of loads live in :mod:`._loads`.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Final

from porten.domain import events as ev
from porten.domain.fold import evolve
from porten.domain.state import EMPTY, FleetState
from porten.scheduler.eligibility import Requester
from porten.scheduler.plan import DrainPlacement, Plan, UnloadDecision, Unplaceable
from porten.scheduler.routing import NodeLoad, candidates
from porten.simulator._fleet import ResolvedModel, SimNode
from porten.simulator._loads import (
    DOWNLOADED,
    READY,
    Load,
    LoadMechanics,
    NodeRun,
    Request,
    service_s,
)
from porten.simulator._metrics import Metrics
from porten.simulator._options import SimOptions
from porten.simulator._policy import Policy
from porten.simulator._trace import Trace

#: Every simulated request comes from one key whose policy admits every node.
REQUESTER: Final = Requester(owner_id="sim")

_DONE, _WINDOW, _TIMER = 0, 3, 4


class Simulation(LoadMechanics):
    """One policy replaying one trace on one fleet; :meth:`run` once."""

    def __init__(
        self,
        trace: Trace,
        nodes: tuple[SimNode, ...],
        models: tuple[ResolvedModel, ...],
        policy: Policy,
        options: SimOptions,
        *,
        record: bool = False,
    ) -> None:
        self.trace, self.policy, self.options = trace, policy, options
        self.state: FleetState = EMPTY
        self.events: list[ev.AnyEvent] | None = [] if record else None
        self.emitted = 0
        self.epoch = trace.epoch
        self.now = trace.epoch
        self.nodes = {n.node_id: n for n in nodes}
        self.runs = {n.node_id: NodeRun(n) for n in nodes}
        self.entries = {m.entry.id: m.entry for m in models}
        self.loads: dict[str, NodeLoad] = {n.node_id: NodeLoad() for n in nodes}
        self.busy: dict[tuple[str, str], int] = {}
        self.loading: dict[str, list[Load]] = {}
        self.parked: dict[str, deque[Request]] = {}
        self.metrics = Metrics(
            start=trace.epoch,
            horizon=trace.epoch + trace.span_s,
            budget_mb=sum(n.vram_budget_mb for n in nodes),
            bucket_s=options.bucket_s,
        )
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._open = 0
        self._freed = False
        self._window: dict[str, list[int]] = {}
        self._max_vram = max(n.vram_budget_mb for n in nodes)
        self._disk_used_at: dict[tuple[str, str], float] = {}
        self._drains: dict[tuple[str, str], UnloadDecision] = {}
        self.ever_ready: set[str] = set()
        self._load_seq = 0

    # --- the log ------------------------------------------------------------------------

    def emit(self, event: ev.AnyEvent) -> None:
        """Fold ``event`` into the state (and keep it when recording)."""
        self.state = evolve(self.state, event)
        self.emitted += 1
        if self.events is not None:
            self.events.append(event)

    def schedule(self, at: float, kind: int, payload: object) -> None:
        """Push a happening at absolute time ``at``."""
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, payload))

    def set_timer(self, at: float, payload: object) -> None:
        """Call the policy's ``on_timer(payload)`` at ``at``."""
        self.schedule(at, _TIMER, payload)

    def policy_idle(self, node_id: str, model_id: str) -> None:
        """Tell the policy a ready placement has nothing to do."""
        self.policy.on_idle(self, node_id, model_id, self.now)

    def freed(self) -> None:
        """Something became evictable or memory was released: parked requests may fit now."""
        self._freed = True

    # --- the run ------------------------------------------------------------------------

    def run(self) -> None:
        """Replay the whole trace, then drain until every request is served or dropped."""
        self._setup()
        tr, n = self.trace, len(self.trace)
        w = self.options.window_s  # windows on multiples of w, as the hub's demand meter
        self.schedule((math.floor(self.epoch / w) + 1) * w, _WINDOW, 0)
        i = 0
        while i < n or self._open:
            arrival = self.epoch + tr.t[i] if i < n else float("inf")
            if self._heap and self._heap[0][0] <= arrival:
                at, _, kind, payload = heapq.heappop(self._heap)
                self.now = at
                self._dispatch(kind, payload)
            else:
                self.now = arrival
                self._arrive(Request(i, arrival, tr.models[tr.model[i]]))
                i += 1
            if self._freed and self.parked:
                self._retry_parked()
        self.metrics.advance(self.now)

    def _setup(self) -> None:
        at = self.epoch
        for mid in sorted(self.entries):
            self.emit(ev.ModelOffered(at=at, actor="sim", model=self.entries[mid]))
        for node_id, node in sorted(self.nodes.items()):
            self.emit(
                ev.NodeEnrolled(
                    at=at,
                    actor="sim",
                    node_id=node_id,
                    owner_id="sim",
                    name=node_id,
                    region=node.region,
                    trust_class=node.trust_class,
                )
            )
            self.emit(
                ev.NodeConnected(
                    at=at, actor=f"node:{node_id}", node_id=node_id, session_id=f"sim-{node_id}"
                )
            )
            self.emit(
                ev.NodeCapabilitiesReported(
                    at=at,
                    actor=f"node:{node_id}",
                    node_id=node_id,
                    engine="sim",
                    provisionable=True,
                    vram_total_mb=node.vram_total_mb,
                    vram_budget_mb=node.vram_budget_mb,
                    disk_budget_mb=node.disk_budget_mb,
                    models_on_disk=node.models_on_disk,
                )
            )

    def _dispatch(self, kind: int, payload: object) -> None:
        if kind == _DONE:
            assert isinstance(payload, Request)
            self._finish(payload)
        elif kind == DOWNLOADED:
            assert isinstance(payload, Load)
            self.downloaded(payload)
        elif kind == READY:
            assert isinstance(payload, Load)
            self.loaded(payload)
        elif kind == _WINDOW:
            self._close_window()
        else:
            self.policy.on_timer(self, payload, self.now)

    # --- requests -----------------------------------------------------------------------

    def _count(self, model_id: str, *, met: bool) -> None:
        """Count a request in this demand window as the hub does.

        Served when a node starts on it; unmet when no load could be started for
        it (the hub answers that with a 503 at once).
        """
        c = self._window.get(model_id)
        if c is None:
            c = self._window[model_id] = [0, 0]
        c[0 if met else 1] += 1

    def _arrive(self, req: Request) -> None:
        self._open += 1
        ready = candidates(self.state, req.model, REQUESTER, self.loads)
        if ready:
            self.metrics.arrived(req.arrival, req.model, cold=False)
            self.assign(ready[0].node_id, req)
            return
        req.cold = True
        first = req.model not in self.ever_ready
        self.metrics.arrived(req.arrival, req.model, cold=True, first=first)
        if self._join_load(req):
            self.metrics.cold_shared += 1
            return
        if self.entries[req.model].vram_mb <= self._max_vram:
            if self._place(req.model) and self._attach(req):
                return
            self.metrics.parked += 1
            self.parked.setdefault(req.model, deque()).append(req)
        else:
            self._drop(req)
        self._count(req.model, met=False)

    def _attach(self, req: Request) -> bool:
        """Send ``req`` to a ready replica, else to the load of its model that ends first."""
        ready = candidates(self.state, req.model, REQUESTER, self.loads)
        if ready:
            self.assign(ready[0].node_id, req)
            return True
        return self._join_load(req)

    def _join_load(self, req: Request) -> bool:
        """Wait for the load of ``req.model`` that is ready first, if one is under way."""
        loads = self.loading.get(req.model)
        if not loads:
            return False
        load = min(loads, key=lambda ld: (ld.ready_at, ld.node_id))
        load.waiters.append(req)
        req.waiting_on_load = True
        self._busy(load.node_id, req.model, +1)
        return True

    def _place(self, model_id: str) -> bool:
        """Whether a load of ``model_id`` started (or one was already there to join)."""
        decision = self.policy.place_cold(self, model_id, self.now)
        if isinstance(decision, Unplaceable):
            return False
        if isinstance(decision, DrainPlacement):
            self.apply_drain(decision)
            return False  # the request waits; room freed by the drains retries it
        return self.apply_urgent(decision)

    def _busy(self, node_id: str, model_id: str, delta: int) -> None:
        key = (node_id, model_id)
        left = self.busy.get(key, 0) + delta
        if left:
            self.busy[key] = left
            return
        self.busy.pop(key, None)
        p = self.state.nodes[node_id].placements.get(model_id)
        if p is not None and p.draining:
            self.finish_drain(node_id, model_id)
        elif p is not None and p.phase == "ready":
            self.freed()
            self.policy_idle(node_id, model_id)

    def assign(self, node_id: str, req: Request) -> None:
        """Queue ``req`` on ``node_id`` (which has its model ready); start it if a slot is free."""
        req.node = node_id
        if not req.waiting_on_load:
            self._busy(node_id, req.model, +1)
        req.waiting_on_load = False
        run = self.runs[node_id]
        if run.in_flight < run.node.slots:
            self._start(run, req)
        else:
            run.queue.append(req)
        self._set_load(run)

    def _start(self, run: NodeRun, req: Request) -> None:
        run.in_flight += 1
        req.start = self.now
        self._count(req.model, met=True)
        self.metrics.started(req.model, self.now - req.arrival, cold=req.cold)
        tr = self.trace
        took = service_s(run.node, tr.prompt[req.index], tr.completion[req.index])
        self.metrics.busy_slot_s += took
        self.schedule(self.now + took, _DONE, req)

    def _finish(self, req: Request) -> None:
        run = self.runs[req.node]
        tr = self.trace
        self.emit(
            ev.RequestServed(
                at=self.now,
                actor="hub",
                request_id=f"r{req.index}",
                model_id=req.model,
                node_id=req.node,
                key_id="sim",
                prompt_tokens=tr.prompt[req.index],
                completion_tokens=tr.completion[req.index],
                ttft_ms=(req.start - req.arrival + run.node.profile.ttft_ms / 1000.0) * 1000.0,
                duration_ms=(self.now - req.arrival) * 1000.0,
            )
        )
        self._open -= 1
        self.metrics.last_done = self.now
        run.in_flight -= 1
        if run.queue:
            self._start(run, run.queue.popleft())
        self._set_load(run)
        self._busy(req.node, req.model, -1)

    def _set_load(self, run: NodeRun) -> None:
        self.loads[run.node.node_id] = NodeLoad(in_flight=run.in_flight, queued=len(run.queue))

    def _drop(self, req: Request) -> None:
        self.metrics.dropped(req.model)
        self._open -= 1

    def _retry_parked(self) -> None:
        """Try again to place each parked model, the longest-waiting first (then by id), so
        room freed for a model that waited is not taken by one that just arrived; drop
        requests past their wait budget."""
        self._freed = False
        deadline = self.now - self.options.max_wait_s
        order = sorted(self.parked, key=lambda m: (self.parked[m][0].arrival, m))
        for model_id in order:
            queue = self.parked[model_id]
            while queue and queue[0].arrival < deadline:
                self._drop(queue.popleft())
            if queue and (
                self._attach(queue[0]) or (self._place(model_id) and self._attach(queue[0]))
            ):
                queue.popleft()
                while queue and self._attach(queue[0]):
                    queue.popleft()
            if not queue:
                del self.parked[model_id]

    def _close_window(self) -> None:
        w = self.options.window_s
        start = self.now - w
        for model_id in sorted(self._window):
            served, unmet = self._window[model_id]
            self.emit(
                ev.DemandObserved(
                    at=self.now,
                    actor="hub",
                    model_id=model_id,
                    window_start=start,
                    window_s=w,
                    served=served,
                    unmet=unmet,
                )
            )
        self._window.clear()
        self.policy.on_window(self, self.now)
        if self.parked:
            self._freed = True
        # Compared in absolute time, computed as arrivals are (epoch + offset), and with
        # ``<=``: a window closing at the instant of the last arrival runs first (timers win
        # a tie), and a request parked by that arrival still needs a next window.
        last_arrival = self.epoch + self.trace.t[-1] if len(self.trace) else self.epoch
        if self._open or self.now <= last_arrival:
            self.schedule(self.now + w, _WINDOW, 0)

    # --- what policies call -----------------------------------------------------------------

    def node_load(self, node_id: str) -> int:
        """Requests running or queued on ``node_id``."""
        nl = self.loads[node_id]
        return nl.in_flight + nl.queued

    def apply_plan(self, plan: Plan) -> None:
        """Apply a planner's decisions now: unloads first, then loads (each re-checked)."""
        for u in plan.unloads:
            if not self.unload(
                u.node_id, u.model_id, u.reason, evicted_for=u.evicted_for, detail=u.detail
            ):
                self.metrics.rejected += 1
        for ld in plan.loads:
            if not self.start_load(ld.node_id, ld.model_id, ld.reason):
                self.metrics.rejected += 1
