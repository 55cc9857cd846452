"""The agent as a process and across hub restarts: no orphan engines, loaded models re-reported.

The node runs the builtin engine with the ``llama-server`` stand-in, so each
loaded model is a real child process whose fate can be checked after the
agent is stopped (SIGTERM), killed (SIGKILL) or cut off from its hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
from builtin_harness import builtin_engine
from loading_harness import chat, logged, provisionable
from stand_ins import gguf, llama_server, sha256
from v1_harness import FAST, Porten, eventually

from porten.agent.backoff import Backoff
from porten.agent.connection import Agent
from porten.agent.settings import AgentSettings
from porten.agent.weights.serve import ServedFile, serving
from porten.cli.hub import listening
from porten.config import Settings
from porten.domain import events as ev
from porten.domain.values import CatalogEntry
from porten.services.local_setup import LOCAL_NODE, ensure_local_setup

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

MODEL = "tiny-gguf"
DATA = gguf(2 * 1024 * 1024, seed=9)


@pytest.fixture
async def entry(tmp_path: Path) -> AsyncIterator[CatalogEntry]:
    path = tmp_path / "src" / f"{MODEL}.gguf"
    path.parent.mkdir()
    path.write_bytes(DATA)
    async with serving([ServedFile(path.name, (path,))]) as base:
        yield CatalogEntry(id=MODEL, vram_mb=500, disk_mb=2, ctx=2048,
                           download_ref=f"{base}/{path.name}", sha256=sha256(DATA))


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        parent = frontier.pop()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    child = int(stat.parent.name)
                    found.add(child)
                    frontier.add(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too: it only waits for its parent to read its status
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


@contextlib.asynccontextmanager
async def hub_with_key(
    settings: Settings, entry: CatalogEntry
) -> AsyncIterator[tuple[Porten, str]]:
    """The hub with ``entry`` offered and a key; the local node enrolled (its credential)."""
    async with listening(settings) as (hub, url):
        await hub.planner.aclose()
        setup = await ensure_local_setup(
            data_dir=settings.data_dir, server_secret=hub.server_secret, writer=hub.writer,
            projection=hub.projection, catalog=(), refresh=[entry],
        )
        porten = Porten(hub=hub, url=url, api_key=setup.api_key, engine=None,  # type: ignore[arg-type]
                        profile=FAST)
        yield porten, setup.node_credential


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_no_engine_process_outlives_the_agent(
    settings: Settings, tmp_path: Path, entry: CatalogEntry, how: signal.Signals
) -> None:
    """Stopped or killed, ``porten agent run`` leaves no llama.cpp server running."""
    async with hub_with_key(settings, entry) as (porten, credential):
        env = {
            **os.environ, "PORTEN_HUB_URL": porten.url, "PORTEN_ENGINE": "builtin",
            "PORTEN_NODE_CREDENTIAL": credential,
            "PORTEN_LLAMA_SERVER": str(llama_server(tmp_path / "bin")),
            "PORTEN_DATA_DIR": str(tmp_path / "node"), "PORTEN_VRAM_BUDGET_MB": "4000",
            "PORTEN_AUTO_DOWNLOAD_MB": "100", "PORTEN_LOG_LEVEL": "warning",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "porten", "agent", "run", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            await eventually(lambda: provisionable(porten, LOCAL_NODE), within=60.0,
                             what="the agent connected and its node online")
            reply = await chat(porten, MODEL, "spawn the engine")
            assert reply.status == 200, reply.body
            engines = descendants(proc.pid)
            assert engines, "the engine is the agent's child"
            proc.send_signal(how)
            _, err = await asyncio.wait_for(proc.communicate(), 30.0)
            if how == signal.SIGTERM:
                assert proc.returncode == 0, err.decode()
                assert [p for p in engines if alive(p)] == []
            else:  # the kernel's parent-death signal stops what the agent could not
                await eventually(lambda: not any(alive(p) for p in engines), within=15.0,
                                 what="the orphaned engine gone")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_after_a_hub_restart_the_agent_reports_what_it_still_serves(
    settings: Settings, tmp_path: Path, entry: CatalogEntry
) -> None:
    """The hub goes away and comes back: the agent reconnects and the model serves, unreloaded."""
    engine = builtin_engine(tmp_path, server=str(llama_server(tmp_path / "bin")))
    agent: Agent | None = None
    task: asyncio.Task[None] | None = None
    try:
        async with hub_with_key(settings, entry) as (first, credential):
            port = int(first.url.rsplit(":", 1)[1])
            agent = Agent(
                AgentSettings(hub_url=first.url, credential=credential),
                engine,
                backoff=Backoff(base_s=0.05, cap_s=0.2, rng=random.Random(3)),
            )
            task = asyncio.create_task(agent.run())
            await eventually(lambda: provisionable(first, LOCAL_NODE),
                             what="connected and online")
            assert (await chat(first, MODEL, "load it")).status == 200
            pid = engine.processes[MODEL].pid
        sessions = agent.sessions
        async with hub_with_key(attrs.evolve(settings, port=port), entry) as (second, _):
            await eventually(lambda: agent is not None and agent.sessions > sessions,
                             within=20.0, what="reconnected")
            await second.until_serving(LOCAL_NODE, MODEL)
            reply = await chat(second, MODEL, "still there?")
            assert reply.status == 200, reply.body
            assert reply.json()["choices"][0]["message"]["content"] == "echo: still there?"
            assert engine.processes[MODEL].pid == pid  # the same server, never restarted
            assert len(await logged(second, ev.LoadRequested, model=MODEL)) == 1
    finally:
        if agent is not None:
            await agent.stop()
        if task is not None:
            await task
