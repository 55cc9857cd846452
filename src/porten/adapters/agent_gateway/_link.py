"""A node's live connection as the hub holds it: send commands, route responses.

The link is the only writer of its WebSocket's frames from the hub's side
(aiohttp allows many writer tasks, one reader); the gateway's read loop
calls :meth:`NodeLink.route` synchronously for every response frame, so
routing costs a dict lookup and never awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from aiohttp import WSCloseCode, web

from porten.adapters.agent_gateway._exchange import Exchange, NodeGone
from porten.domain.values import CatalogEntry, UnloadReason
from porten.protocol import (
    CLOSE_SILENT,
    AgentHeartbeat,
    AgentResponseChunk,
    AgentResponseEnd,
    AgentResponseStart,
    HubLoad,
    HubMessage,
    HubRequest,
    HubUnload,
    encode,
)


class NodeLink:
    """One node's open session: its commands out, its responses routed to exchanges."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        *,
        node_id: str,
        session_id: str,
        window: int,
        silence_s: float,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.node_id = node_id
        self.session_id = session_id
        #: The agent's latest heartbeat (its in-flight and queued counts, VRAM in use).
        self.last_heartbeat: AgentHeartbeat | None = None
        self._ws = ws
        self._window = window
        self._log = log
        self._exchanges: dict[str, Exchange] = {}
        self._closed: str | None = None
        self._closing: set[asyncio.Task[None]] = set()
        #: Set once the link is torn down and its NodeDisconnected is recorded.
        self.finished = asyncio.Event()
        self._watchdog = _Watchdog(silence_s, self._silent)

    @property
    def window(self) -> int:
        """Response chunks the agent may send per request before it needs credit."""
        return self._window

    @property
    def in_flight(self) -> int:
        """Requests open on this link (what the router balances on)."""
        return len(self._exchanges)

    @property
    def closed_reason(self) -> str | None:
        """Why the hub closed this link (``None`` while open, or if the agent left)."""
        return self._closed

    @property
    def is_open(self) -> bool:
        """Whether commands can still be sent."""
        return self._closed is None and not self._ws.closed

    async def send_load(self, load_id: str, entry: CatalogEntry) -> None:
        """Command the node to download (if needed) and load ``entry``."""
        await self.send(HubLoad(load_id=load_id, model=entry))

    async def send_unload(self, model_id: str, reason: UnloadReason) -> None:
        """Command the node to unload ``model_id`` (its weights stay on disk)."""
        await self.send(HubUnload(model_id=model_id, reason=reason))

    def exchange(self, request: HubRequest) -> Exchange:
        """An exchange for ``request``; ``async with`` it to send the request."""
        return Exchange(self, request)

    async def close(self, reason: str, *, code: int = WSCloseCode.GOING_AWAY) -> None:
        """Close the connection; open exchanges fail with :class:`NodeGone`."""
        self.mark_closed(reason)
        with contextlib.suppress(ConnectionError):
            await self._ws.close(code=code, message=reason.encode()[:123])

    # --- used by exchanges and by the gateway's read loop -------------------------

    async def send(self, message: HubMessage) -> None:
        """Send one command frame; :class:`NodeGone` if the link is closed."""
        if self._closed is not None:
            raise NodeGone(self._closed)
        try:
            await self._ws.send_bytes(encode(message))
        except ConnectionError as exc:
            raise NodeGone(f"the connection dropped: {exc}") from exc

    def attach(self, exchange: Exchange) -> None:
        """Register ``exchange`` so its response frames reach it."""
        if self._closed is not None:
            raise NodeGone(self._closed)
        if exchange.request_id in self._exchanges:
            raise ValueError(f"request {exchange.request_id!r} is already open on this link")
        self._exchanges[exchange.request_id] = exchange

    def detach(self, exchange: Exchange) -> None:
        """Forget ``exchange``; later frames for its request id are dropped."""
        if self._exchanges.get(exchange.request_id) is exchange:
            del self._exchanges[exchange.request_id]

    def touch(self) -> None:
        """A frame arrived: the agent is alive."""
        self._watchdog.touch()

    def route(
        self, message: AgentResponseStart | AgentResponseChunk | AgentResponseEnd
    ) -> str | None:
        """Deliver a response frame to its exchange; the protocol violation, if any."""
        exchange = self._exchanges.get(message.request_id)
        if exchange is None:
            self._log.debug(
                "response frame for no open request dropped",
                request_id=message.request_id,
                frame=type(message).__name__,
            )
            return None
        match message:
            case AgentResponseChunk(data=data):
                return exchange.deliver_chunk(data)
            case AgentResponseStart():
                return exchange.deliver_start(message)
            case AgentResponseEnd(error=error):
                exchange.deliver_end(error)
        return None

    def mark_closed(self, reason: str) -> None:
        """No more traffic: fail every open exchange with :class:`NodeGone` (idempotent)."""
        if self._closed is not None:
            return
        self._closed = reason
        self._watchdog.stop()
        for exchange in list(self._exchanges.values()):
            exchange.fail(reason)

    def _silent(self) -> None:
        reason = f"the agent sent nothing for {self._watchdog.silence_s:g} s"
        self._log.warning("closing a silent agent connection", reason=reason)
        task = asyncio.create_task(self.close(reason, code=CLOSE_SILENT))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


class _Watchdog:
    """Calls ``on_silence`` once no frame arrived for ``silence_s``.

    aiohttp's ping/pong catches a dead TCP peer; this catches a live socket
    whose agent stopped talking (a wedged event loop still answers pings in
    the kernel's buffers for a while, and a broken agent may never heartbeat).
    One timer per link, re-armed lazily: :meth:`touch` is one float store.
    """

    def __init__(self, silence_s: float, on_silence: Callable[[], None]) -> None:
        self.silence_s = silence_s
        self._on_silence = on_silence
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(
            self._last + silence_s, self._check
        )

    def touch(self) -> None:
        self._last = self._loop.time()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        deadline = self._last + self.silence_s
        if self._loop.time() >= deadline:
            self._timer = None
            self._on_silence()
        else:
            self._timer = self._loop.call_at(deadline, self._check)
