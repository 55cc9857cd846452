"""``GET /agent/v1/connect``: authenticate a node, run its session, record its life.

Per connection: check the credential against the folded state (401 before
any upgrade); wait for the agent's hello; replace an older link of the same
node (its ``NodeDisconnected`` is recorded first, so the log reads
connect → disconnect → connect); welcome it; record ``NodeConnected`` and
the inventory; then read frames until the connection ends. Every way a
connection can end — the agent leaves, the network drops, a heartbeat is
missed, the agent breaks the protocol, the hub shuts down — runs the same
teardown: open exchanges fail with :class:`NodeGone`, and
``NodeDisconnected`` is appended. A misbehaving agent only ever loses its
own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final

import attrs
import msgspec
import structlog
from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from aiohttp.tcp_helpers import tcp_nodelay

from porten.adapters.agent_gateway import _observe
from porten.adapters.agent_gateway._link import NodeLink
from porten.domain import events as ev
from porten.domain.state import FleetState
from porten.protocol import (
    CLOSE_REPLACED,
    CLOSE_VERSION_MISMATCH,
    DEFAULT_WINDOW,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    AgentHello,
    HubWelcome,
    decode_agent_message,
    encode,
)
from porten.services.credentials import NODE_CREDENTIAL_PREFIX, token_hash, well_formed

log = structlog.get_logger(__name__)

#: Seconds an agent has to send its hello after the upgrade.
HELLO_TIMEOUT_S: Final = 5.0
#: Seconds a teardown waits for the link's queued events before giving up on them.
_DRAIN_S: Final = 10.0
_MAX_REASON: Final = 123  # bytes a WebSocket close reason may hold


@attrs.frozen
class GatewayDeps:
    """What the gateway needs from the hub (the composition root wires the real ones)."""

    #: The hub's current folded state (authentication reads it).
    state: Callable[[], FleetState]
    #: Durable append, awaited: connect, disconnect and load lifecycle events.
    append: Callable[[Sequence[ev.AnyEvent]], Awaitable[int]]
    #: Fire-and-forget append for high-rate events (load progress).
    submit: Callable[[Sequence[ev.AnyEvent]], None]
    #: Unix seconds, for the events' ``at``.
    clock: Callable[[], float]
    #: Fresh ids, for session ids.
    new_id: Callable[[], str]
    server_secret: bytes


class AgentGateway:
    """Holds every node's live link; :meth:`handle` is the aiohttp route handler."""

    def __init__(
        self,
        deps: GatewayDeps,
        *,
        heartbeat_s: float = 5.0,
        window: int = DEFAULT_WINDOW,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        hello_timeout_s: float = HELLO_TIMEOUT_S,
    ) -> None:
        self._deps = deps
        self._heartbeat_s = heartbeat_s
        self._window = window
        self._max_frame_bytes = max_frame_bytes
        self._hello_timeout_s = hello_timeout_s
        self._links: dict[str, NodeLink] = {}
        self._handshakes: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._closing = False

    def link(self, node_id: str) -> NodeLink | None:
        """The live connection of ``node_id``, if it has one."""
        return self._links.get(node_id)

    def links(self) -> Mapping[str, NodeLink]:
        """Every live connection, by node id (a snapshot: links come and go)."""
        return self._links.copy()

    async def aclose(self) -> None:
        """Hub shutdown: refuse new connections and close every link (recording each)."""
        self._closing = True
        links = list(self._links.values())
        await asyncio.gather(*(link.close("the hub is shutting down") for link in links))
        for link in links:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.finished.wait(), _DRAIN_S)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Run one agent connection from upgrade to teardown.

        Shielded from the hub's cancel-on-hang-up: a dropped agent connection
        is noticed by the reader itself, and the teardown that records the
        node's departure must run whole, wherever the drop caught the handler.
        """
        return await asyncio.shield(self._handle(request))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._closing:
            return _error(503, "the hub is shutting down", "hub_unavailable")
        node_id = self._authenticate(request)
        if node_id is None:
            return _error(401, "invalid or unknown node credential", "invalid_node_credential")
        ws = web.WebSocketResponse(
            heartbeat=self._heartbeat_s,  # pings while idle; no pong in heartbeat/2 closes
            max_msg_size=self._max_frame_bytes,
            compress=False,  # token frames are tiny; deflate would only add latency
            timeout=self._heartbeat_s,  # how long a close waits for the agent's reply
        )
        if not ws.can_prepare(request).ok:
            return _error(400, "this endpoint takes a WebSocket upgrade", "websocket_required")
        await ws.prepare(request)
        _nodelay(request)
        bound = log.bind(node_id=node_id, peer=request.remote)
        hello = await self._receive_hello(ws, bound)
        if hello is None:
            return ws
        link = await self._open(ws, node_id, hello, bound)
        if link is None:
            return ws
        reason = "the hub stopped reading"
        try:
            reason = await self._read(ws, link, bound.bind(session_id=link.session_id))
        finally:
            await self._teardown(ws, link, reason)
        return ws

    # --- connection setup ---------------------------------------------------------

    def _authenticate(self, request: web.Request) -> str | None:
        """The node id the credential belongs to; ``None`` (logged, never the token) if none."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not well_formed(token, NODE_CREDENTIAL_PREFIX):
            log.warning("agent refused: malformed node credential", peer=request.remote)
            return None
        node_id = self._deps.state().nodes_by_credential.get(
            token_hash(self._deps.server_secret, token)
        )
        if node_id is None:
            log.warning("agent refused: unknown node credential", peer=request.remote)
        return node_id

    async def _receive_hello(
        self, ws: web.WebSocketResponse, bound: structlog.typing.FilteringBoundLogger
    ) -> AgentHello | None:
        """The agent's hello, or ``None`` after closing a connection that sent none."""
        try:
            msg = await ws.receive(timeout=self._hello_timeout_s)
        except TimeoutError:
            reason = f"no hello within {self._hello_timeout_s:g} s"
            outcome: AgentHello | tuple[int, str] = (WSCloseCode.POLICY_VIOLATION, reason)
        else:
            outcome = _hello_of(msg)
        if isinstance(outcome, AgentHello):
            return outcome
        code, reason = outcome
        bound.warning("agent handshake refused", reason=reason)
        await ws.close(code=code, message=reason.encode()[:_MAX_REASON])
        return None

    async def _open(
        self,
        ws: web.WebSocketResponse,
        node_id: str,
        hello: AgentHello,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> NodeLink | None:
        """Retire any older link, record the connection, welcome the agent; the new link.

        Recorded before welcomed: an agent that holds a welcome is in the log
        and routable. The link is installed and the welcome written with no
        await in between (an uncompressed frame is written synchronously), so
        no command can reach the agent ahead of its welcome.
        """
        async with self._handshakes[node_id]:
            await self._retire(node_id)
            session_id = self._deps.new_id()
            bound = bound.bind(session_id=session_id)
            try:
                await self._deps.append(self._connected(node_id, session_id, hello))
            except Exception as exc:  # the log is unavailable: no session without a record
                bound.error("agent connection not recorded; refusing it", error=str(exc))
                await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"cannot record session")
                return None
            link = NodeLink(
                ws,
                node_id=node_id,
                session_id=session_id,
                window=self._window,
                silence_s=3 * self._heartbeat_s,
                log=bound,
            )
            self._links[node_id] = link
            welcome = HubWelcome(
                node_id=node_id,
                session_id=session_id,
                heartbeat_s=self._heartbeat_s,
                window=self._window,
            )
            with contextlib.suppress(ConnectionError):  # if it left, the read loop sees it
                await ws.send_bytes(encode(welcome))
        bound.info("agent connected", agent_version=hello.agent_version)
        return link

    async def _retire(self, node_id: str) -> None:
        """Close the node's current link, if any, and wait until its end is recorded."""
        if (old := self._links.get(node_id)) is not None:
            await old.close("replaced by a newer connection", code=CLOSE_REPLACED)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(old.finished.wait(), _DRAIN_S)

    def _connected(self, node_id: str, session_id: str, hello: AgentHello) -> list[ev.AnyEvent]:
        at = self._deps.clock()
        return [
            ev.NodeConnected(
                at=at,
                actor=_observe.actor(node_id),
                correlation_id=session_id,
                node_id=node_id,
                session_id=session_id,
                agent_version=hello.agent_version,
            ),
            _observe.capabilities(node_id, hello.inventory, at=at, session_id=session_id),
        ]

    # --- the session ----------------------------------------------------------------

    async def _read(
        self,
        ws: web.WebSocketResponse,
        link: NodeLink,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> str:
        """Handle frames until the connection ends; why it ended."""
        handler = _observe.Observations(
            link,
            append=self._deps.append,
            submit=self._deps.submit,
            clock=self._deps.clock,
            log=bound,
        )
        try:
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.BINARY:
                    link.touch()
                    try:
                        message = decode_agent_message(msg.data)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        return await _violation(link, bound, f"malformed frame: {exc}")
                    if (violation := handler.handle(message)) is not None:
                        return await _violation(link, bound, violation)
                elif msg.type is WSMsgType.TEXT:
                    return await _violation(link, bound, "a text frame (the protocol is binary)")
                elif msg.type is WSMsgType.ERROR:
                    reason = f"connection error: {msg.data}"
                    bound.warning("agent connection failed", reason=reason)
                    return reason
                else:  # CLOSE, CLOSING, CLOSED
                    return link.closed_reason or f"closed by the agent (code {ws.close_code})"
        finally:
            await handler.drain(_DRAIN_S)

    async def _teardown(self, ws: web.WebSocketResponse, link: NodeLink, reason: str) -> None:
        """Fail open exchanges, forget the link, record the disconnect; never raises."""
        link.mark_closed(reason)
        if self._links.get(link.node_id) is link:
            del self._links[link.node_id]
        event = ev.NodeDisconnected(
            at=self._deps.clock(),
            actor=_observe.actor(link.node_id),
            correlation_id=link.session_id,
            node_id=link.node_id,
            session_id=link.session_id,
            reason=reason,
        )
        try:
            # Shielded: a handler cancelled at shutdown still gets its disconnect recorded.
            await asyncio.shield(self._deps.append([event]))
        except Exception as exc:
            log.exception("cannot record node disconnect", node_id=link.node_id, error=str(exc))
        finally:
            link.finished.set()
            if not ws.closed:
                with contextlib.suppress(ConnectionError):
                    await ws.close(
                        code=WSCloseCode.GOING_AWAY, message=reason.encode()[:_MAX_REASON]
                    )
        log.info(
            "agent disconnected", node_id=link.node_id, session_id=link.session_id, reason=reason
        )


def _hello_of(msg: WSMessage) -> AgentHello | tuple[int, str]:
    """The hello in the first frame, or the close code and reason to refuse it with."""
    if msg.type is not WSMsgType.BINARY:
        return WSCloseCode.PROTOCOL_ERROR, "expected a binary hello frame"
    try:
        hello = decode_agent_message(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return WSCloseCode.PROTOCOL_ERROR, f"bad hello: {exc}"
    if not isinstance(hello, AgentHello):
        return WSCloseCode.PROTOCOL_ERROR, "the first frame is not a hello"
    if hello.protocol != PROTOCOL_VERSION:
        reason = f"protocol {hello.protocol} unsupported; this hub speaks {PROTOCOL_VERSION}"
        return CLOSE_VERSION_MISMATCH, reason
    return hello


async def _violation(
    link: NodeLink, bound: structlog.typing.FilteringBoundLogger, reason: str
) -> str:
    """Drop a link that broke the protocol; the reason, for the disconnect event."""
    reason = f"protocol violation: {reason}"
    bound.warning("dropping agent connection", reason=reason)
    await link.close(reason, code=WSCloseCode.PROTOCOL_ERROR)
    return reason


def _error(status: int, message: str, code: str) -> web.Response:
    """A plain JSON error before any upgrade (OpenAI's error shape, like the rest of the hub)."""
    kind = {401: "authentication_error", 503: "server_error"}.get(status, "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "code": code}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response(body, status=status, headers=headers)


def _nodelay(request: web.Request) -> None:
    """Token frames must leave at once: no Nagle on the upgraded socket.

    aiohttp sets it when it accepts a connection; set it again here so the
    promise holds for the WebSocket whatever changed the socket since.
    """
    if request.transport is not None:
        tcp_nodelay(request.transport, True)  # a no-op for non-TCP sockets
