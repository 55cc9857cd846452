"""One request relayed from the hub to the engine and back, under the hub's credit.

The agent may have at most ``window`` chunks of a response unacknowledged
(:mod:`porten.protocol`); when it runs out it stops reading the engine's
response, so TCP backpressure reaches the engine and a slow client slows
its own generation instead of filling memory anywhere on the way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import attrs

from porten.agent.engines.base import Engine, EngineError
from porten.protocol import (
    AgentMessage,
    AgentResponseChunk,
    AgentResponseStart,
    HubRequest,
)

Send = Callable[[AgentMessage], Awaitable[None]]


class Credit:
    """Chunks this stream may still send before the hub acknowledges more."""

    def __init__(self, window: int) -> None:
        self._available = window
        self._granted = asyncio.Event()

    @property
    def available(self) -> int:
        """Chunks that may be sent right now."""
        return self._available

    def grant(self, chunks: int) -> None:
        """The hub wrote ``chunks`` more of ours to its client."""
        self._available += chunks
        self._granted.set()

    async def take(self) -> None:
        """Spend one chunk of credit, waiting for the hub if none is left."""
        while self._available <= 0:
            self._granted.clear()
            await self._granted.wait()
        self._available -= 1


@attrs.define
class Stream:
    """A request in flight on this agent."""

    request: HubRequest
    credit: Credit
    task: asyncio.Task[None] | None = None
    #: The relay began (a task cancelled before its first step never runs its handlers).
    running: bool = False
    #: The hub asked to stop (as opposed to the connection ending).
    cancelled_by_hub: bool = False


#: Bytes of a non-streamed body gathered into the start frame (the rest follows as chunks).
INLINE_BODY_MAX: Final = 4 * 1024 * 1024


async def relay(engine: Engine, request: HubRequest, credit: Credit, send: Send) -> str | None:
    """Send the engine's answer to the hub: a start with the first bytes, then chunks.

    A non-streamed body up to :data:`INLINE_BODY_MAX` travels whole in the
    start frame (``end=True``); a stream's start waits for its first event,
    so the first token costs one frame, not two. Returns ``None`` when that
    single frame already ended the response, else what ``AgentResponseEnd``
    must say: ``""`` when the body ended normally, the error otherwise. The
    engine's response is always closed on the way out; closed early
    (cancelled, connection lost) it aborts the engine's request, so the
    engine stops generating.
    """
    rid = request.request_id
    try:
        response = await engine.request(request.path, request.body, stream=request.stream)
    except EngineError as exc:
        return str(exc)
    try:
        pieces = aiter(response.chunks())
        first, ended = await _first_piece(pieces, whole=not request.stream)
        if first:
            await credit.take()
        await send(
            AgentResponseStart(
                request_id=rid, status=response.status, content_type=response.content_type,
                data=first, end=ended,
            )
        )
        if ended:
            return None
        async for data in pieces:
            await credit.take()
            await send(AgentResponseChunk(request_id=rid, data=data))
    except EngineError as exc:
        return str(exc)
    finally:
        await response.aclose()
    return ""


async def _first_piece(pieces: AsyncIterator[bytes], *, whole: bool) -> tuple[bytes, bool]:
    """The bytes for the start frame, and whether they are the entire body.

    ``whole``: gather the body up to :data:`INLINE_BODY_MAX`; otherwise take
    the first piece only (a stream's first event must not wait for its second).
    """
    parts: list[bytes] = []
    size = 0
    async for data in pieces:
        if not data:
            continue
        parts.append(data)
        size += len(data)
        if not whole or size >= INLINE_BODY_MAX:
            return b"".join(parts), False
    return b"".join(parts), True
