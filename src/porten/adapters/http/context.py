"""Per-request context: the request id, echoed as ``X-Request-Id`` and bound to every log line.

A caller may send its own ``X-Request-Id`` (kept if it is short and
printable, so a client's trace id flows through); otherwise the hub mints
one. It is bound into structlog's context variables for the life of the
request, so every line logged while serving it carries ``request_id`` — and
``node_id``/``model`` once the relay binds them.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

REQUEST_ID: Final = web.RequestKey("request_id", str)
_SAFE_ID: Final = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_of(request: web.Request) -> str:
    """The id of ``request`` (minted on first use if the middleware has not run)."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        rid = f"req_{uuid.uuid4().hex}"
        request[REQUEST_ID] = rid
    return rid


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Assign the request id, bind it for logging, and echo it on the response."""
    incoming = request.headers.get("X-Request-Id", "")
    rid = incoming if _SAFE_ID.match(incoming) else f"req_{uuid.uuid4().hex}"
    request[REQUEST_ID] = rid
    with structlog.contextvars.bound_contextvars(request_id=rid):
        return await handler(request)


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: every response, errors and streams included, says its id."""
    response.headers["X-Request-Id"] = request_id_of(request)
