"""A real hub on a real Postgres with a real local node, for the ``/v1`` end-to-end tests.

:func:`serving` starts the hub app on a free loopback port (the same
``listening`` that ``porten hub`` runs) and the local node ``porten up``
runs — a real :class:`~porten.agent.connection.Agent` over a real WebSocket,
driving an in-process sim engine with the profile the test chose. A test
then talks to it only over HTTP: the official SDKs, or raw requests where
the bytes themselves are under test. What the sim answers is a pure
function of the request (:func:`plan_for`), so tests assert exact content
and usage; waits are bounded polls on conditions, never sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import attrs
import openai
from multidict import CIMultiDictProxy

from porten.agent.connection import Agent
from porten.agent.engines.base import Engine
from porten.agent.engines.sim import ChatPlan, SimModel, SimProfile, plan_chat
from porten.agent.engines.sim_engine import SimEngine
from porten.agent.settings import AgentSettings
from porten.bootstrap import Hub
from porten.cli._local_node import local_node
from porten.cli.hub import listening
from porten.config import Settings
from porten.domain import events as ev
from porten.domain.catalog import default_entry
from porten.domain.state import nodes_serving
from porten.services.credentials import new_node_credential, token_hash

CHAT = "qwen2.5-7b-instruct"  # chat, tools, json
REASONING = "deepseek-r1-distill-qwen-14b"  # chat, json, reasoning (no tools)
VISION = "qwen2.5-vl-7b-instruct"  # chat, json, vision
EMBEDDING = "nomic-embed-text"  # 768 dimensions
PRELOADED = (CHAT, REASONING, VISION, EMBEDDING)
#: Offered by the catalog and preloaded nowhere: tests start their own nodes for it.
SPARE = "llama3.2-3b-instruct"
#: Offered by the catalog, and too big (52 GB) for the local node to serve or load on demand.
BIG = "qwen3-coder-next"
LOCAL = "local"

#: As fast as the loop goes: whole answers in a few milliseconds.
FAST = SimProfile(ttft_ms=1, tokens_per_s=2000, load_s_per_gb=0.01, download_mb_per_s=50_000)
#: Slow enough that a stream is reliably still running while a test acts on it.
SLOW = SimProfile(ttft_ms=0, tokens_per_s=20)


def sim_model(model_id: str) -> SimModel:
    """The sim twin of a default-catalog model, as the local node serves it."""
    return SimModel.from_catalog(default_entry(model_id))


def plan_for(model_id: str, request: Mapping[str, Any], profile: SimProfile = FAST) -> ChatPlan:
    """What the local node's engine answers to the chat ``request``."""
    return plan_chat(sim_model(model_id), request, profile)


def user(text: str) -> list[dict[str, Any]]:
    """A one-message conversation."""
    return [{"role": "user", "content": text}]


