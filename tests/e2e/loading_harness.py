"""A real hub whose nodes load models on demand, for the on-demand loading end-to-end tests.

:func:`loading_hub` is :func:`v1_harness.serving` with the local node's sim
engine chosen by the test (budgets, weights on disk, loads that fail) and a
profile whose downloads and loads take a fraction of a second: long enough
that every phase is observed, short enough that a test takes about one.
The hub's background planner is paused (``planner.aclose()``) unless a test
asks for it: request-time loading is under test, and a test that drives the
planner calls ``plan_once()`` itself, so no round starts behind its back.

:func:`sim_node` adds a provisionable node (a real in-process agent over a
real WebSocket); :func:`sim_agent_process` runs one as a real ``porten agent
run`` process a test can SIGKILL. The log is read back with
``hub.store.read_filtered`` after flushing the writer. Waits are bounded
polls on conditions, never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from v1_harness import CHAT, Porten, Reply, eventually, plan_for, sim_model, user

from porten.agent.connection import Agent
from porten.agent.engines.base import Engine
from porten.agent.engines.sim import SimProfile
from porten.agent.engines.sim_engine import SimEngine
from porten.agent.settings import AgentSettings
from porten.cli._local_node import local_node
from porten.cli.hub import listening
from porten.config import Settings
from porten.domain import events as ev
from porten.domain.state import Placement
from porten.domain.values import LoadPhase

#: A 2 GB download takes half a second, loading 3 GB about 0.3 s; answers take milliseconds.
LOADING = SimProfile(ttft_ms=1, tokens_per_s=2000, download_mb_per_s=4000, load_s_per_gb=0.1)
#: A download that outlasts any test (seconds per GB): the load is reliably still running.
CRAWLING = SimProfile(ttft_ms=1, tokens_per_s=2000, download_mb_per_s=50, load_s_per_gb=0.1)
#: Loads the 52 GB model in about a second (download 0.5 s, load 0.5 s).
BIG_LOADING = SimProfile(
    ttft_ms=1, tokens_per_s=2000, download_mb_per_s=100_000, load_s_per_gb=0.01
)
#: Room for the 52 GB model on a node of its own (the local node's 24 GB never fits it).
BIG_VRAM_MB = 64_000
BIG_DISK_MB = 100_000
E = TypeVar("E", bound=ev.Event)


@contextlib.asynccontextmanager
async def loading_hub(
    settings: Settings,
    *,
    engine: SimEngine | None = None,
    preloaded: Sequence[str] = (CHAT,),
    profile: SimProfile = LOADING,
    planner: bool = False,
) -> AsyncIterator[Porten]:
    """The hub on ``settings`` with its local node (``engine``, holding ``preloaded``)."""
    if engine is None:
        engine = SimEngine(profile, preloaded=[sim_model(m) for m in preloaded])
    async with (
        listening(settings) as (hub, url),
        local_node(hub, url, preloaded, engine=engine) as setup,
    ):
        if not planner:
            await hub.planner.aclose()
        porten = Porten(
            hub=hub, url=url, api_key=setup.api_key, engine=engine, profile=engine.profile
        )
        try:
            yield porten
        finally:
            await porten.aclose_clients()


def big_engine(profile: SimProfile = BIG_LOADING, **options: Any) -> SimEngine:
    """A provisionable sim engine with room for the big model (and nothing loaded)."""
    options.setdefault("vram_budget_mb", BIG_VRAM_MB)
    options.setdefault("disk_budget_mb", BIG_DISK_MB)
    return SimEngine(profile, **options)


def provisionable(porten: Porten, node_id: str) -> bool:
    """Whether ``node_id`` is linked and the log shows it online and provisionable."""
    node = porten.hub.projection.state.nodes.get(node_id)
    linked = porten.hub.gateway.link(node_id) is not None
    return linked and node is not None and node.online and node.provisionable


@contextlib.asynccontextmanager
async def sim_node(porten: Porten, node_id: str, engine: Engine) -> AsyncIterator[Agent]:
    """Another node: an in-process agent driving ``engine``, once the hub may load onto it."""
    credential = await porten.enrol(node_id)
    agent = Agent(AgentSettings(hub_url=porten.url, credential=credential), engine)
    task = asyncio.create_task(agent.run(), name=f"agent-{node_id}")
    try:
        await eventually(
            lambda: provisionable(porten, node_id) or task.done(),
            what=f"{node_id} online and provisionable",
        )
        if task.done():
            task.result()
        yield agent
    finally:
        await agent.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def sim_agent_process(
    porten: Porten, node_id: str, tmp_path: Path, profile: SimProfile
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``porten agent run`` in its own process: an empty sim node with room for the big model."""
    credential = await porten.enrol(node_id)
    env = {
        **os.environ,
        "PORTEN_HUB_URL": porten.url,
        "PORTEN_NODE_CREDENTIAL": credential,
        "PORTEN_ENGINE": "sim",
        "PORTEN_VRAM_BUDGET_MB": str(BIG_VRAM_MB),
        "PORTEN_AUTO_DOWNLOAD_MB": str(BIG_DISK_MB),
        "PORTEN_SIM_PROFILE": msgspec.json.encode(profile).decode(),
        "PORTEN_DATA_DIR": str(tmp_path / node_id),
        "PORTEN_LOG_LEVEL": "warning",
        "PORTEN_LOG_FORMAT": "json",
    }
    log_path = tmp_path / f"{node_id}.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "porten",
            "agent",
            "run",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
        try:
            await eventually(
                lambda: proc.returncode is not None or provisionable(porten, node_id),
                within=60.0,
                what=f"the agent process {node_id} online",
            )
            if proc.returncode is not None:
                raise AssertionError("the agent exited:\n" + log_path.read_text())
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


