"""Carrying one /v1 request to a node and its answer back, metered exactly once.

The router ranks nodes; the relay tries them in order. A node that fails
*before the first byte reached the client* (connection lost, engine error,
5xx) is skipped for the next; once bytes have gone out, a failure ends the
stream with an OpenAI error event instead — never a hang, never a silent
retry that could duplicate output. Whatever happens, one ``request_served``
event records what was generated (cancelled and failed streams included),
submitted to the group-committing writer off the response path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Literal

import attrs
import structlog
from aiohttp import web

from porten.adapters.agent_gateway import AgentGateway, EngineFailed, Exchange, NodeGone, NodeLink
from porten.adapters.http import errors
from porten.adapters.http.sse import (
    DONE,
    SseSplitter,
    StreamMeter,
    Usage,
    event_data,
    response_usage,
)
from porten.domain.events import RequestServed
from porten.domain.ports import NO_STREAM
from porten.domain.state import FleetState
from porten.protocol import AgentResponseStart, HubRequest
from porten.scheduler.eligibility import Requester
from porten.scheduler.routing import NodeLoad, candidates
from porten.services.admission import Charge
from porten.services.demand import DemandMeter
from porten.services.loads import LoadsFailed, ModelNotOffered, ModelWarming, NoCompliantNode
from porten.services.writer import BatchingWriter

log = structlog.get_logger(__name__)

Outcome = Literal["ok", "cancelled", "node_error", "timeout"]
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
NO_NODE_RETRY_AFTER_S = 5.0


@attrs.frozen
class Job:
    """One /v1 request, decided and ready to send."""

    request_id: str
    key_id: str
    requester: Requester
    model_id: str
    path: Literal["/v1/chat/completions", "/v1/embeddings"]
    body: bytes
    stream: bool
    include_usage: bool
    prompt_estimate: int
    affinity: str | None
    deadline: float  # loop time
    #: How long this request may wait for a cold model to load before a 503 model_warming.
    warmup_budget_s: float = 300.0
    #: Prices the metered usage and settles the key's limits: (node, prompt, completion).
    charge: Callable[[str, int, int], Charge] | None = None


@attrs.define
class Opened:
    """A node that accepted the request: the exchange is open and its status known."""

    node_id: str
    exchange: Exchange
    start: AgentResponseStart
    started_at: float


async def _leave(exchange: Exchange) -> None:
    """Close our side of an exchange (cancelling it on the node if it is unfinished)."""
    await exchange.__aexit__(None, None, None)


@attrs.define
class _PumpState:
    """How far a stream got, readable after an interruption."""

    outcome: Outcome = "cancelled"
    first: float = 0.0


class _EventStream(web.StreamResponse):
    """An SSE response whose headers leave in the same write as its first event.

    ``StreamResponse`` writes its headers on ``prepare()``; the relay prepares
    only once the node's first event is in hand, so holding them back saves
    the client a separate segment and wake-up before its first token (the
    same thing aiohttp's ``Response`` does for whole bodies).
    """

    _send_headers_immediately = False


#: Gets a cold model ready for a requester within a budget (the load coordinator).
Warm = Callable[[str, Requester, float], Awaitable[None]]


@attrs.define
class Relay:
    """Sends jobs to nodes through the gateway, and meters them."""

    gateway: AgentGateway
    state: Callable[[], FleetState]
    writer: BatchingWriter
    clock: Callable[[], float]
    warm: Warm
    demand: DemandMeter
    #: (node, model) → requests open there; the planner never evicts a busy model.
    in_flight: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    #: Requests being relayed (from open to metered), for a graceful drain.
    active: int = 0
    _idle: asyncio.Event = attrs.field(factory=asyncio.Event)

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 (a shutdown deadline)
        """Wait until no request is being relayed (True), or ``timeout`` passes (False)."""
        if self.active == 0:
            return True
        self._idle.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    def loads(self) -> dict[str, NodeLoad]:
        """The router's view of load: only nodes with a live link."""
        out: dict[str, NodeLoad] = {}
        for node_id, link in self.gateway.links().items():
            hb = link.last_heartbeat
            out[node_id] = NodeLoad(in_flight=link.in_flight, queued=hb.queued if hb else 0)
        return out

    async def open(self, job: Job) -> Opened:
        """The first node (best ranked) that starts answering; retries before any byte."""
        tried: set[str] = set()
        loop = asyncio.get_running_loop()
        warmed = False
        while True:
            ranked = candidates(
                self.state(), job.model_id, job.requester, self.loads(),
                affinity=job.affinity, exclude=frozenset(tried),
            )
            if not ranked:
                if tried:
                    self.demand.unmet(job.model_id)
                    raise errors.node_error(
                        f"every node that could serve {job.model_id} failed "
                        f"({len(tried)} tried); try again"
                    )
                if warmed:
                    self.demand.unmet(job.model_id)
                    raise errors.no_available_node(job.model_id, NO_NODE_RETRY_AFTER_S)
                await self._warm(job, loop.time())
                warmed = True
                continue
            node_id = ranked[0].node_id
            tried.add(node_id)
            link = self.gateway.link(node_id)
            if link is None:
                continue
            opened = await self._try(link, job, loop.time())
            if opened is not None:
                return opened

    async def _warm(self, job: Job, now: float) -> None:
        """Load the model on demand (shared with concurrent requests), within the budget."""
        budget = min(job.warmup_budget_s, job.deadline - now)
        try:
            await self.warm(job.model_id, job.requester, budget)
        except NoCompliantNode as exc:
            self.demand.unmet(job.model_id)
            raise errors.no_available_node(job.model_id, exc.retry_after_s, exc.reason) \
                from None
        except ModelWarming as exc:
            self.demand.unmet(job.model_id)
            raise errors.model_warming(job.model_id, exc.retry_after_s) from None
        except ModelNotOffered:  # withdrawn while it waited: what a new request gets
            raise errors.model_not_found(job.model_id) from None
        except LoadsFailed as exc:
            self.demand.unmet(job.model_id)
            raise errors.node_error(
                f"{job.model_id} could not be loaded: {'; '.join(exc.errors) or 'loads failed'}"
            ) from None

    async def _try(self, link: NodeLink, job: Job, now: float) -> Opened | None:
        remaining = job.deadline - now
        if remaining <= 0:
            raise errors.gateway_timeout()
        request = HubRequest(
            request_id=job.request_id, path=job.path, model_id=job.model_id,
            body=job.body, stream=job.stream,
        )
        # Busy from the moment it is sent, not from the node's first answer: a
        # drain or an eviction must never finish under a request on its way.
        self._busy(link.node_id, job.model_id, +1)  # balanced by meter() or below
        exchange = link.exchange(request)
        started = time.perf_counter()
        try:
            await exchange.__aenter__()
            start = await exchange.start(timeout=remaining)
        except TimeoutError:
            await _leave(exchange)  # cancels it on the node, which may have worked on it
            elapsed = time.perf_counter() - started
            self.meter(job, link.node_id, Usage(job.prompt_estimate, 0, job.prompt_estimate),
                       ttft_s=elapsed, duration_s=elapsed, outcome="timeout")
            raise errors.gateway_timeout() from None
        except asyncio.CancelledError:  # the client hung up while the node worked on it
            await _leave(exchange)
            elapsed = time.perf_counter() - started
            self.meter(job, link.node_id, Usage(job.prompt_estimate, 0, job.prompt_estimate),
                       ttft_s=elapsed, duration_s=elapsed, outcome="cancelled")
            raise
        except (NodeGone, EngineFailed) as exc:
            self._busy(link.node_id, job.model_id, -1)
            await _leave(exchange)
            log.warning("node failed before answering", node_id=link.node_id, error=str(exc))
            return None
        except BaseException:
            self._busy(link.node_id, job.model_id, -1)
            await _leave(exchange)
            raise
        if start.status >= 500:
            self._busy(link.node_id, job.model_id, -1)
            await _leave(exchange)
            log.warning("engine error before answering", node_id=link.node_id,
                        status=start.status)
            return None
        self.demand.served(job.model_id)
        return Opened(node_id=link.node_id, exchange=exchange, start=start, started_at=started)

    def _busy(self, node_id: str, model_id: str, change: int) -> None:
        key = (node_id, model_id)
        self.in_flight[key] += change
        if self.in_flight[key] <= 0:
            del self.in_flight[key]

    def meter(self, job: Job, node_id: str, usage: Usage, *, ttft_s: float, duration_s: float,
              outcome: Outcome) -> None:
        """Record the request's usage exactly once (never its content).

        The event opens the stream ``request-<id>``, so a retry of a commit that
        did go through conflicts rather than billing twice.
        """
        self._busy(node_id, job.model_id, -1)
        c = job.charge(node_id, usage.prompt_tokens, usage.completion_tokens) if job.charge \
            else Charge()
        self.writer.submit([
            RequestServed(
                at=self.clock(), actor="hub", correlation_id=job.request_id,
                request_id=job.request_id, model_id=job.model_id, node_id=node_id,
                key_id=job.key_id, prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens, ttft_ms=ttft_s * 1000.0,
                duration_ms=duration_s * 1000.0, outcome=outcome, cost_usd=c.cost_usd,
                account_id=c.account_id, node_owner_id=c.node_owner_id,
            )
        ], expected={f"request-{job.request_id}": NO_STREAM})

    # --- non-streaming ---------------------------------------------------------------------

    async def complete(self, job: Job) -> web.Response:
        """Send ``job`` and answer with the node's whole response."""
        with self._tracked():
            return await self._complete(job)

    async def _complete(self, job: Job) -> web.Response:
        opened = await self.open(job)
        with structlog.contextvars.bound_contextvars(node_id=opened.node_id):
            body: bytes = b""
            outcome: Outcome = "cancelled"
            try:  # a client that hangs up cancels this wait (and the node's work)
                body, outcome = await self._collect(job, opened)
            finally:  # metered either way; a cancelled answer gave the client nothing
                duration = time.perf_counter() - opened.started_at
                usage = response_usage(body) if outcome == "ok" else None
                self.meter(job, opened.node_id,
                           usage or Usage(job.prompt_estimate, 0, job.prompt_estimate),
                           ttft_s=duration, duration_s=duration, outcome=outcome)
            if outcome == "timeout":
                raise errors.gateway_timeout()
            if outcome != "ok":
                raise errors.node_error(f"node {opened.node_id} failed while answering")
            log.info("request served", model=job.model_id, status=opened.start.status)
            return web.Response(
                body=body, status=opened.start.status,
                content_type=opened.start.content_type.split(";")[0],
                headers={"X-Porten-Node": opened.node_id},
            )

    async def _collect(self, job: Job, opened: Opened) -> tuple[bytes, Outcome]:
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout_at(job.deadline):
                async for data in opened.exchange.chunks():
                    size += len(data)
                    if size > MAX_RESPONSE_BYTES:
                        return b"", "node_error"
                    parts.append(data)
        except TimeoutError:
            return b"", "timeout"
        except (NodeGone, EngineFailed):
            return b"", "node_error"
        finally:  # leaving an unfinished exchange sends the node a cancel
            await _leave(opened.exchange)
        return b"".join(parts), "ok"

    # --- streaming ---------------------------------------------------------------------------

    async def stream(self, request: web.Request, job: Job) -> web.StreamResponse:
        """Send ``job`` and relay its SSE events to the client as they complete."""
        with self._tracked():
            return await self._stream(request, job)

    async def _stream(self, request: web.Request, job: Job) -> web.StreamResponse:
        opened = await self.open(job)
        with structlog.contextvars.bound_contextvars(node_id=opened.node_id):
            if opened.start.status != 200:  # an engine's 4xx: pass its error through as-is
                body, _ = await self._collect(job, opened)
                return web.Response(body=body, status=opened.start.status,
                                    content_type="application/json",
                                    headers={"X-Porten-Node": opened.node_id})
            response = _EventStream(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "X-Porten-Node": opened.node_id, "X-Accel-Buffering": "no",
            })
            await response.prepare(request)
            meter = StreamMeter()
            state = _PumpState()
            try:
                state.outcome = await self._pump(job, opened, response, meter, state)
            finally:  # metered even when the handler is cancelled by a departing client
                duration = time.perf_counter() - opened.started_at
                ttft = (state.first - opened.started_at) if state.first else duration
                usage = meter.usage(job.prompt_estimate)
                self.meter(job, opened.node_id, usage, ttft_s=ttft, duration_s=duration,
                           outcome=state.outcome)
                log.info("stream served", model=job.model_id, outcome=state.outcome,
                         completion_tokens=usage.completion_tokens)
            return response

    async def _pump(self, job: Job, opened: Opened, response: web.StreamResponse,
                    meter: StreamMeter, state: _PumpState) -> Outcome:
        splitter = SseSplitter()
        try:
            async with asyncio.timeout_at(job.deadline):
                async for data in opened.exchange.chunks():
                    out = bytearray()
                    for event in splitter.feed(data):
                        payload = event_data(event)
                        if payload is None or payload == DONE:
                            continue
                        if meter.observe(payload) and not job.include_usage:
                            continue  # the hub asked for usage to meter; the client did not
                        out += event + b"\n\n"
                    if out:
                        state.first = state.first or time.perf_counter()
                        await response.write(bytes(out))
        except ConnectionResetError:
            return "cancelled"  # the client went away; leaving the exchange sent the cancel
        except TimeoutError:
            await self._end_with_error(response, errors.gateway_timeout())
            return "timeout"
        except (NodeGone, EngineFailed) as exc:
            log.warning("node failed mid-stream", error=str(exc))
            await self._end_with_error(response, errors.node_error(
                "the node serving this stream failed; the answer is incomplete"))
            return "node_error"
        finally:  # leaving an unfinished exchange sends the node a cancel
            await _leave(opened.exchange)
        tail = b""
        if job.include_usage and meter.engine_usage is None:
            tail += meter.usage_event(job.prompt_estimate)
        await self._write_quietly(response, tail + b"data: [DONE]\n\n")
        return "ok"

    async def _end_with_error(self, response: web.StreamResponse, err: errors.ApiError) -> None:
        await self._write_quietly(response, errors.sse_error_event(err))

    @staticmethod
    async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof(data)  # one write: the tail and the end of the body
