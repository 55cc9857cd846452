"""One request and its response over a node's link, seen from the hub.

The agent delivers ``start`` (with the body's first bytes, or all of it and
the end), then body chunks, then an end; the exchange
buffers at most ``window`` chunks (the agent may not send more before it
gets credit, see :mod:`porten.protocol`) and hands credit back in batches as
its consumer takes chunks. A consumer that stops reading therefore stalls
the generation on the node instead of growing memory in the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Protocol, Self

from porten.protocol import AgentResponseStart, HubCancel, HubCredit, HubMessage, HubRequest


class NodeGone(Exception):
    """The node's connection dropped before or while it answered; nothing more will come."""


class EngineFailed(Exception):
    """The node's engine failed this request (``AgentResponseEnd.error``)."""


class _Link(Protocol):
    """What an exchange needs from its link (the real one is :class:`NodeLink`)."""

    @property
    def window(self) -> int: ...

    async def send(self, message: HubMessage) -> None: ...

    def attach(self, exchange: Exchange) -> None: ...

    def detach(self, exchange: Exchange) -> None: ...


class Exchange:
    """An async context manager: entering sends the request, leaving early cancels it."""

    def __init__(self, link: _Link, request: HubRequest) -> None:
        self.request_id = request.request_id
        self._link = link
        self._request = request
        self._window = link.window
        self._credit_batch = max(1, self._window // 4)
        self._started: asyncio.Future[AgentResponseStart] = (
            asyncio.get_running_loop().create_future()
        )
        #: The future a :meth:`start` call is waiting on right now, if any.
        self._start_waiter: asyncio.Future[None] | None = None
        self._buffer: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._end: str | None = None  # "" once complete, the error if it failed
        self._gone: str | None = None  # why the link dropped, if it did first
        self._unacked = 0  # chunks received that the hub has not credited yet
        self._taken = 0  # chunks the consumer took since the last credit
        self._cancelled = False
        #: Body chunks received from the agent so far.
        self.received = 0

    @property
    def buffered(self) -> int:
        """Chunks received and not yet taken by the consumer (never above the window)."""
        return len(self._buffer)

    @property
    def done(self) -> bool:
        """Whether nothing more will arrive: the response ended, or the link dropped."""
        return self._end is not None or self._gone is not None

    async def __aenter__(self) -> Self:
        self._link.attach(self)
        try:
            await self._link.send(self._request)
        except BaseException:
            self._link.detach(self)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self.done:
                await self.cancel()
        finally:
            self._link.detach(self)

    async def start(self, timeout: float) -> AgentResponseStart:  # noqa: ASYNC109 (a deadline the router chooses per request)
        """The engine's status and content type.

        Raises :class:`NodeGone`, :class:`EngineFailed`, or ``TimeoutError``
        after ``timeout`` seconds (the exchange stays usable: call it again or leave).

        The caller waits on a future of its own that the link's reader resolves
        in the same step as it records the start, so the first byte reaches the
        client one loop turn after its frame is read (``wait_for(shield(...))``
        took three: every turn is an ``epoll`` call and a chance for other work
        to go first).
        """
        if not self._started.done():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._start_waiter = waiter
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            finally:
                self._start_waiter = None
        return self._started.result()

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes in order; credit goes back to the agent as they are taken.

        Ends after the last chunk; raises :class:`EngineFailed` if the engine
        failed, :class:`NodeGone` if the link dropped first (after yielding
        whatever had already arrived).
        """
        while True:
            while self._buffer:
                data = self._buffer.popleft()
                await self._return_credit()
                yield data
            if self._end is not None:
                if self._end:
                    raise EngineFailed(self._end)
                return
            if self._gone is not None:
                raise NodeGone(self._gone)
            self._wake.clear()
            await self._wake.wait()

    async def cancel(self) -> None:
        """Tell the node to stop generating (once; a no-op after the end)."""
        if self._cancelled or self.done:
            return
        self._cancelled = True
        with contextlib.suppress(NodeGone):
            await self._link.send(HubCancel(request_id=self.request_id))

    async def _return_credit(self) -> None:
        self._taken += 1
        if self._taken < self._credit_batch or self._end is not None:
            return  # batched; and a finished response needs no more credit
        granted, self._taken = self._taken, 0
        self._unacked -= granted
        with contextlib.suppress(NodeGone):  # the next read reports the drop
            await self._link.send(HubCredit(request_id=self.request_id, chunks=granted))

    # --- called by the link's reader (synchronously, in frame order) ---------------

    def deliver_start(self, start: AgentResponseStart) -> str | None:
        """Record the start (and the body bytes it carries); the protocol violation, if any."""
        if self._started.done():
            return "a second response start for the same request"
        self._started.set_result(start)
        self._wake_starter()
        if start.data:
            violation = self.deliver_chunk(start.data)
            if violation is not None:
                return violation
        if start.end:
            self.deliver_end("")
        return None

    def deliver_chunk(self, data: bytes) -> str | None:
        """Buffer a chunk; the protocol violation, if it is one."""
        if not self._started.done() or self._end is not None:
            return "a response chunk outside its response's start and end"
        self._unacked += 1
        if self._unacked > self._window:
            return f"more than the window of {self._window} chunks without credit"
        self._buffer.append(data)
        self.received += 1
        self._wake.set()
        return None

    def deliver_end(self, error: str) -> None:
        """The response is complete (``error`` empty) or failed."""
        if self._end is not None:
            return
        self._end = error
        if not self._started.done():
            self._fail_start(EngineFailed(error or "the engine ended the response without a start"))
        self._wake.set()

    def fail(self, reason: str) -> None:
        """The link dropped: wake the consumer with :class:`NodeGone` (unless already ended)."""
        if self.done:
            return
        self._gone = reason
        if not self._started.done():
            self._fail_start(NodeGone(reason))
        self._wake.set()

    def _fail_start(self, exc: BaseException) -> None:
        self._started.set_exception(exc)
        # Mark it retrieved: a caller that only iterates chunks() must not get a
        # "Future exception was never retrieved" warning at garbage collection.
        self._started.exception()
        self._wake_starter()

    def _wake_starter(self) -> None:
        waiter = self._start_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
