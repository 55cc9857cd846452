"""A stand-in Ollama: the HTTP API shape of the endpoints the ollama engine uses.

Ollama cannot be installed here, so this small aiohttp server on 127.0.0.1
answers like it does: ``GET /api/version``, ``GET /api/tags`` (the pulled
models, with their tags) and the OpenAI-compatible ``/v1/chat/completions``
(echoing the last user message, streamed or not). A test changes what is
pulled with :attr:`OllamaStandIn.pulled` and stops it to simulate Ollama going away.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
from aiohttp import web


@attrs.define
class OllamaStandIn:
    """What the stand-in serves; mutable while it runs."""

    pulled: list[str] = attrs.field(factory=list)
    requests: list[dict[str, object]] = attrs.field(factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/version", self.version)
        app.router.add_get("/api/tags", self.tags)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.0"})

    async def tags(self, request: web.Request) -> web.Response:
        models = [{"name": n, "model": n, "size": 1, "digest": "d" * 12, "details": {}}
                  for n in self.pulled]
        return web.json_response({"models": models})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        text = f"{body['model']} says: {body['messages'][-1]['content']}"
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
            })
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for word in text.split(" "):
            delta = {"choices": [{"index": 0, "delta": {"content": word + " "}}]}
            await resp.write(b"data: " + json.dumps(delta).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp


@asynccontextmanager
async def running(standin: OllamaStandIn, port: int = 0) -> AsyncIterator[str]:
    """Serve ``standin`` on 127.0.0.1 (``port`` 0: a free one); yields the base URL."""
    runner = web.AppRunner(standin.app(), shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
        host, bound = runner.addresses[0][:2]
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()
