"""One welcomed connection to the hub, from the agent's side.

The session reads the hub's commands and answers with observations: each
request runs in its own task (many share the connection, told apart by
``request_id``), loads and unloads run in theirs, and a heartbeat reports
load every ``heartbeat_s``. Control messages (heartbeats, load progress,
inventory) leave through one ordered outbox, so a load's progress never
overtakes its "done". When the connection ends, for any reason, every task
of the session is cancelled and awaited: requests in flight are aborted on
the engine, and nothing outlives the session.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import aiohttp
import msgspec
import structlog

from porten.agent.engines.base import Engine, EngineError, LoadPhase, ReportsLosses
from porten.agent.streams import Credit, Stream, relay
from porten.protocol import (
    AgentHeartbeat,
    AgentInventory,
    AgentLoadDone,
    AgentLoadFailed,
    AgentLoadProgress,
    AgentMessage,
    AgentResponseEnd,
    AgentUnloaded,
    AnyHubMessage,
    HubCancel,
    HubCredit,
    HubLoad,
    HubRequest,
    HubUnload,
    HubWelcome,
    Inventory,
    decode_hub_message,
    encode,
)

_CANCELLED = "cancelled by the hub"


class Session:
    """Serve the hub's commands over ``ws`` until the connection ends."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        engine: Engine,
        welcome: HubWelcome,
        reported: Inventory,
        *,
        inventory_poll_s: float,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._ws = ws
        self._engine = engine
        self._welcome = welcome
        self._reported = reported  # the inventory the hub last heard
        self._inventory_poll_s = inventory_poll_s
        self._log = log
        self._streams: dict[str, Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._unloads: set[asyncio.Task[None]] = set()  # commanded, not yet finished
        self._outbox: asyncio.Queue[AgentMessage] = asyncio.Queue()

    @property
    def in_flight(self) -> int:
        """Requests being relayed right now."""
        return len(self._streams)

    async def run(self) -> str:
        """Serve until the connection ends; why it ended."""
        self._spawn(self._write_outbox())
        self._spawn(self._heartbeats())
        self._spawn(self._watch_inventory())
        engine = self._engine
        if isinstance(engine, ReportsLosses):
            engine.on_lost(self._lost)
        try:
            return await self._read()
        finally:
            if isinstance(engine, ReportsLosses):
                engine.on_lost(None)
            await self._shutdown()

    async def _read(self) -> str:
        async for msg in self._ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                try:
                    command = decode_hub_message(msg.data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    return await self._violation(f"malformed frame from the hub: {exc}")
                self._dispatch(command)
            elif msg.type is aiohttp.WSMsgType.ERROR:
                return f"connection error: {self._ws.exception()}"
            else:
                return await self._violation("a text frame from the hub")
        return f"closed by the hub (code {self._ws.close_code})"

    async def _violation(self, reason: str) -> str:
        self._log.error("dropping the hub connection", reason=reason)
        await self._ws.close(code=aiohttp.WSCloseCode.PROTOCOL_ERROR, message=reason.encode()[:123])
        return reason

    def _dispatch(self, command: AnyHubMessage) -> None:
        match command:
            case HubRequest():
                self._open_stream(command)
            case HubCredit(request_id=rid, chunks=chunks):
                if (stream := self._streams.get(rid)) is not None:
                    stream.credit.grant(chunks)
            case HubCancel(request_id=rid):
                self._cancel_stream(rid)
            case HubLoad():
                # A load waits for the unloads commanded before it: they make its room.
                self._spawn(self._load_after(tuple(self._unloads), command))
            case HubUnload():
                task = self._spawn(self._unload(command))
                self._unloads.add(task)
                task.add_done_callback(self._unloads.discard)
            case HubWelcome():
                self._log.warning("ignoring a second welcome from the hub")

    # --- requests ---------------------------------------------------------------------

    def _open_stream(self, request: HubRequest) -> None:
        if request.request_id in self._streams:
            self._log.warning("ignoring a duplicate request id", request_id=request.request_id)
            return
        stream = Stream(request=request, credit=Credit(self._welcome.window))
        self._streams[request.request_id] = stream
        stream.task = self._spawn(self._serve(stream))

    def _cancel_stream(self, request_id: str) -> None:
        stream = self._streams.get(request_id)
        if stream is None or stream.task is None:
            return  # already finished: its end is on the way
        stream.cancelled_by_hub = True
        stream.task.cancel()
        if not stream.running:  # cancelled before its first step: it will never answer
            self._streams.pop(request_id, None)
            self._post(AgentResponseEnd(request_id=request_id, error=_CANCELLED))

    async def _serve(self, stream: Stream) -> None:
        stream.running = True
        rid = stream.request.request_id
        log = self._log.bind(request_id=rid, model=stream.request.model_id)
        try:
            error = await relay(self._engine, stream.request, stream.credit, self._send)
        except asyncio.CancelledError:
            if stream.cancelled_by_hub:
                log.debug("request cancelled by the hub")
                await self._send_quietly(AgentResponseEnd(request_id=rid, error=_CANCELLED))
            raise
        except ConnectionError:
            return  # the connection is gone; the hub has failed this request already
        except Exception as exc:  # a bug here must still end the hub's exchange
            log.exception("request relay crashed")
            error = f"agent error: {exc}"
        finally:
            self._streams.pop(rid, None)
        if error is None:
            return  # the start frame carried the whole response
        if error:
            log.warning("engine failed a request", error=error)
        await self._send_quietly(AgentResponseEnd(request_id=rid, error=error))
        if error:  # the engine may have lost models (it died, its endpoint went away)
            self._spawn(self._report_inventory_quietly())

    # --- loads --------------------------------------------------------------------------

    async def _load_after(
        self, unloads: tuple[asyncio.Task[None], ...], command: HubLoad
    ) -> None:
        if unloads:
            await asyncio.gather(*unloads, return_exceptions=True)
        await self._load(command)

    async def _load(self, command: HubLoad) -> None:
        load_id, model_id = command.load_id, command.model.id
        log = self._log.bind(load_id=load_id, model=model_id)

        def progress(phase: LoadPhase, done_bytes: int, total_bytes: int) -> None:
            self._post(
                AgentLoadProgress(
                    load_id=load_id,
                    model_id=model_id,
                    phase=phase,
                    done_bytes=done_bytes,
                    total_bytes=total_bytes,
                )
            )

        log.info("loading a model")
        try:
            await self._engine.load(command.model, progress)
        except EngineError as exc:
            log.warning("model load failed", error=str(exc))
            self._post(AgentLoadFailed(load_id=load_id, model_id=model_id, error=str(exc)))
        except Exception as exc:  # an engine bug must not kill the session
            log.exception("model load crashed")
            error = f"unexpected engine error: {exc}"
            self._post(AgentLoadFailed(load_id=load_id, model_id=model_id, error=error))
        else:
            log.info("model loaded")
            self._post(AgentLoadDone(load_id=load_id, model_id=model_id))
        await self._report_inventory()

    async def _unload(self, command: HubUnload) -> None:
        log = self._log.bind(model=command.model_id, reason=command.reason)
        try:
            await self._engine.unload(command.model_id)
        except EngineError as exc:  # still loaded: the inventory below says so
            log.warning("model unload refused", error=str(exc))
        else:
            log.info("model unloaded")
            self._post(
                AgentUnloaded(model_id=command.model_id, reason=command.reason, commanded=True)
            )
        await self._report_inventory()

    def _lost(self, model_id: str, detail: str) -> None:
        """The engine lost ``model_id`` on its own: tell the hub now, not at the next poll."""
        self._log.warning("model lost by the engine", model=model_id, detail=detail)
        self._post(AgentUnloaded(model_id=model_id, reason="engine_exited", detail=detail))
        self._spawn(self._report_inventory_quietly())

    async def _report_inventory_quietly(self) -> None:
        try:
            await self._report_inventory()
        except Exception as exc:  # a flaky engine must not end the session
            self._log.warning("cannot read the engine's inventory", error=str(exc))

    async def _report_inventory(self) -> None:
        """Tell the hub what the engine holds, if that changed since it last heard."""
        inventory = await self._engine.inventory()
        if inventory != self._reported:
            self._reported = inventory
            self._post(AgentInventory(inventory=inventory))

    # --- background -------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._welcome.heartbeat_s)
            self._post(AgentHeartbeat(in_flight=self.in_flight))

    async def _watch_inventory(self) -> None:
        """Re-report when the engine changes on its own (an owner pulls a model, it crashes)."""
        while True:
            await asyncio.sleep(self._inventory_poll_s)
            await self._report_inventory_quietly()

    async def _write_outbox(self) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await self._send(message)
            except ConnectionError:
                return  # the reader sees the close and ends the session

    def _post(self, message: AgentMessage) -> None:
        """Queue a control message; they leave in the order posted."""
        self._outbox.put_nowait(message)

    async def _send(self, message: AgentMessage) -> None:
        await self._ws.send_bytes(encode(message))

    async def _send_quietly(self, message: AgentMessage) -> None:
        with contextlib.suppress(ConnectionError):
            await self._send(message)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _shutdown(self) -> None:
        """Cancel and await every task of the session (requests abort on the engine)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                self._log.error("session task failed", error=repr(result))
