"""The web portal, served by the hub itself: plain HTML, a little vanilla JS, no CDN.

Pages: the home page, ``/signin``, ``/docs`` (and the Markdown the spec
promises), Build (``/build/keys``, ``/build/playground``, ``/build/usage``),
Earn (``/earn``, ``/earn/add``, ``/device`` for browser enrolment) and
``/fleet`` (operators). Every page is rendered
server-side from the folded fleet state through :mod:`._html` (escaped by
construction), carries the security headers of :mod:`._web` (a CSP without
inline script), and every form carries a CSRF token (:mod:`._session`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from porten.adapters.http.hubkeys import HUB, SETTINGS
from porten.adapters.http.portal import (
    device,
    docs,
    earn,
    fleet,
    home,
    keys,
    playground,
    signin,
    static_files,
    usage,
)
from porten.adapters.http.portal._session import Sessions, derive_key
from porten.adapters.http.portal._web import PORTAL, Portal

__all__ = ["PORTAL", "Portal", "add_routes"]


async def _keyed(app: web.Application) -> AsyncIterator[None]:
    """Once the hub is up, key the portal's cookies with (a key derived from) its secret."""
    app[PORTAL].sessions.key = derive_key(app[HUB].server_secret)
    yield


def add_routes(app: web.Application) -> None:
    """Mount every portal page; call after the hub's own ``cleanup_ctx`` is registered."""
    settings = app[SETTINGS]
    app[PORTAL] = Portal(
        sessions=Sessions(key=b"", ttl_s=settings.session_ttl_s), public_url=settings.public_url,
        lookup=signin.account_viewer,
    )
    app.cleanup_ctx.append(_keyed)
    static_files.add_routes(app)
    docs.add_routes(app)
    home.add_routes(app)
    playground.add_routes(app)
    fleet.add_routes(app)
    signin.add_routes(app)
    keys.add_routes(app)
    device.add_routes(app)
    earn.add_routes(app)
    usage.add_routes(app)