# --- the log --------------------------------------------------------------------------------


async def logged(porten: Porten, *types: type[E], model: str | None = None) -> list[E]:
    """Events of ``types`` in log order (about ``model``, if given), after a flush."""
    await porten.hub.writer.flush()
    tags = [tag for tag, cls in ev.EVENT_TAGS.items() if cls in types]
    records = await porten.hub.store.read_filtered(types=tags, limit=100_000)
    return [
        r.event
        for r in records
        if isinstance(r.event, types)
        and (model is None or getattr(r.event, "model_id", None) == model)
    ]


async def placement_log(porten: Porten, model: str) -> list[tuple[str, str]]:
    """``(event type, node)`` of every load request, load, failure and unload of ``model``."""
    found = await logged(
        porten, ev.LoadRequested, ev.ModelLoaded, ev.LoadFailed, ev.ModelUnloaded, model=model
    )
    return [(type(e).__name__, getattr(e, "node_id", "")) for e in found]


def placement(porten: Porten, node_id: str, model: str) -> Placement | None:
    """``model``'s placement on ``node_id`` as the hub's folded state has it."""
    node = porten.hub.projection.state.nodes.get(node_id)
    return None if node is None else node.placements.get(model)


async def until_phase(
    porten: Porten, node_id: str, model: str, phase: LoadPhase, *, within: float = 10.0
) -> None:
    """Wait until ``model`` is in ``phase`` on ``node_id`` in the folded state."""

    def there() -> bool:
        p = placement(porten, node_id, model)
        return p is not None and p.phase == phase

    await eventually(there, within=within, what=f"{model} {phase} on {node_id}")


# --- requests ---------------------------------------------------------------------------------


def chat_body(model: str, text: str, **extra: Any) -> dict[str, Any]:
    """A chat completion request body."""
    return {"model": model, "messages": user(text), **extra}


async def chat(porten: Porten, model: str, text: str, **extra: Any) -> Reply:
    """POST one non-streaming chat completion with the local key."""
    return await porten.post("/v1/chat/completions", chat_body(model, text, **extra))


def assert_answered(reply: Reply, profile: SimProfile, model: str, text: str, **extra: Any) -> None:
    """``reply`` is a 200 whose content is exactly what the sim answers that request."""
    assert reply.status == 200, reply.body
    body = reply.json()
    expected = plan_for(model, chat_body(model, text, **extra), profile)
    assert body["model"] == model
    assert body["choices"][0]["message"]["content"] == expected.content


async def settled(porten: Porten) -> None:
    """Flush the writer and wait until the hub's state has folded the whole log."""
    await porten.hub.writer.flush()
    head = await porten.hub.store.head()
    assert await porten.hub.projection.wait_until(head, 10.0)


def error_of(reply: Reply, status: int, code: str) -> dict[str, Any]:
    """The OpenAI error of ``reply``, checked to be ``status`` with ``code``."""
    assert reply.status == status, reply.body
    error = reply.error
    assert error["code"] == code, error
    return error


def sse_payloads(raw: bytes) -> list[dict[str, Any]]:
    """The JSON payload of each ``data:`` event in an SSE body (comments skipped)."""
    lines = (line for event in raw.split(b"\n\n") for line in event.split(b"\n"))
    return [
        json.loads(line.removeprefix(b"data: ")) for line in lines if line.startswith(b"data: ")
    ]


async def explain(settings: Settings, model: str) -> str:
    """What ``porten events explain --model`` prints, run as an operator runs it."""
    assert settings.database_url is not None
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "porten",
        "events",
        "explain",
        "--model",
        model,
        "--database-url",
        settings.database_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60.0)
    assert proc.returncode == 0, err.decode()
    return out.decode()
