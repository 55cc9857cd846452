"""A worked example of a third-party Porten engine: ``echo``, in one small module.

An engine plugin is any distribution that exposes a factory in the
``porten.engines`` entry-point group (see ``pyproject.toml`` beside this
package)::

    [project.entry-points."porten.engines"]
    echo = "porten_echo:create"

``PORTEN_ENGINE=echo porten agent run`` then calls ``create(settings)`` with
the agent's :class:`~porten.agent.settings.AgentSettings` and drives what it
returns through :class:`~porten.agent.engines.base.Engine`. This one answers
every chat request by echoing the last user message (streamed as one SSE
chunk per word, or as one JSON body), serves the models listed in
``PORTEN_ENGINE_MODELS`` and, like every fixed-set engine, refuses loads.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from porten.agent.engines.base import EngineError, LoadProgress, NotProvisionable
from porten.agent.settings import AgentSettings
from porten.domain.values import CatalogEntry
from porten.protocol import Inventory


class EchoResponse:
    """A finished answer held in memory (an engine over HTTP would relay bytes instead)."""

    def __init__(self, status: int, content_type: str, parts: list[bytes]) -> None:
        self.status = status
        self.content_type = content_type
        self._parts = parts

    async def chunks(self) -> AsyncIterator[bytes]:
        for part in self._parts:
            yield part

    async def aclose(self) -> None:
        self._parts = []


def _sse(model: str, delta: dict[str, str], finish: str | None = None) -> bytes:
    chunk = {"id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": 0,
             "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class EchoEngine:
    """Repeats what it is told. Not provisionable: it serves ``models``, always."""

    kind = "echo"
    provisionable = False

    def __init__(self, models: tuple[str, ...]) -> None:
        self.models = models or ("echo",)
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def aclose(self) -> None:
        self.started = False

    async def health(self) -> bool:
        return self.started

    async def inventory(self) -> Inventory:
        return Inventory(engine=self.kind, provisionable=False, vram_total_mb=0,
                         vram_budget_mb=0, disk_budget_mb=0, models_loaded=self.models)

    async def load(self, entry: CatalogEntry, progress: LoadProgress) -> None:
        raise NotProvisionable(f"cannot load {entry.id!r}: the echo engine serves a fixed set")

    async def unload(self, model_id: str) -> None:
        raise NotProvisionable(f"cannot unload {model_id!r}: the echo engine serves a fixed set")

    async def request(self, path: str, body: bytes, *, stream: bool) -> EchoResponse:
        if path != "/v1/chat/completions":
            return EchoResponse(404, "application/json", [b'{"error":{"message":"chat only"}}'])
        try:
            request: dict[str, Any] = json.loads(body)
            text = str(request["messages"][-1]["content"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EngineError(f"the echo engine cannot read this request: {exc}") from exc
        model = str(request.get("model", self.models[0]))
        if stream:
            words = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]
            parts = [_sse(model, {"content": w}) for w in words]
            parts += [_sse(model, {}, "stop"), b"data: [DONE]\n\n"]
            return EchoResponse(200, "text/event-stream", parts)
        answer = {
            "id": "chatcmpl-echo", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": len(text.split()), "completion_tokens": len(text.split()),
                      "total_tokens": 2 * len(text.split())},
        }
        return EchoResponse(200, "application/json", [json.dumps(answer).encode()])


def create(settings: AgentSettings) -> EchoEngine:
    """The entry point: build the engine from the agent's settings."""
    return EchoEngine(settings.engine_models)
