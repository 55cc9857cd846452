"""A stand-in for ``llama-server``: its command line, its readiness and its OpenAI API shape.

The builtin engine's process management (free port, readiness, streaming,
SIGTERM, a crash mid-request) is tested against this small program instead of
a real llama.cpp build, which the real-inference end-to-end test covers. It
takes ``llama-server``'s flags, refuses a model file that is not GGUF, and
answers ``/v1/chat/completions`` with ``echo: <last user message>``, one word
per SSE chunk. Environment switches make it misbehave on purpose:

* ``FAKE_LLAMA_EXIT=<status>`` — print an error and exit at start;
* ``FAKE_LLAMA_HOLD=1`` — after a stream's first chunk, never send another
  (the request is reliably in flight while a test kills the process);
* ``FAKE_LLAMA_IGNORE_TERM=1`` — ignore SIGTERM (the engine must SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from aiohttp import web


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("-m", dest="model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--alias", default="model")
    p.add_argument("-c", dest="ctx", type=int, default=4096)
    p.add_argument("-ngl", dest="ngl", default="0")
    p.add_argument("--chat-template", default="")
    return p.parse_args()


def completion(alias: str, text: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
        "model": alias,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": len(text.split()),
                  "total_tokens": 1 + len(text.split())},
    }


def chunk(alias: str, delta: dict[str, str], finish: str | None = None) -> bytes:
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
            "model": alias, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def app(alias: str) -> web.Application:
    hold = os.environ.get("FAKE_LLAMA_HOLD") == "1"

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": alias, "object": "model"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = "echo: " + str(body["messages"][-1]["content"])
        if not body.get("stream"):
            return web.json_response(completion(alias, text))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, word in enumerate(text.split(" ")):
            await resp.write(chunk(alias, {"content": word if i == 0 else " " + word}))
            if hold:
                await asyncio.Event().wait()
        await resp.write(chunk(alias, {}, "stop"))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    application = web.Application()
    application.router.add_get("/v1/models", models)
    application.router.add_get("/health", models)
    application.router.add_post("/v1/chat/completions", chat)
    return application


def main() -> None:
    args = parse()
    code = os.environ.get("FAKE_LLAMA_EXIT")
    if code:
        sys.stderr.write(f"error: failed to load model '{args.model}'\n")
        sys.exit(int(code))
    if Path(args.model).read_bytes()[:4] != b"GGUF":
        sys.stderr.write(f"error: {args.model} is not a GGUF file\n")
        sys.exit(2)
    if os.environ.get("FAKE_LLAMA_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    web.run_app(app(args.alias), host=args.host, port=args.port, print=None,
                handle_signals=os.environ.get("FAKE_LLAMA_IGNORE_TERM") != "1")


if __name__ == "__main__":
    main()
