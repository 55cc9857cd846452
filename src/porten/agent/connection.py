"""The agent: keep one connection to the hub open, forever, and serve over it.

Nodes live on home networks, so a lost connection is normal: the agent
dials again with exponential backoff and full jitter (0.5 s doubling to
30 s), says hello with its *current* inventory, and the hub reconciles
against its log (same node, new session). Only the hub decides who the
node is; the agent sends its credential and learns its node id from the
welcome.

The agent owns its engine: :meth:`Agent.run` starts it and, however run
ends, closes it; :meth:`Agent.stop` ends everything — requests in flight
are aborted on the engine, tasks are awaited, and no process is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Final

import aiohttp
import msgspec
import structlog

from porten import __version__
from porten.agent.backoff import Backoff
from porten.agent.engines.base import Engine
from porten.agent.session import Session
from porten.agent.settings import AgentSettings
from porten.config import ConfigError
from porten.protocol import (
    CLOSE_REPLACED,
    CLOSE_SILENT,
    CLOSE_VERSION_MISMATCH,
    MAX_FRAME_BYTES,
    AgentHello,
    HubWelcome,
    decode_hub_message,
    encode,
)
from porten.services.credentials import NODE_CREDENTIAL_PREFIX, well_formed

log = structlog.get_logger(__name__)

#: Seconds between the agent's own pings (a dead hub is noticed within 1.5 times this).
PING_S: Final = 10.0
#: Seconds to wait for the hub's welcome after the hello.
HANDSHAKE_TIMEOUT_S: Final = 10.0
#: Seconds between checks that the engine still holds what the hub was told.
INVENTORY_POLL_S: Final = 30.0
#: Seconds :meth:`Agent.stop` lets a session wind down before cancelling it.
STOP_GRACE_S: Final = 5.0

_CLOSE_MEANINGS: Final = {
    CLOSE_VERSION_MISMATCH: "the hub speaks another protocol version: upgrade porten",
    CLOSE_REPLACED: "another connection with this node's credential replaced this one",
    CLOSE_SILENT: "the hub heard nothing from this agent for too long",
}


class HandshakeRefused(Exception):
    """The hub closed the connection instead of welcoming the agent."""


class Agent:
    """A node's agent: ``await run()`` until ``await stop()``."""

    def __init__(
        self,
        settings: AgentSettings,
        engine: Engine,
        *,
        agent_version: str = __version__,
        backoff: Backoff | None = None,
        ping_s: float = PING_S,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        inventory_poll_s: float = INVENTORY_POLL_S,
    ) -> None:
        if not well_formed(settings.credential, NODE_CREDENTIAL_PREFIX):
            raise ConfigError(
                "PORTEN_NODE_CREDENTIAL is missing or malformed; enrol the node to get one"
            )
        self._settings = settings
        self._engine = engine
        self._version = agent_version
        self._backoff = backoff or Backoff()
        self._ping_s = ping_s
        self._handshake_timeout_s = handshake_timeout_s
        self._inventory_poll_s = inventory_poll_s
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._started = False
        self._main: asyncio.Task[None] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        #: Who the hub says this node is, and the current session (after a welcome).
        self.node_id: str | None = None
        self.session_id: str | None = None
        #: Connections the hub welcomed so far.
        self.sessions = 0

    async def run(self) -> None:
        """Start the engine, stay connected until :meth:`stop`, then close the engine."""
        if self._started:
            raise RuntimeError("an agent runs once")
        self._started = True
        try:
            await self._engine.start()
            self._main = asyncio.create_task(self._reconnect_forever(), name="porten-agent")
            try:
                await self._main
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # run() itself was cancelled; otherwise stop() ended it
        finally:
            if self._main is not None and not self._main.done():
                self._main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._main
            await self._engine.aclose()
            self._stopped.set()

    async def stop(self) -> None:
        """End the session (gracefully if there is one), cancel everything, close the engine.

        Returns once :meth:`run` has finished, so nothing of the agent is left running.
        """
        self._stopping.set()
        if not self._started:
            return
        main = self._main
        if main is not None and not main.done():
            ws = self._ws
            if ws is not None:  # say goodbye, and let the session wind down by itself
                with contextlib.suppress(Exception):
                    await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"agent stopping")
                await asyncio.wait({main}, timeout=STOP_GRACE_S)
            main.cancel()
        await self._stopped.wait()

    async def _reconnect_forever(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=HANDSHAKE_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not self._stopping.is_set():
                await self._connect_once(http)
                if self._stopping.is_set():
                    return
                delay = self._backoff.next_delay()
                log.info("reconnecting to the hub", in_s=round(delay, 3))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def _connect_once(self, http: aiohttp.ClientSession) -> None:
        """One connection, from dialling to its end; failures are logged, not raised."""
        url = self._settings.connect_url
        try:
            async with http.ws_connect(
                url,
                headers={"Authorization": f"Bearer {self._settings.credential}"},
                heartbeat=self._ping_s,
                max_msg_size=MAX_FRAME_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_close=STOP_GRACE_S),
            ) as ws:
                self._ws = ws
                _nodelay(ws)
                await self._serve(ws)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                log.error("the hub refused this node's credential; is the node enrolled?")  # noqa: TRY400 (expected; a traceback would be noise)
            else:
                log.warning("the hub refused the connection", status=exc.status, url=url)
        except HandshakeRefused as exc:
            log.error("the hub closed the connection at hello", reason=str(exc))  # noqa: TRY400 (the reason says it all)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("cannot reach the hub", url=url, error=str(exc) or type(exc).__name__)
        finally:
            self._ws = None

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        inventory = await self._engine.inventory()
        await ws.send_bytes(encode(AgentHello(agent_version=self._version, inventory=inventory)))
        welcome = await self._welcome(ws)
        self._backoff.reset()
        self.node_id, self.session_id = welcome.node_id, welcome.session_id
        self.sessions += 1
        bound = log.bind(node_id=welcome.node_id, session_id=welcome.session_id)
        bound.info("connected to the hub", models=list(inventory.models_loaded))
        session = Session(
            ws,
            self._engine,
            welcome,
            inventory,
            inventory_poll_s=self._inventory_poll_s,
            log=bound,
        )
        reason = await session.run()
        meaning = _CLOSE_MEANINGS.get(ws.close_code or 0)
        if self._stopping.is_set():
            bound.info("disconnected from the hub", reason="the agent is stopping")
        else:
            bound.warning("lost the connection to the hub", reason=meaning or reason)

    async def _welcome(self, ws: aiohttp.ClientWebSocketResponse) -> HubWelcome:
        msg = await ws.receive(timeout=self._handshake_timeout_s)
        if msg.type is not aiohttp.WSMsgType.BINARY:
            code = ws.close_code or 0
            raise HandshakeRefused(_CLOSE_MEANINGS.get(code) or f"{msg.extra or msg.type} ({code})")
        try:
            welcome = decode_hub_message(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise HandshakeRefused(f"the hub's first frame does not decode: {exc}") from exc
        if not isinstance(welcome, HubWelcome):
            raise HandshakeRefused(f"expected a welcome, got {type(welcome).__name__}")
        return welcome


def _nodelay(ws: aiohttp.ClientWebSocketResponse) -> None:
    """No Nagle on the hub connection: a token frame must not wait for the next one.

    aiohttp already sets it when it connects; this keeps the promise explicit.
    """
    sock = ws.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
