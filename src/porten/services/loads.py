"""On-demand loading: a request for a cold model waits for one shared load, within a budget.

The decision is the pure core's (:func:`porten.scheduler.urgent.place_urgently`,
which sees only nodes the key's policy admits); this module makes it happen
and waits: it appends the evictions and the ``load_requested`` event with the
node stream's expected version (a decision made on a stale state conflicts
and is made again), commands the agent, and follows the folded state until
an admissible node serves the model, the load fails (then another node is
tried, a bounded number of times), the model is withdrawn from the catalog,
or the request's warm-up budget runs out. Where the core decides to drain
busy copies for room (:mod:`porten.services.drains`), the request waits for
the drains, finishing each as its last request ends, then places the model.

Concurrent requests for the same cold model share one load: deciding and
appending happen under a per-model lock, and the lock is held until the
projection has folded the decision, so the next request sees the load in
progress and waits for it instead of starting another. They share its
failure too: every request follows the loads it waits on, whoever started
them, so when a shared load fails each of its waiters counts it and all of
them end with the same error (the node's words in a 502), never a 503 about
the back-off that failure caused.

Nothing here waits past the request's warm-up budget: deciding and starting
a load runs as its own task, which the request stops waiting for when the
budget ends (the load still starts, for the next request to find).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import Callable

import attrs
import structlog

from porten.adapters.agent_gateway import AgentGateway
from porten.domain import events as ev
from porten.domain.ports import EventStore, WrongExpectedVersion
from porten.domain.state import FleetState, NodeState, Placement
from porten.scheduler.eligibility import Requester, node_admits
from porten.scheduler.plan import (
    Busy,
    DrainPlacement,
    PlannerConfig,
    UnloadDecision,
    Unplaceable,
)
from porten.scheduler.urgent import place_urgently
from porten.services.drains import Drains, draining
from porten.services.projection import FleetProjection
from porten.services.writer import BatchingWriter

log = structlog.get_logger(__name__)

#: Loads started for one request before it gives up (each on the best node left).
MAX_ATTEMPTS = 3
#: Longest wait between two looks at the state while a request waits for a model.
RECHECK_S = 0.5
#: Loads remembered per model for the requests waiting on its lock.
_STARTED_KEPT = 16


#: Retry-After for a refusal whose end is not known (no back-off to wait out).
DEFAULT_RETRY_AFTER_S = 5.0


class NoCompliantNode(Exception):
    """No node the key may use can serve or take the model; ``reason`` says why.

    ``retry_after_s`` is when a retry could succeed: the end of the earliest
    back-off after failed loads when that is what stands in the way (the
    schedule's own numbers), else :data:`DEFAULT_RETRY_AFTER_S`.
    """

    def __init__(
        self, model_id: str, reason: str, retry_after_s: float = DEFAULT_RETRY_AFTER_S
    ) -> None:
        self.model_id = model_id
        self.reason = reason
        self.retry_after_s = retry_after_s
        super().__init__(reason)


class ModelWarming(Exception):
    """The model is loading but not ready within the request's warm-up budget."""

    def __init__(self, model_id: str, retry_after_s: float) -> None:
        self.model_id = model_id
        self.retry_after_s = retry_after_s
        super().__init__(f"{model_id} is still loading")


class ModelNotOffered(Exception):
    """The catalog stopped offering the model while the request waited for it."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(f"{model_id} is no longer offered")


class LoadsFailed(Exception):
    """Every load tried for this request failed; ``errors`` are the nodes' words."""

    def __init__(self, model_id: str, errors: list[str]) -> None:
        self.model_id = model_id
        self.errors = errors
        super().__init__("; ".join(errors) or "loads failed")


def serving(state: FleetState, model_id: str, requester: Requester) -> list[NodeState]:
    """Online nodes the requester may use that have ``model_id`` ready (and not draining)."""
    return [
        n for n in state.nodes.values()
        if n.online and node_admits(requester, n)
        and (p := n.placements.get(model_id)) is not None and p.serving
    ]


def loading(state: FleetState, model_id: str, requester: Requester) -> list[tuple[NodeState,
                                                                                   Placement]]:
    """(node, placement) of loads in progress on nodes the requester may use."""
    return [
        (n, p) for n in state.nodes.values()
        if n.online and node_admits(requester, n)
        and (p := n.placements.get(model_id)) is not None and p.phase != "ready"
    ]


@attrs.define
class _Waits:
    """What one request has seen while it waited: the loads it followed, those that failed."""

    #: node → (load id, since) of each load in progress the request waited on.
    following: dict[str, tuple[str, float]] = attrs.field(factory=dict)
    #: Nodes whose loads (started by anyone) it waited on and saw fail, in order.
    failed: list[str] = attrs.field(factory=list)
    #: The last drain it waited on, in words ("" when none).
    drain: str = ""

    def adopt(self, started: list[tuple[str, str, float]], since: float) -> None:
        """Follow the loads started (by any request) since this one began waiting: when it
        waited on the model's lock while another started a load, that load is its too."""
        for node_id, load_id, at in started:
            if at >= since:
                self.following.setdefault(node_id, (load_id, at))

    def observe(self, state: FleetState, model_id: str, pending: list[tuple[NodeState,
                                                                          Placement]]) -> None:
        """Count each followed load that failed (or lost its node); follow new ones."""
        for node_id, (load_id, since) in list(self.following.items()):
            node = state.nodes.get(node_id)
            p = node.placements.get(model_id) if node is not None else None
            if p is not None and p.load_id == load_id:
                continue  # still loading, or ready
            del self.following[node_id]
            f = node.failures.get(model_id) if node is not None else None
            lost = node is None or not node.online or (f is not None and f.last_at >= since)
            if lost and node_id not in self.failed:
                self.failed.append(node_id)
        for node, p in pending:
            self.following.setdefault(node.node_id, (p.load_id, p.since))


@attrs.define
class LoadCoordinator:
    """Gets a model ready for a requester, sharing loads between concurrent requests."""

    store: EventStore
    writer: BatchingWriter
    projection: FleetProjection
    gateway: AgentGateway
    config: PlannerConfig
    busy: Callable[[], Busy]
    clock: Callable[[], float]
    _locks: defaultdict[str, asyncio.Lock] = attrs.field(
        factory=lambda: defaultdict(asyncio.Lock)
    )
    _drains: Drains = attrs.field(init=False)
    _tasks: set[asyncio.Task[str | DrainPlacement]] = attrs.field(factory=set)
    #: Per model, the last loads started here: (node, load id, when), newest last.
    _started: defaultdict[str, list[tuple[str, str, float]]] = attrs.field(
        factory=lambda: defaultdict(list)
    )

    def __attrs_post_init__(self) -> None:
        self._drains = Drains(self.store, self.writer, self.projection, self.gateway,
                              self.busy, self.clock)

    async def ensure_ready(self, model_id: str, requester: Requester, budget_s: float) -> None:
        """Return once a node the requester may use serves ``model_id``.

        Raises :class:`NoCompliantNode` (no node can take it), :class:`LoadsFailed`
        (the loads this request waited on all failed, and no node is left or
        ``MAX_ATTEMPTS`` failed), :class:`ModelNotOffered` (withdrawn while
        waiting), or :class:`ModelWarming` when ``budget_s`` passes first.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        waits, began = _Waits(), self.clock()
        while True:
            state = self.projection.state
            c = state.catalog.get(model_id)
            if c is None or not c.offered:
                raise ModelNotOffered(model_id)
            ready = serving(state, model_id, requester)
            if any(self.gateway.link(n.node_id) is not None for n in ready):
                return
            pending = loading(state, model_id, requester)
            waits.adopt(self._started[model_id], began)
            waits.observe(state, model_id, pending)
            if not ready and not pending:
                if len(waits.failed) >= MAX_ATTEMPTS:
                    raise LoadsFailed(model_id, self._failures(state, model_id, waits.failed))
                started = await self._start(
                    model_id, requester, deadline - loop.time(), waits, began
                )
                if started:
                    continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._out_of_time(model_id, requester, waits)
            if waits.drain:  # room is being drained for it: end each drain promptly
                await self._drains.finish()
            # Re-check at least every RECHECK_S: a node can be ready in the log a moment
            # before its connection is installed (which no event announces), and a drain's
            # last request can end (which only the busy count shows).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.projection.changed(),
                                       timeout=min(remaining, RECHECK_S))

    async def _start(
        self, model_id: str, requester: Requester, remaining: float, waits: _Waits,
        began: float,
    ) -> bool:
        """Decide and start a load (or drains) within ``remaining``; whether to look again now.

        The decision runs as its own task under the model's lock: if the budget
        ends first the request stops waiting for it, and the load still starts.
        """
        task = asyncio.create_task(self._decide(model_id, requester))
        self._tasks.add(task)
        task.add_done_callback(self._settled)
        try:
            outcome = await asyncio.wait_for(asyncio.shield(task), timeout=max(remaining, 0.0))
        except TimeoutError:
            return False  # out of budget: the caller raises; the task goes on
        except NoCompliantNode:
            # Loads it waited on (or that started while it waited on the lock) failed and
            # no node is left: say what failed, as every other waiter of those loads does.
            state = self.projection.state
            waits.adopt(self._started[model_id], began)
            waits.observe(state, model_id, [])
            if waits.failed:
                raise LoadsFailed(model_id, self._failures(state, model_id, waits.failed)) \
                    from None
            raise
        if isinstance(outcome, DrainPlacement):
            waits.drain = outcome.reason
            return False  # wait for the drains (finished as their requests end)
        return True

    def _settled(self, task: asyncio.Task[str | DrainPlacement]) -> None:
        """Forget a finished decision task, consuming an error nobody waited for."""
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.info("a load decision ended after its request stopped waiting", error=str(exc))

    async def _decide(self, model_id: str, requester: Requester) -> str | DrainPlacement:
        async with self._locks[model_id]:
            return await self._start_if_still_cold(model_id, requester)

    def _out_of_time(self, model_id: str, requester: Requester, waits: _Waits) -> Exception:
        """The error for a request whose warm-up budget ended while the model was not ready:
        still loading (503 model_warming), its loads failed (502), or room for it is still
        being drained (503 no_available_node, saying which)."""
        state = self.projection.state
        if loading(state, model_id, requester):
            return ModelWarming(model_id, self._eta(state, model_id, requester))
        if waits.failed:
            return LoadsFailed(model_id, self._failures(state, model_id, waits.failed))
        drains = [(n, m) for n, m, for_model in draining(state) if for_model == model_id]
        if drains:
            named = ", ".join(f"{m} on {n}" for n, m in drains)
            return NoCompliantNode(
                model_id, f"making room for it: draining {named} (their requests in flight "
                "finish first)",
            )
        if waits.drain:
            return NoCompliantNode(model_id, waits.drain)
        return ModelWarming(model_id, self._eta(state, model_id, requester))

    async def _start_if_still_cold(self, model_id: str, requester: Requester
                                   ) -> str | DrainPlacement:
        """Decide and append a load unless one appeared meanwhile: its node ("" if none), or
        the drains being waited for."""
        for _ in range(MAX_ATTEMPTS):
            state, seen = self.projection.state, self.projection.position  # one snapshot
            if serving(state, model_id, requester) or loading(state, model_id, requester):
                return ""
            decision = place_urgently(
                state, model_id, requester, self.clock(), self.config, self.busy()
            )
            if isinstance(decision, Unplaceable):
                raise NoCompliantNode(model_id, decision.reason,
                                      decision.retry_after_s or DEFAULT_RETRY_AFTER_S)
            if isinstance(decision, DrainPlacement):
                if await self._drains.start(decision):
                    return decision
                await self.projection.wait_until(await self.store.head(), timeout=30.0)
                continue
            load_id = f"load_{uuid.uuid4().hex[:16]}"
            stream = f"node-{decision.load.node_id}"
            try:
                version = await self.store.stream_version(stream, at=seen)
                position = await self.writer.append(
                    [*self._unload_events(decision.evictions),
                     ev.LoadRequested(at=self.clock(), actor="hub", correlation_id=load_id,
                                      node_id=decision.load.node_id, model_id=model_id,
                                      load_id=load_id, reason=decision.load.reason)],
                    expected={stream: version},
                )
            except WrongExpectedVersion:
                # The node changed since the state we decided on: fold up to now, decide again.
                await self.projection.wait_until(await self.store.head(), timeout=30.0)
                continue
            await self.projection.wait_until(position, timeout=30.0)
            started = self._started[model_id]
            started.append((decision.load.node_id, load_id, self.clock()))
            del started[:-_STARTED_KEPT]
            await self._command(decision.load.node_id, decision.evictions, load_id, model_id)
            log.info("load started", model=model_id, node_id=decision.load.node_id,
                     load_id=load_id, reason=decision.load.reason,
                     evicted=[e.model_id for e in decision.evictions])
            return decision.load.node_id
        return ""

    def _unload_events(self, evictions: tuple[UnloadDecision, ...]) -> list[ev.AnyEvent]:
        return [
            ev.ModelUnloaded(at=self.clock(), actor="hub", node_id=u.node_id,
                             model_id=u.model_id, reason=u.reason, evicted_for=u.evicted_for,
                             detail=u.detail)
            for u in evictions
        ]

    async def _command(self, node_id: str, evictions: tuple[UnloadDecision, ...], load_id: str,
                       model_id: str) -> None:
        """Send the agent its unloads then the load; a node already gone fails the load."""
        link = self.gateway.link(node_id)
        entry = self.projection.state.catalog[model_id].entry
        if link is not None:
            try:
                for u in evictions:
                    await link.send_unload(u.model_id, u.reason)
                await link.send_load(load_id, entry)
            except Exception as exc:
                log.warning("could not command the node", node_id=node_id, error=str(exc))
            else:
                return
        await self.writer.append([ev.LoadFailed(
            at=self.clock(), actor="hub", correlation_id=load_id, node_id=node_id,
            model_id=model_id, load_id=load_id, error="the node disconnected before the load",
        )])

    @staticmethod
    def _failures(state: FleetState, model_id: str, attempts: list[str]) -> list[str]:
        """Why each load this request started ended, once per node, in the order tried."""
        out = []
        for node_id in dict.fromkeys(attempts):
            node = state.nodes.get(node_id)
            f = node.failures.get(model_id) if node is not None else None
            if f is not None:
                out.append(f"{node_id}: {f.last_error}")
            elif node is None or not node.online:
                out.append(f"{node_id}: the node disconnected during the load")
            else:
                out.append(f"{node_id}: the load ended without the model loaded")
        return out

    def _eta(self, state: FleetState, model_id: str, requester: Requester) -> float:
        """Seconds a client should wait before retrying (a rough guess from progress)."""
        loads = loading(state, model_id, requester)
        if not loads:
            return 5.0
        _, p = max(loads, key=lambda np: np[1].done_bytes)
        if p.phase == "downloading" and p.total_bytes and p.done_bytes:
            elapsed = max(self.clock() - p.since, 1.0)
            rate = p.done_bytes / elapsed
            return min(max((p.total_bytes - p.done_bytes) / rate, 5.0), 600.0)
        return 10.0
