"""The hub's aiohttp application: routes, middlewares, and the hub's lifetime tied to the app's.

Handlers stay thin (decode → call the service → encode); the hub's parts are
opened in a ``cleanup_ctx`` so they start before the first request and stop
after the last one has drained.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import msgspec
from aiohttp import web

from porten import __version__
from porten.adapters.http import admin, enrolment, portal, public, usage, v1
from porten.adapters.http.context import echo_request_id, request_context, request_id_of
from porten.adapters.http.errors import error_middleware
from porten.adapters.http.hubkeys import HUB, RELAY, SETTINGS
from porten.adapters.http.relay import Relay
from porten.bootstrap import running_hub
from porten.config import Settings

__all__ = ["HUB", "RELAY", "SETTINGS", "create_app"]


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """What ``GET /public/v1/status`` reports."""

    version: str
    event_log_position: int
    nodes: int
    nodes_online: int
    models_offered: int


async def _hub_ctx(app: web.Application) -> AsyncIterator[None]:
    async with running_hub(app[SETTINGS]) as hub:
        app[HUB] = hub
        app[RELAY] = Relay(
            gateway=hub.gateway,
            state=lambda: hub.projection.state,
            writer=hub.writer,
            clock=time.time,
            warm=hub.loads.ensure_ready,
            demand=hub.demand,
            in_flight=hub.in_flight,
        )
        yield


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def status(request: web.Request) -> web.Response:
    """A small public summary of the fleet and the event log."""
    hub = request.app[HUB]
    state = hub.projection.state
    body = Status(
        version=__version__,
        event_log_position=hub.projection.position,
        nodes=len(state.nodes),
        nodes_online=sum(1 for n in state.nodes.values() if n.online),
        models_offered=sum(1 for c in state.catalog.values() if c.offered),
    )
    return web.Response(body=msgspec.json.encode(body), content_type="application/json")


async def agent_connect(request: web.Request) -> web.StreamResponse:
    """``GET /agent/v1/connect``: a node's agent opens its one WebSocket here."""
    return await request.app[HUB].gateway.handle(request)


def create_app(settings: Settings) -> web.Application:
    """The hub application for ``settings``; its hub starts with the app."""
    app = web.Application(
        middlewares=[request_context, error_middleware(request_id=request_id_of)],
        client_max_size=settings.max_body_mb * 1024 * 1024,
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_hub_ctx)
    app.on_response_prepare.append(echo_request_id)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/public/v1/status", status)
    app.router.add_get("/agent/v1/connect", agent_connect)
    v1.add_routes(app)
    usage.add_routes(app)
    admin.add_routes(app)
    public.add_routes(app)
    portal.add_routes(app)
    enrolment.add_routes(app)
    return app
