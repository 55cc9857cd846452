"""Drains in the hub: start them as the core decides, finish them when their last request ends.

A drain (``model_draining``) makes a ready copy take no new requests — the
router and the warm-up wait skip it at once, because both read the folded
state — while the requests in flight there finish. This module appends the
``model_draining`` events of a :class:`~porten.scheduler.plan.DrainPlacement`
and, on every call of :meth:`Drains.finish`, unloads each draining copy with
nothing in flight (``model_unloaded``, reason ``evicted``, then the agent's
unload command). Both appends carry the node stream's expected version, so a
decision made on a stale state conflicts and is simply made again later.

``finish`` is called while requests wait for room (every re-check of the
warm-up loop) and on every planner tick, so a drain ends within about a
second of its last request.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import structlog

from porten.adapters.agent_gateway import AgentGateway
from porten.domain import events as ev
from porten.domain.ports import EventStore, WrongExpectedVersion
from porten.domain.state import FleetState
from porten.scheduler.plan import Busy, DrainPlacement
from porten.services.projection import FleetProjection
from porten.services.writer import BatchingWriter

log = structlog.get_logger(__name__)


def draining(state: FleetState) -> list[tuple[str, str, str]]:
    """(node, model, the model it makes room for) of every drain under way, sorted."""
    return sorted(
        (n.node_id, m, p.drained_for)
        for n in state.nodes.values()
        if n.online
        for m, p in n.placements.items()
        if p.draining
    )


@attrs.define
class Drains:
    """Starts and finishes drains against the log and the agents."""

    store: EventStore
    writer: BatchingWriter
    projection: FleetProjection
    gateway: AgentGateway
    busy: Callable[[], Busy]
    clock: Callable[[], float]

    async def start(self, decision: DrainPlacement) -> bool:
        """Append the decision's drains (all on one node); False if the node changed since."""
        if not decision.drains:
            return True
        seen = self.projection.position
        stream = f"node-{decision.node_id}"
        events: list[ev.AnyEvent] = [
            ev.ModelDraining(at=self.clock(), actor="hub", node_id=u.node_id,
                             model_id=u.model_id, evicted_for=u.evicted_for, detail=u.detail)
            for u in decision.drains
        ]
        try:
            version = await self.store.stream_version(stream, at=seen)
            position = await self.writer.append(events, expected={stream: version})
        except WrongExpectedVersion:
            return False
        await self.projection.wait_until(position, timeout=30.0)
        log.info("draining to make room", node_id=decision.node_id, model=decision.model_id,
                 draining=[u.model_id for u in decision.drains])
        await self.finish()
        return True

    async def finish(self) -> int:
        """Unload every draining copy with no request in flight; how many were unloaded."""
        state, seen = self.projection.state, self.projection.position
        busy = self.busy()
        done: dict[str, list[tuple[str, str]]] = {}
        for node_id, m, for_model in draining(state):
            if not busy.get((node_id, m)):
                done.setdefault(node_id, []).append((m, for_model))
        unloaded = 0
        for node_id, models in sorted(done.items()):
            unloaded += await self._unload(node_id, models, seen)
        return unloaded

    async def _unload(self, node_id: str, models: list[tuple[str, str]], seen: int) -> int:
        stream = f"node-{node_id}"
        now = self.clock()
        events: list[ev.AnyEvent] = [
            ev.ModelUnloaded(
                at=now, actor="hub", node_id=node_id, model_id=m, reason="evicted",
                evicted_for=for_model,
                detail=f"drained: its last request finished; made room for {for_model}"
                if for_model else "drained: its last request finished",
            )
            for m, for_model in models
        ]
        try:
            version = await self.store.stream_version(stream, at=seen)
            position = await self.writer.append(events, expected={stream: version})
        except WrongExpectedVersion:
            return 0  # the node changed: the next call looks again
        await self.projection.wait_until(position, timeout=30.0)
        link = self.gateway.link(node_id)
        if link is not None:
            for m, _ in models:
                await link.send_unload(m, "evicted")
        log.info("drain finished", node_id=node_id, unloaded=[m for m, _ in models])
        return len(models)
