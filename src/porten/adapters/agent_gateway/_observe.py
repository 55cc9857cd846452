"""An agent's observations become the hub's events.

The translation is pure (:func:`capabilities`, :func:`load_event`): the node
id, session and time come from the hub, never from the agent's frames. Two
pieces of the shell sit next to it: :class:`ProgressThrottle`, which keeps a
fast download from writing hundreds of events a second, and
:class:`Recorder`, which appends a link's lifecycle events in order without
ever making the link's read loop (and so every token stream on the node)
wait for a database commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import attrs
import structlog

from porten.adapters.agent_gateway._link import NodeLink
from porten.domain import events as ev
from porten.protocol import (
    AgentHeartbeat,
    AgentHello,
    AgentInventory,
    AgentLoadDone,
    AgentLoadFailed,
    AgentLoadProgress,
    AgentResponseChunk,
    AgentResponseEnd,
    AgentResponseStart,
    AgentUnloaded,
    AnyAgentMessage,
    Inventory,
)

#: At most one progress event per load per this many seconds…
PROGRESS_MIN_INTERVAL_S: Final = 0.25
#: …and only after this fraction of the total moved (phase changes and the end always pass).
PROGRESS_MIN_FRACTION: Final = 0.01


def actor(node_id: str) -> str:
    """The ``actor`` of everything a node reports."""
    return f"node:{node_id}"


def capabilities(
    node_id: str, inventory: Inventory, *, at: float, session_id: str
) -> ev.NodeCapabilitiesReported:
    """What the node says it can do, as the event the fold reconciles placements with."""
    return ev.NodeCapabilitiesReported(
        at=at,
        actor=actor(node_id),
        correlation_id=session_id,
        node_id=node_id,
        engine=inventory.engine,
        provisionable=inventory.provisionable,
        vram_total_mb=inventory.vram_total_mb,
        vram_budget_mb=inventory.vram_budget_mb,
        disk_budget_mb=inventory.disk_budget_mb,
        models_on_disk=inventory.models_on_disk,
        models_loaded=inventory.models_loaded,
    )


def load_event(
    node_id: str,
    message: AgentLoadProgress | AgentLoadDone | AgentLoadFailed | AgentUnloaded,
    *,
    at: float,
) -> ev.AnyEvent:
    """The event for one load-lifecycle observation."""
    who = actor(node_id)
    match message:
        case AgentLoadProgress():
            return ev.LoadProgressed(
                at=at,
                actor=who,
                correlation_id=message.load_id,
                node_id=node_id,
                model_id=message.model_id,
                load_id=message.load_id,
                phase=message.phase,
                done_bytes=message.done_bytes,
                total_bytes=message.total_bytes,
            )
        case AgentLoadDone():
            return ev.ModelLoaded(
                at=at,
                actor=who,
                correlation_id=message.load_id,
                node_id=node_id,
                model_id=message.model_id,
                load_id=message.load_id,
            )
        case AgentLoadFailed():
            return ev.LoadFailed(
                at=at,
                actor=who,
                correlation_id=message.load_id,
                node_id=node_id,
                model_id=message.model_id,
                load_id=message.load_id,
                error=message.error,
            )
        case AgentUnloaded():
            return ev.ModelUnloaded(
                at=at,
                actor=who,
                node_id=node_id,
                model_id=message.model_id,
                reason=message.reason,
                detail=message.detail,
            )


@attrs.define
class _Seen:
    phase: str
    at: float
    done: int


class ProgressThrottle:
    """Which load-progress observations are worth an event.

    A progress bar needs a few updates a second, not one per received
    block: an event passes when its phase changed, when it completes its
    phase, or when at least 250 ms and 1 % of the total have gone by since
    the last one that passed. That bounds a load to about 100 events per
    phase and 4 per second, whatever the agent sends.
    """

    def __init__(self) -> None:
        self._last: dict[str, _Seen] = {}

    def admit(self, message: AgentLoadProgress, now: float) -> bool:
        """Whether to record ``message`` (observed at monotonic time ``now``)."""
        seen = self._last.get(message.load_id)
        if seen is not None and seen.phase == message.phase:
            finished = message.total_bytes > 0 and message.done_bytes >= message.total_bytes
            moved = message.done_bytes - seen.done
            step = PROGRESS_MIN_FRACTION * message.total_bytes
            if not finished and (now - seen.at < PROGRESS_MIN_INTERVAL_S or moved < step):
                return False
        self._last[message.load_id] = _Seen(message.phase, now, message.done_bytes)
        return True

    def forget(self, load_id: str) -> None:
        """The load ended; drop what was kept for it."""
        self._last.pop(load_id, None)


class Recorder:
    """Appends one link's lifecycle events durably and in order, off its read loop.

    A database that is slow or away makes these events late, never the
    tokens streaming over the same link. Failures are logged: the agent
    re-reports its inventory on every connection, so the fold reconciles.
    """

    def __init__(
        self,
        append: Callable[[Sequence[ev.AnyEvent]], Awaitable[int]],
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._append = append
        self._log = log
        self._queue: asyncio.Queue[Sequence[ev.AnyEvent]] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="agent-link-recorder")

    def record(self, events: Sequence[ev.AnyEvent]) -> None:
        """Queue ``events`` for appending after everything queued before them."""
        self._queue.put_nowait(events)

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 (bounded teardown, not I/O)
        """Append what is queued (waiting at most ``timeout`` s), then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        if pending := self._queue.qsize():
            self._log.error("link events left unrecorded", events=pending)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            events = await self._queue.get()
            try:
                await self._append(events)
            except Exception as exc:  # one refused append must not stop the others
                self._log.error(
                    "cannot record node events",
                    events=[type(e).__name__ for e in events],
                    error=str(exc),
                )
            finally:
                self._queue.task_done()


class Observations:
    """Turns one link's frames into routing, heartbeats and events."""

    def __init__(
        self,
        link: NodeLink,
        *,
        append: Callable[[Sequence[ev.AnyEvent]], Awaitable[int]],
        submit: Callable[[Sequence[ev.AnyEvent]], None],
        clock: Callable[[], float],
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._link = link
        self._submit = submit
        self._clock = clock
        self._throttle = ProgressThrottle()
        self._recorder = Recorder(append, log)
        self._loop = asyncio.get_running_loop()

    def handle(self, message: AnyAgentMessage) -> str | None:
        """Act on one frame (synchronously, in order); the protocol violation, if it is one."""
        node_id = self._link.node_id
        match message:
            case AgentResponseChunk() | AgentResponseStart() | AgentResponseEnd():
                return self._link.route(message)
            case AgentHeartbeat():
                self._link.last_heartbeat = message
            case AgentLoadProgress():
                if self._throttle.admit(message, self._loop.time()):
                    self._submit([load_event(node_id, message, at=self._clock())])
            case AgentUnloaded(commanded=True):
                pass  # the hub recorded its own decision, with its reason, when it made it
            case AgentLoadDone() | AgentLoadFailed() | AgentUnloaded():
                if not isinstance(message, AgentUnloaded):
                    self._throttle.forget(message.load_id)
                self._recorder.record([load_event(node_id, message, at=self._clock())])
            case AgentInventory(inventory=inventory):
                session = self._link.session_id
                event = capabilities(node_id, inventory, at=self._clock(), session_id=session)
                self._recorder.record([event])
            case AgentHello():
                return "a second hello on an open session"
        return None

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 (bounded teardown)
        """Record what is queued (for at most ``timeout`` s) and stop."""
        await self._recorder.drain(timeout)