def long_prompt(model: str | SimModel, profile: SimProfile, *, min_tokens: int) -> str:
    """A prompt whose answer (by ``model``, a catalog id or a sim model) has ``min_tokens``+."""
    sim = sim_model(model) if isinstance(model, str) else model
    for i in range(1000):
        text = f"please explain topic {i} in detail"
        if len(plan_chat(sim, {"messages": user(text)}, profile).content_tokens) >= min_tokens:
            return text
    raise AssertionError("no long enough answer in 1000 prompts")


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], *, within: float = 10.0, what: str = ""
) -> None:
    """Return once ``condition`` holds; fail the test after ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while True:
                result = condition()
                if result if isinstance(result, bool) else await result:
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"condition not met within {within} s: {what}") from None


@attrs.frozen
class Reply:
    """A raw HTTP answer: status, headers and body."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        """The OpenAI-shaped ``error`` object of an error body."""
        body = self.json()
        assert set(body) == {"error"}, body
        error: dict[str, Any] = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        return error


@attrs.define
class Porten:
    """A serving hub and its local node, as a test sees them."""

    hub: Hub
    url: str
    api_key: str = attrs.field(repr=False)
    engine: SimEngine
    profile: SimProfile
    _clients: list[openai.AsyncOpenAI] = attrs.field(factory=list)

    @property
    def api_base(self) -> str:
        """What an OpenAI SDK takes as ``base_url``."""
        return self.url + "/v1"

    @property
    def sim_url(self) -> str:
        """The local node's sim server (``/sim/stats``)."""
        return self.engine.url

    def client(self, **options: Any) -> openai.AsyncOpenAI:
        """An official async OpenAI client for this hub (no retries: every answer is seen)."""
        options.setdefault("api_key", self.api_key)
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", 30.0)
        client = openai.AsyncOpenAI(base_url=self.api_base, **options)
        self._clients.append(client)
        return client

    def auth(self) -> dict[str, str]:
        """The ``Authorization`` header of the local API key."""
        return {"Authorization": f"Bearer {self.api_key}"}

    async def post(
        self,
        path: str,
        body: object = None,
        *,
        data: bytes | None = None,
        headers: Any = None,
    ) -> Reply:
        """POST ``body`` as JSON (or ``data`` as is) with the local key unless ``headers``."""
        payload = data if data is not None else json.dumps(body).encode()
        sent = self.auth() if headers is None else headers
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.url + path, data=payload, headers=sent) as resp,
        ):
            return Reply(resp.status, resp.headers, await resp.read())

    async def get(self, path: str, *, headers: Any = None) -> Reply:
        """GET ``path`` with the local key unless ``headers``."""
        sent = self.auth() if headers is None else headers
        async with aiohttp.ClientSession() as http, http.get(self.url + path, headers=sent) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    async def sim_stats(self, url: str | None = None) -> dict[str, int]:
        """A sim server's counters (the local node's unless ``url``)."""
        async with (
            aiohttp.ClientSession() as http,
            http.get((url or self.sim_url) + "/sim/stats") as resp,
        ):
            stats: dict[str, int] = await resp.json()
            return stats

    async def _served_now(self) -> list[ev.RequestServed]:
        await self.hub.writer.flush()
        records = await self.hub.store.read_filtered(types=["request_served"], limit=100_000)
        return [r.event for r in records if isinstance(r.event, ev.RequestServed)]

    async def served(self, count: int, *, within: float = 10.0) -> list[ev.RequestServed]:
        """The ``request_served`` events, once there are ``count`` of them (never more)."""
        found: list[ev.RequestServed] = []

        async def enough() -> bool:
            nonlocal found
            found = await self._served_now()
            return len(found) >= count

        await eventually(enough, within=within, what=f"{count} request_served events")
        assert len(found) == count, [e.request_id for e in found]
        return found

    async def served_once(self, request_id: str, *, within: float = 10.0) -> ev.RequestServed:
        """The one ``request_served`` event of ``request_id``, once it is in the log."""
        found: list[ev.RequestServed] = []

        async def recorded() -> bool:
            nonlocal found
            found = [e for e in await self._served_now() if e.request_id == request_id]
            return bool(found)

        await eventually(recorded, within=within, what=f"request_served for {request_id}")
        [event] = found
        return event

    async def enrol(self, node_id: str) -> str:
        """Enrol another node of the local owner; its fresh credential."""
        credential = new_node_credential()
        position = await self.hub.writer.append(
            [
                ev.NodeEnrolled(
                    at=time.time(),
                    actor="user:e2e",
                    node_id=node_id,
                    owner_id="local",
                    name=node_id,
                    region="local",
                    trust_class="trusted",
                    credential_hash=token_hash(self.hub.server_secret, credential),
                )
            ]
        )
        assert await self.hub.projection.wait_until(position, 10.0)
        return credential

    def serves(self, node_id: str, model_id: str) -> bool:
        """Whether ``node_id`` has a live link and serves ``model_id`` now."""
        serving = nodes_serving(self.hub.projection.state, model_id)
        live = self.hub.gateway.link(node_id) is not None
        return live and any(n.node_id == node_id for n in serving)

    async def until_serving(self, node_id: str, model_id: str, *, within: float = 30.0) -> None:
        """Wait until ``node_id`` has a live link and serves ``model_id``."""
        await eventually(
            lambda: self.serves(node_id, model_id),
            within=within,
            what=f"{node_id} serving {model_id}",
        )

    async def until_gone(self, node_id: str, *, within: float = 10.0) -> None:
        """Wait until the hub holds no link to ``node_id`` and the log says it is offline."""

        def gone() -> bool:
            node = self.hub.projection.state.nodes.get(node_id)
            return self.hub.gateway.link(node_id) is None and (node is None or not node.online)

        await eventually(gone, within=within, what=f"{node_id} disconnected")

    @contextlib.asynccontextmanager
    async def node(
        self, node_id: str, engine: Engine, models: Sequence[str]
    ) -> AsyncIterator[Agent]:
        """Another node (an in-process agent driving ``engine``) serving ``models``."""
        credential = await self.enrol(node_id)
        agent = Agent(AgentSettings(hub_url=self.url, credential=credential), engine)
        task = asyncio.create_task(agent.run(), name=f"agent-{node_id}")
        try:
            for model in models:
                await self.until_serving(node_id, model)
            yield agent
        finally:
            await agent.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def aclose_clients(self) -> None:
        """Close every SDK client this object made."""
        for client in self._clients:
            await client.close()


@contextlib.asynccontextmanager
async def serving(
    settings: Settings,
    *,
    profile: SimProfile = FAST,
    preloaded: Sequence[str] = PRELOADED,
) -> AsyncIterator[Porten]:
    """The hub listening on ``settings`` with its local node serving ``preloaded``."""
    engine = SimEngine(profile, preloaded=[sim_model(m) for m in preloaded])
    async with (
        listening(settings) as (hub, url),
        local_node(hub, url, preloaded, engine=engine) as setup,
    ):
        porten = Porten(hub=hub, url=url, api_key=setup.api_key, engine=engine, profile=profile)
        try:
            yield porten
        finally:
            await porten.aclose_clients()


def png(width: int, height: int, *, seed: int = 0) -> bytes:
    """A valid RGB PNG of seeded noise (incompressible, so its size is about 3·w·h bytes)."""
    noise = random.Random(seed)
    rows = b"".join(b"\x00" + noise.randbytes(3 * width) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(rows, 1)),
            chunk(b"IEND", b""),
        ]
    )


def data_url(image: bytes) -> str:
    """``image`` inline, as the only kind of image URL the hub accepts."""
    return "data:image/png;base64," + base64.b64encode(image).decode("ascii")


def as_float32(vector: Sequence[float]) -> list[float]:
    """``vector`` rounded through float32, as a base64 embedding carries it."""
    n = len(vector)
    return list(struct.unpack(f"<{n}f", struct.pack(f"<{n}f", *vector)))
