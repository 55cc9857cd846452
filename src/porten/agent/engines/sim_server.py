"""The sim engine behind a real OpenAI-compatible HTTP server.

The agent reaches every engine over HTTP, so serving the deterministic
generator the same way lets tests and demos exercise that exact path (SSE
framing, pacing, client disconnects) without a GPU. This is the one place
where the sim sleeps: ``ttft_ms`` before the first token, then
``1 / tokens_per_s`` between tokens, for streaming and non-streaming alike,
so timeouts and cancellation behave as they do against a real engine.

aiohttp enables ``TCP_NODELAY`` on every connection it accepts
(``BaseProtocol.connection_made``), so each SSE event leaves as soon as it is
written rather than waiting for Nagle's algorithm to coalesce it.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import attrs
import msgspec
import structlog
from aiohttp import web

from porten.agent.engines.sim import (
    ChatPlan,
    SimModel,
    SimProfile,
    SimRequestError,
    count_tokens,
    embed,
    plan_chat,
    split_tokens,
    token_delay_s,
    ttft_s,
)
from porten.domain.values import ModelType

log = structlog.get_logger(__name__)

_ENCODER: Final = msgspec.json.Encoder()


@attrs.define
class SimStats:
    """What reached the engine, read by tests at ``GET /sim/stats``.

    ``cancelled`` counts requests whose client left before the last token, and
    ``tokens_generated`` counts only tokens produced before that, so a test can
    tell that a cancel travelled all the way from the client to the engine.
    """

    started: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    tokens_generated: int = 0


@attrs.frozen
class SimConfig:
    """What one sim server offers and how fast it pretends to be.

    ``models`` is the live set: :func:`offer` and :func:`withdraw` change it
    on a running server, which is how the agent's sim engine loads and unloads.
    """

    models: dict[str, SimModel]
    profile: SimProfile
    fail_models: frozenset[str] = frozenset()


CONFIG: Final = web.AppKey("sim_config", SimConfig)
STATS: Final = web.AppKey("sim_stats", SimStats)


class _ApiError(Exception):
    """An OpenAI-shaped error raised by a handler and rendered by the middleware."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str = "invalid_request_error",
        type_: str = "invalid_request_error",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.type, self.param = status, code, type_, param

    def response(self) -> web.Response:
        error = {"message": str(self), "type": self.type, "code": self.code, "param": self.param}
        return _json({"error": error}, status=self.status)


def create_app(
    models: Iterable[SimModel], profile: SimProfile, *, fail_models: Iterable[str] = ()
) -> web.Application:
    """An aiohttp app serving ``models``; requests for ``fail_models`` answer 500."""
    by_id: dict[str, SimModel] = {}
    for model in models:
        if model.id in by_id:
            raise ValueError(f"model {model.id!r} is listed twice")
        by_id[model.id] = model
    app = web.Application(middlewares=[_openai_errors])
    app[CONFIG] = SimConfig(models=by_id, profile=profile, fail_models=frozenset(fail_models))
    app[STATS] = SimStats()
    app.add_routes(
        [
            web.get("/health", _health),
            web.get("/v1/models", _models),
            web.get("/sim/stats", _stats),
            web.post("/v1/chat/completions", _chat_completions),
            web.post("/v1/embeddings", _embeddings),
        ]
    )
    return app


def offer(app: web.Application, model: SimModel) -> None:
    """Serve ``model`` from now on, as an engine does once a model is loaded."""
    app[CONFIG].models[model.id] = model


def withdraw(app: web.Application, model_id: str) -> None:
    """Stop serving ``model_id``; requests already running finish."""
    app[CONFIG].models.pop(model_id, None)


async def serve(
    host: str,
    port: int,
    models: Iterable[SimModel],
    profile: SimProfile,
    *,
    fail_models: Iterable[str] = (),
) -> None:
    """Serve until cancelled; the caller owns the event loop and the process's signals."""
    runner = web.AppRunner(create_app(models, profile, fail_models=fail_models), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]  # the real port when ``port`` was 0
        log.info(
            "sim_engine_listening", host=host, port=bound, models=sorted(runner.app[CONFIG].models)
        )
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(
    host: str,
    port: int,
    models: Iterable[SimModel],
    profile: SimProfile,
    *,
    fail_models: Iterable[str] = (),
) -> None:
    """Serve in the foreground until SIGINT or SIGTERM (``porten engine sim``)."""
    app = create_app(models, profile, fail_models=fail_models)
    log.info("sim_engine_starting", host=host, port=port, models=sorted(app[CONFIG].models))
    web.run_app(app, host=host, port=port, print=None, access_log=None)


