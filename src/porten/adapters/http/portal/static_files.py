"""``/static/<file>``: the portal's stylesheet and scripts, from the package itself.

No CDN and no build step at run time: the files ship inside the wheel, so
a self-hosted hub works offline. Only the names listed here are served.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from aiohttp import web

from porten.adapters.http.portal._web import secured

_TYPES: Final = {".css": "text/css", ".js": "text/javascript"}
STATIC: Final = web.AppKey("porten_static", dict)


def _load() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("porten.adapters.http.portal") / "static"
    files = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in _TYPES:
            files[item.name] = (item.read_bytes(), _TYPES[suffix])
    return files


@secured
async def static(request: web.Request) -> web.StreamResponse:
    """One static file, or 404."""
    found = request.app[STATIC].get(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound(text="no such static file")
    body, content_type = found
    return web.Response(body=body, content_type=content_type, charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application) -> None:
    """Mount ``/static/{name}``."""
    app[STATIC] = _load()
    app.router.add_get("/static/{name}", static)
