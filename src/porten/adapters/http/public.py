"""``/public/v1``: what anyone may read without a key — warm-up progress of a model.

``GET /public/v1/models/warming?model=M`` answers once; the same URL with
``Accept: text/event-stream`` (or ``/public/v1/models/warming/stream``)
sends a new ``data:`` event each time the load moves, until the model is
ready, so a page can draw a live bar without polling.

``phase`` is ``downloading`` → ``loading`` → ``ready`` as the spec says, plus
``queued`` (a node was told to load it, nothing reported yet) and ``cold``
(offered, nobody is loading it: the next request will start a load).

``pct`` is the whole warm-up, so a bar never runs backwards when the phase
changes: downloading fills the first :data:`DOWNLOAD_SHARE` percent (by
bytes), loading into memory the rest up to 99 (by the bytes the engine
reports loaded, if it does), and only ``ready`` is 100. A load from weights
already on disk starts at the loading share.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import msgspec
from aiohttp import web

from porten.adapters.http import errors
from porten.adapters.http.hubkeys import HUB
from porten.domain.state import FleetState, is_ready, load_in_progress

MIB: Final = 1024 * 1024
KEEPALIVE_S: Final = 15.0
#: Percent of the bar the download fills; loading into memory fills the rest up to 99.
DOWNLOAD_SHARE: Final = 90
_PHASE_ORDER: Final = {"requested": 0, "downloading": 1, "loading": 2}


class Warming(msgspec.Struct, frozen=True, kw_only=True):
    """Warm-up progress of one model, as the spec shapes it."""

    model: str
    ready: bool
    phase: str
    done_mb: int
    total_mb: int
    pct: int


def warming_status(state: FleetState, model_id: str) -> Warming:
    """The most advanced load of ``model_id`` (or ready, or cold)."""
    entry = state.catalog[model_id].entry
    if is_ready(state, model_id):
        return Warming(model=model_id, ready=True, phase="ready", done_mb=entry.disk_mb,
                       total_mb=entry.disk_mb, pct=100)
    loads = load_in_progress(state, model_id)
    if not loads:
        return Warming(model=model_id, ready=False, phase="cold", done_mb=0,
                       total_mb=entry.disk_mb, pct=0)
    progress = []
    for _, p in loads:
        total = p.total_bytes or entry.disk_mb * MIB
        done = min(p.done_bytes, total)
        progress.append((overall_pct(p.phase, done, total), _PHASE_ORDER.get(p.phase, 0), done,
                         total, p.phase))
    pct, _, done, total, phase = max(progress)
    return Warming(model=model_id, ready=False,
                   phase="queued" if phase == "requested" else phase, done_mb=done // MIB,
                   total_mb=total // MIB, pct=pct)


def overall_pct(phase: str, done: int, total: int) -> int:
    """Percent of the whole warm-up: downloading 0..DOWNLOAD_SHARE, loading up to 99."""
    share = done / total if total else 0.0
    if phase == "downloading":
        return int(share * DOWNLOAD_SHARE)
    if phase == "loading":
        return DOWNLOAD_SHARE + int(share * (99 - DOWNLOAD_SHARE))
    return 0


def _model(request: web.Request, state: FleetState) -> str:
    model = request.query.get("model", "")
    if not model:
        raise errors.missing_parameter("model")
    c = state.catalog.get(model)
    if c is None or not c.offered:
        raise errors.model_not_found(model)
    return model


async def warming(request: web.Request) -> web.StreamResponse:
    """Warm-up progress of ``?model=``; an SSE stream when the client accepts one."""
    if "text/event-stream" in request.headers.get("Accept", ""):
        return await warming_stream(request)
    state = request.app[HUB].projection.state
    status = warming_status(state, _model(request, state))
    return web.Response(body=msgspec.json.encode(status), content_type="application/json")


async def warming_stream(request: web.Request) -> web.StreamResponse:
    """An SSE event per change of the model's warm-up progress, ending at ``ready``."""
    projection = request.app[HUB].projection
    model = _model(request, projection.state)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    last: Warming | None = None
    try:
        while True:
            status = warming_status(projection.state, model)
            if status != last:
                await response.write(b"data: " + msgspec.json.encode(status) + b"\n\n")
                last = status
            if status.ready or projection.state.catalog[model].offered is False:
                break
            try:
                await asyncio.wait_for(projection.changed(), timeout=KEEPALIVE_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
    except ConnectionResetError:
        return response
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    """Mount the public routes."""
    app.router.add_get("/public/v1/models/warming", warming)
    app.router.add_get("/public/v1/models/warming/stream", warming_stream)
