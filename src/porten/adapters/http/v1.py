"""``/v1``: the OpenAI-compatible surface. Decode → decide → relay, nothing else.

Every decision here reads the fleet state the hub already holds (no
database on the request path): the key from the folded key index, the
model from the folded catalog, the node from the pure router.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import structlog
from aiohttp import web

from porten.adapters.http import errors
from porten.adapters.http.context import request_id_of
from porten.adapters.http.hubkeys import HUB, RELAY
from porten.adapters.http.limits import admit
from porten.adapters.http.openai_types import ModelList, completion_cap, model_card
from porten.adapters.http.openai_validation import (
    check_capabilities,
    decode_chat_request,
    decode_embeddings_request,
    encode,
    forward_body,
)
from porten.adapters.http.relay import Job
from porten.adapters.http.sse import estimate_tokens
from porten.domain.state import FleetState, KeyState
from porten.domain.values import CatalogEntry
from porten.scheduler.eligibility import Requester, model_allowed, node_admits
from porten.services.admission import Admission
from porten.services.auth import Unauthenticated, authenticate

log = structlog.get_logger(__name__)


def _authenticate(request: web.Request) -> KeyState:
    hub = request.app[HUB]
    try:
        return authenticate(
            hub.projection.state, hub.server_secret, request.headers.getall("Authorization", [])
        )
    except Unauthenticated as exc:
        raise errors.invalid_api_key(exc.reason) from None


def _offered(state: FleetState, model_id: str) -> CatalogEntry:
    c = state.catalog.get(model_id)
    if c is None or not c.offered:
        raise errors.model_not_found(model_id)
    return c.entry


def _requester(key: KeyState, model_id: str) -> Requester:
    requester = Requester(owner_id=key.owner_id, policy=key.policy)
    if not model_allowed(requester, model_id):
        raise errors.model_not_allowed(model_id, "this API key's policy does not allow it")
    return requester


def _job(
    request: web.Request,
    key: KeyState,
    requester: Requester,
    *,
    model_id: str,
    path: Literal["/v1/chat/completions", "/v1/embeddings"],
    body: bytes,
    stream: bool,
    include_usage: bool,
    prompt_bytes: int,
    affinity: str | None,
    admission: Admission,
) -> Job:
    hub = request.app[HUB]
    return Job(
        request_id=request_id_of(request),
        key_id=key.key_id,
        requester=requester,
        model_id=model_id,
        path=path,
        body=body,
        stream=stream,
        include_usage=include_usage,
        prompt_estimate=estimate_tokens(prompt_bytes),
        affinity=affinity,
        deadline=asyncio.get_running_loop().time() + hub.settings.request_timeout_s,
        warmup_budget_s=hub.settings.warmup_budget_s,
        charge=admission.charge,
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``, streaming and not."""
    key = _authenticate(request)
    raw = await request.read()
    decoded = decode_chat_request(raw)
    chat = decoded.request
    entry = _offered(request.app[HUB].projection.state, chat.model)
    check_capabilities(chat, entry)
    requester = _requester(key, entry.id)
    admission = await admit(request, key, entry, prompt_bytes=len(raw),
                            completion_cap=completion_cap(chat))
    include_usage = bool(chat.stream and chat.stream_options and chat.stream_options.include_usage)
    overrides: dict[str, Any] = {"model": entry.id}
    if chat.stream:  # the hub always meters; the client sees usage only if it asked
        options = decoded.raw.get("stream_options")
        overrides["stream_options"] = {
            **(options if isinstance(options, dict) else {}), "include_usage": True
        }
    if admission.completion_cap is not None:  # the key's budget buys no more than this
        cap_field = "max_completion_tokens" if chat.max_completion_tokens is not None \
            else "max_tokens"
        overrides[cap_field] = admission.completion_cap
    body = forward_body(decoded.raw, **overrides)
    job = _job(request, key, requester, model_id=entry.id, path="/v1/chat/completions",
               body=body, stream=chat.stream, include_usage=include_usage,
               prompt_bytes=len(body), affinity=chat.user, admission=admission)
    relay = request.app[RELAY]
    try:
        with structlog.contextvars.bound_contextvars(model=entry.id):
            if chat.stream:
                return await relay.stream(request, job)
            return await relay.complete(job)
    finally:  # a request no node metered cost nothing: give its reservation back
        admission.release()


async def embeddings(request: web.Request) -> web.StreamResponse:
    """``POST /v1/embeddings`` (a string or a list of inputs)."""
    key = _authenticate(request)
    raw = await request.read()
    decoded = decode_embeddings_request(raw)
    req = decoded.request
    entry = _offered(request.app[HUB].projection.state, req.model)
    check_capabilities(req, entry)
    requester = _requester(key, entry.id)
    admission = await admit(request, key, entry, prompt_bytes=len(raw), completion_cap=None,
                            completion=False)
    body = forward_body(decoded.raw, model=entry.id)
    job = _job(request, key, requester, model_id=entry.id, path="/v1/embeddings", body=body,
               stream=False, include_usage=False, prompt_bytes=len(body), affinity=None,
               admission=admission)
    try:
        with structlog.contextvars.bound_contextvars(model=entry.id):
            return await request.app[RELAY].complete(job)
    finally:
        admission.release()


async def models(request: web.Request) -> web.Response:
    """``GET /v1/models``: every offered model this key may use, ready or not."""
    key = _authenticate(request)
    state = request.app[HUB].projection.state
    requester = Requester(owner_id=key.owner_id, policy=key.policy)
    ready_models = {
        m
        for n in state.nodes.values()
        if n.online and node_admits(requester, n)
        for m in n.ready_models()
    }
    cards = [
        model_card(c.entry, ready=c.entry.id in ready_models)
        for _, c in sorted(state.catalog.items())
        if c.offered and model_allowed(requester, c.entry.id)
    ]
    return web.Response(body=encode(ModelList(data=cards)), content_type="application/json")


def add_routes(app: web.Application) -> None:
    """Mount the /v1 routes."""
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
