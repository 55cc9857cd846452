"""The planner's loop in the hub: plan on a cadence and on demand changes, then apply.

Between rounds it ticks every :data:`DRAIN_TICK_S` and unloads the
draining copies whose last request has ended
(:mod:`porten.services.drains`). Plans unload copies of withdrawn models
(reason ``operator``) like any other decision.

Applying is Nomad's plan applier in miniature: the plan was computed on the
state folded up to position ``p``; each node's decisions are appended with
that node stream's version as of ``p``, so if the node changed since (a
load finished, a request-time load was placed), that node's part conflicts,
is skipped, and the next round plans it again on fresh state. Unloads go
before loads, and the agent receives them in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import Callable

import structlog

from porten.adapters.agent_gateway import AgentGateway
from porten.domain import events as ev
from porten.domain.ports import EventStore, WrongExpectedVersion
from porten.scheduler.plan import Busy, LoadDecision, Plan, PlannerConfig, UnloadDecision
from porten.scheduler.planner import plan as make_plan
from porten.services.drains import Drains, draining
from porten.services.projection import FleetProjection
from porten.services.writer import BatchingWriter

log = structlog.get_logger(__name__)

#: How often drains under way are checked for their last request's end.
DRAIN_TICK_S = 1.0


class PlannerLoop:
    """Runs the planner every ``cadence_s`` and whenever :meth:`wake` is called."""

    def __init__(
        self,
        *,
        store: EventStore,
        writer: BatchingWriter,
        projection: FleetProjection,
        gateway: AgentGateway,
        config: PlannerConfig,
        busy: Callable[[], Busy],
        clock: Callable[[], float],
        cadence_s: float = 60.0,
    ) -> None:
        self._store = store
        self._writer = writer
        self._projection = projection
        self._gateway = gateway
        self._config = config
        self._busy = busy
        self._clock = clock
        self._cadence_s = cadence_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._drains = Drains(store, writer, projection, gateway, busy, clock)
        self.rounds = 0

    def wake(self) -> None:
        """Plan again soon (demand changed)."""
        self._wake.set()

    def start(self) -> None:
        """Run the loop in the background."""
        self._task = asyncio.create_task(self._run(), name="planner")

    async def aclose(self) -> None:
        """Stop planning."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_plan = loop.time() + self._cadence_s
        while True:
            timeout = min(next_plan - loop.time(), DRAIN_TICK_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.0))
            if draining(self._projection.state):  # finish drains within a tick of their end
                try:
                    await self._drains.finish()
                except Exception:
                    log.exception("finishing drains failed; trying again next tick")
            if not self._wake.is_set() and loop.time() < next_plan:
                continue
            self._wake.clear()
            next_plan = loop.time() + self._cadence_s
            try:
                await self.plan_once()
            except Exception:
                log.exception("planning round failed; trying again next round")

    async def plan_once(self) -> Plan:
        """Plan on the current state and apply what still holds; the plan made."""
        state, seen = self._projection.state, self._projection.position
        plan = make_plan(state, self._clock(), self._config, self._busy())
        self.rounds += 1
        for refused in plan.unplaceable:
            log.info("model unplaceable", model=refused.model_id, reason=refused.reason)
        if plan.empty:
            return plan
        per_node: defaultdict[str, tuple[list[UnloadDecision], list[LoadDecision]]] = (
            defaultdict(lambda: ([], []))
        )
        for u in plan.unloads:
            per_node[u.node_id][0].append(u)
        for ld in plan.loads:
            per_node[ld.node_id][1].append(ld)
        for node_id in sorted(per_node):
            unloads, loads = per_node[node_id]
            await self._apply_node(node_id, unloads, loads, seen)
        return plan

    async def _apply_node(self, node_id: str, unloads: list[UnloadDecision],
                          loads: list[LoadDecision], seen: int) -> None:
        stream = f"node-{node_id}"
        now = self._clock()
        load_ids = [f"load_{uuid.uuid4().hex[:16]}" for _ in loads]
        events: list[ev.AnyEvent] = [
            ev.ModelUnloaded(at=now, actor="planner", node_id=u.node_id, model_id=u.model_id,
                             reason=u.reason, evicted_for=u.evicted_for, detail=u.detail)
            for u in unloads
        ]
        events += [
            ev.LoadRequested(at=now, actor="planner", correlation_id=lid, node_id=ld.node_id,
                             model_id=ld.model_id, load_id=lid, reason=ld.reason)
            for ld, lid in zip(loads, load_ids, strict=True)
        ]
        try:
            version = await self._store.stream_version(stream, at=seen)
            await self._writer.append(events, expected={stream: version})
        except WrongExpectedVersion:
            log.info("node changed since the plan; it is planned again next round",
                     node_id=node_id)
            return
        link = self._gateway.link(node_id)
        if link is None:
            return  # its disconnect drops the pending loads when folded
        catalog = self._projection.state.catalog
        for u in unloads:
            await link.send_unload(u.model_id, u.reason)
        for ld, lid in zip(loads, load_ids, strict=True):
            await link.send_load(lid, catalog[ld.model_id].entry)
        log.info("plan applied", node_id=node_id, unloads=[u.model_id for u in unloads],
                 loads=[ld.model_id for ld in loads])