# --- plumbing -------------------------------------------------------------------


def _json(body: object, *, status: int = 200) -> web.Response:
    return web.Response(body=_ENCODER.encode(body), status=status, content_type="application/json")


@web.middleware
async def _openai_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure leaves in OpenAI's ``{"error": {...}}`` shape, which SDKs parse."""
    try:
        return await handler(request)
    except _ApiError as exc:
        return exc.response()
    except SimRequestError as exc:
        return _ApiError(str(exc), param=exc.param).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return _ApiError(exc.reason, status=exc.status, code=code).response()


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(await request.read())
    except msgspec.DecodeError as exc:
        raise _ApiError(f"invalid JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise _ApiError("the JSON body must be an object")
    return body


def _resolve(request: web.Request, body: Mapping[str, Any], kind: ModelType) -> SimModel:
    """The requested model, or the error a real engine would give for it."""
    config = request.app[CONFIG]
    name = body.get("model")
    model = config.models.get(name) if isinstance(name, str) else None
    if model is None:
        message = f"the model {name!r} does not exist on this engine"
        raise _ApiError(message, status=404, code="model_not_found", param="model")
    if model.type != kind:
        message = f"the model {name!r} is a {model.type} model, not a {kind} model"
        raise _ApiError(message, param="model")
    if model.id in config.fail_models:
        request.app[STATS].failed += 1
        message = f"simulated failure of {model.id!r}"
        raise _ApiError(message, status=500, code="engine_error", type_="server_error")
    return model


# --- handlers -----------------------------------------------------------------------


async def _health(_request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _stats(request: web.Request) -> web.Response:
    return _json(attrs.asdict(request.app[STATS]))


async def _models(request: web.Request) -> web.Response:
    data = [
        {
            "id": model.id,
            "object": "model",
            "created": 0,
            "owned_by": "porten-sim",
            "x_porten": {
                "ready": True,
                "type": model.type,
                "ctx": model.ctx,
                "capabilities": sorted(model.capabilities),
            },
        }
        for model in sorted(request.app[CONFIG].models.values(), key=lambda m: m.id)
    ]
    return _json({"object": "list", "data": data})


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    model = _resolve(request, body, "chat")
    plan = plan_chat(model, body, request.app[CONFIG].profile)
    reply = _Reply(id=f"chatcmpl-sim-{uuid.uuid4().hex}", created=int(time.time()), model=model.id)
    request.app[STATS].started += 1
    if body.get("stream") is True:
        options = body.get("stream_options")
        usage = isinstance(options, dict) and options.get("include_usage") is True
        return await _stream(request, plan, reply, include_usage=usage)
    return await _complete(request, plan, reply)


async def _embeddings(request: web.Request) -> web.Response:
    body = await _json_body(request)
    model = _resolve(request, body, "embedding")
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not all(isinstance(text, str) for text in inputs):
        raise _ApiError("input must be a string or a list of strings", param="input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise _ApiError("encoding_format must be float or base64", param="encoding_format")
    stats, profile = request.app[STATS], request.app[CONFIG].profile
    stats.started += 1
    await asyncio.sleep(ttft_s(profile))  # one forward pass
    vectors = embed(model, inputs, profile)
    stats.completed += 1
    data = [
        {"object": "embedding", "index": i, "embedding": _base64(v) if encoding == "base64" else v}
        for i, v in enumerate(vectors)
    ]
    tokens = sum(count_tokens(text) for text in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _json({"object": "list", "data": data, "model": model.id, "usage": usage})


def _base64(vector: list[float]) -> str:
    """Little-endian float32, base64: what the openai SDK asks for by default."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


# --- generation over the wire ------------------------------------------------------


@attrs.frozen
class _Reply:
    """The identity every chunk of one completion repeats."""

    id: str
    created: int
    model: str

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def completion(self, plan: ChatPlan) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": plan.content}
        if plan.reasoning_tokens:
            message["reasoning_content"] = plan.reasoning_content
        if plan.tool_calls:
            message["content"] = plan.content or None
            message["tool_calls"] = plan.tool_calls
        choice = {"index": 0, "message": message, "finish_reason": plan.finish_reason}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": _usage(plan),
        }


def _usage(plan: ChatPlan) -> dict[str, Any]:
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.completion_tokens,
        "total_tokens": plan.prompt_tokens + plan.completion_tokens,
        "completion_tokens_details": {"reasoning_tokens": len(plan.reasoning_tokens)},
    }


def _token_deltas(plan: ChatPlan) -> Iterator[dict[str, Any]]:
    """One OpenAI ``delta`` per generated token, in generation order.

    A tool call's first fragment carries its id and name, as OpenAI streams them.
    """
    role: dict[str, Any] = {"role": "assistant"}
    for token in plan.reasoning_tokens:
        yield {**role, "reasoning_content": token}
        role = {}
    for token in plan.content_tokens:
        yield {**role, "content": token}
        role = {}
    for index, call in enumerate(plan.tool_calls or []):
        function = call["function"]
        for n, fragment in enumerate(split_tokens(function["arguments"])):
            head = {"id": call["id"], "type": "function"} if n == 0 else {}
            name = {"name": function["name"]} if n == 0 else {}
            delta = {"index": index, **head, "function": {**name, "arguments": fragment}}
            yield {**role, "tool_calls": [delta]}
            role = {}


async def _paced(
    request: web.Request, plan: ChatPlan, emit: Callable[[dict[str, Any]], Awaitable[None]]
) -> bool:
    """Emit each token's delta at the profile's pace; ``False`` if the client left first."""
    stats, profile = request.app[STATS], request.app[CONFIG].profile
    delay = ttft_s(profile)
    for delta in _token_deltas(plan):
        await asyncio.sleep(delay)
        delay = token_delay_s(profile)
        if request.transport is None or request.transport.is_closing():
            return False
        await emit(delta)
        stats.tokens_generated += 1
    return True


async def _stream(
    request: web.Request, plan: ChatPlan, reply: _Reply, *, include_usage: bool
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )

    async def send(event: dict[str, Any]) -> None:
        await response.write(b"data: " + _ENCODER.encode(event) + b"\n\n")

    async def send_delta(delta: dict[str, Any]) -> None:
        await send(reply.chunk([{"index": 0, "delta": delta, "finish_reason": None}]))

    try:
        await response.prepare(request)
        finished = await _paced(request, plan, send_delta)
        if finished:
            await send(
                reply.chunk([{"index": 0, "delta": {}, "finish_reason": plan.finish_reason}])
            )
            if include_usage:
                await send(reply.chunk([], usage=_usage(plan)))
            await response.write(b"data: [DONE]\n\n")
    except asyncio.CancelledError:
        _settle(request, reply, plan, finished=False)
        raise
    except ConnectionResetError:
        finished = False
    _settle(request, reply, plan, finished=finished)
    return response


async def _complete(request: web.Request, plan: ChatPlan, reply: _Reply) -> web.Response:
    async def discard(_delta: dict[str, Any]) -> None:
        return None

    try:
        finished = await _paced(request, plan, discard)
    except asyncio.CancelledError:
        _settle(request, reply, plan, finished=False)
        raise
    _settle(request, reply, plan, finished=finished)
    return _json(reply.completion(plan))


def _settle(request: web.Request, reply: _Reply, plan: ChatPlan, *, finished: bool) -> None:
    """Count the request as completed or cancelled, and say which in the log."""
    stats = request.app[STATS]
    if finished:
        stats.completed += 1
    else:
        stats.cancelled += 1
    emit = log.debug if finished else log.info
    emit(
        "sim_chat_completed" if finished else "sim_chat_cancelled",
        request_id=reply.id,
        model=reply.model,
        finish_reason=plan.finish_reason,
        planned_tokens=plan.completion_tokens,
    )
