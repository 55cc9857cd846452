"""A node on the builtin engine behind a real hub: cold loads with progress, crashes, bad input.

The server processes are the ``llama-server`` stand-in (real processes; the
real llama.cpp is in ``test_real_inference.py``), the weights come over
loopback HTTP, and every assertion is on what a client or an operator sees:
HTTP answers, the warming endpoint and the event log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import openai
import pytest
from aiohttp import web
from builtin_harness import GatedWeights, builtin_engine, builtin_hub, watching
from loading_harness import chat, error_of, logged, settled
from stand_ins import gguf, llama_server, sha256
from v1_harness import Porten, eventually

from porten.agent.weights.serve import ServedFile, serving
from porten.config import Settings
from porten.domain import events as ev
from porten.domain.values import CatalogEntry

pytestmark = pytest.mark.postgres

MODEL = "tiny-gguf"
SIZE = 3 * 1024 * 1024
DATA = gguf(SIZE, seed=5)
IDLE_S = 1.0


def tiny(ref: str, **fields: Any) -> CatalogEntry:
    values: dict[str, Any] = {
        "id": MODEL, "vram_mb": 500, "disk_mb": 3, "ctx": 2048, "download_ref": ref,
        "sha256": sha256(DATA),
    }
    values.update(fields)
    return CatalogEntry(**values)


@pytest.fixture
def weights(tmp_path: Path) -> ServedFile:
    path = tmp_path / "src" / f"{MODEL}.gguf"
    path.parent.mkdir()
    path.write_bytes(DATA)
    return ServedFile(path.name, (path,))


@pytest.fixture
async def base(weights: ServedFile) -> AsyncIterator[str]:
    async with serving([weights]) as url:
        yield url


async def test_a_cold_request_downloads_loads_answers_and_idles_out(
    settings: Settings, tmp_path: Path, weights: ServedFile
) -> None:
    """Progress shows mid-download; the answer comes from the started server; idle stops it."""
    gate = GatedWeights(weights, hold_at=SIZE // 2)
    engine = builtin_engine(tmp_path, server=str(llama_server(tmp_path / "bin")))
    async with gate.serving() as url, builtin_hub(
        attrs.evolve(settings, idle_unload_s=IDLE_S), engine, [tiny(url)]
    ) as porten, watching(porten, MODEL) as watch:
        asking = asyncio.create_task(chat(porten, MODEL, "hello node"))
        # the server pauses at half; the agent re-sends the figure it stalled at
        await eventually(lambda: watch.seen("downloading", partly=True), what="half downloaded")
        gate.released.set()
        reply = await asyncio.wait_for(asking, 30.0)
        assert reply.status == 200, reply.body
        assert reply.json()["choices"][0]["message"]["content"] == "echo: hello node"
        assert reply.headers["X-Porten-Node"] == "local"
        await eventually(lambda: watch.seen("ready"), what="warming reaches ready")
        phases = [e["phase"] for e in watch.events]
        assert phases[0] == "cold"
        assert phases.index("downloading") < phases.index("loading") < phases.index("ready")
        partial = [e for e in watch.events if e["phase"] == "downloading" and 0 < e["pct"] < 100]
        assert {e["total_mb"] for e in partial} == {3}
        assert partial[0]["pct"] <= 50  # seen while the server held at half

        process = engine.processes[MODEL]
        assert process.pid is not None
        await eventually(lambda: idle_for(porten, IDLE_S), within=10.0, what="idle")
        plan = await porten.hub.planner.plan_once()
        assert [(u.model_id, u.reason) for u in plan.unloads] == [(MODEL, "idle")]
        await eventually(lambda: MODEL not in engine.processes, what="the server stopped")
        await eventually(lambda: not alive(process.pid or 0), what="the process gone")
        assert (await engine.inventory()).models_on_disk == (MODEL,)
        assert (tmp_path / "weights" / f"{MODEL}.gguf").read_bytes() == DATA


async def test_a_server_dying_mid_stream_ends_the_stream_and_the_model_reloads_from_disk(
    settings: Settings, tmp_path: Path, base: str
) -> None:
    """The client's stream ends in an error; the hub logs engine_exited; the next load skips
    the download."""
    server = llama_server(tmp_path / "bin", {"FAKE_LLAMA_HOLD": "1"})
    engine = builtin_engine(tmp_path, server=str(server))
    async with builtin_hub(settings, engine, [tiny(f"{base}/{MODEL}.gguf")]) as porten:
        client = porten.client()
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "one two"}], stream=True
        )
        chunks = aiter(stream)
        first = await anext(chunks)
        assert first.choices[0].delta.content == "echo:"
        pid = engine.processes[MODEL].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(openai.APIError) as broke:
            async for _ in chunks:
                pass
        assert broke.value.message == (
            "the node serving this stream failed; the answer is incomplete"
        )

        async def lost() -> bool:
            return bool(await logged(porten, ev.ModelUnloaded, model=MODEL))

        await eventually(lost, what="the loss in the log")
        [unloaded] = await logged(porten, ev.ModelUnloaded, model=MODEL)
        assert (unloaded.reason, unloaded.actor) == ("engine_exited", "node:local")
        assert unloaded.detail == f"{server} exited with status -9"

        reply = await chat(porten, MODEL, "again")
        assert reply.status == 200, reply.body
        progress = await logged(porten, ev.LoadProgressed, model=MODEL)
        loads = [e.load_id for e in await logged(porten, ev.LoadRequested, model=MODEL)]
        assert len(loads) == 2
        assert {e.phase for e in progress if e.load_id == loads[1]} == {"loading"}


def idle_for(porten: Porten, seconds: float) -> bool:
    node = porten.hub.projection.state.nodes["local"]
    now = time.time()
    return bool(node.placements) and all(
        now - p.last_used_at >= seconds for p in node.placements.values()
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- bad input: each load fails cleanly, with the owner's message in the log and the answer --


async def _stalling(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = SIZE
    await response.prepare(request)
    await response.write(DATA[:1024])
    await asyncio.Event().wait()
    return response


@pytest.mark.parametrize(
    "case", ["404", "sha256", "disk", "no binary", "exits at start", "timeout"]
)
async def test_a_load_that_cannot_succeed_fails_cleanly(
    settings: Settings, tmp_path: Path, base: str, case: str
) -> None:
    """Each bad input ends in one load_failed event and a 502 naming the cause."""
    good = f"{base}/{MODEL}.gguf"
    server = llama_server(tmp_path / "bin")
    options: dict[str, Any] = {"server": str(server)}
    entry = tiny(good)
    stall_app: web.AppRunner | None = None
    match case:
        case "404":
            entry = tiny(f"{base}/gone.gguf")
            expected = f"downloading the weights of '{MODEL}' failed: {base}/gone.gguf answered " \
                "404 Not Found"
        case "sha256":
            entry = tiny(good, sha256="f" * 64)
            expected = (f"the weights of '{MODEL}' from {good} are not the catalog's: sha256 "
                        f"{sha256(DATA)} != {'f' * 64}; the file was deleted")
        case "disk":  # the catalog understates the file, so only the node can tell
            entry = tiny(good, disk_mb=1)
            options["disk_budget_mb"] = 2
            expected = (f"'{MODEL}' needs 3 MB of disk but the weight cache "
                        "(PORTEN_AUTO_DOWNLOAD_MB=2) can free only 2 MB")
        case "no binary":
            options["server"] = str(tmp_path / "nowhere")
            expected = (f"PORTEN_LLAMA_SERVER='{tmp_path}/nowhere' is not an executable file or "
                        "a command on PATH")
        case "exits at start":
            options["server"] = str(llama_server(tmp_path / "bad", {"FAKE_LLAMA_EXIT": "1"}))
            expected = (f"{options['server']} exited at start with status 1; its last output:\n"
                        f"error: failed to load model '{tmp_path}/weights/{MODEL}.gguf'")
        case "timeout":
            app = web.Application()
            app.router.add_get("/{name}", _stalling)
            stall_app = web.AppRunner(app, shutdown_timeout=0.2)
            await stall_app.setup()
            await web.TCPSite(stall_app, "127.0.0.1", 0).start()
            host, port = stall_app.addresses[0][:2]
            stalled = f"http://{host}:{port}/{MODEL}.gguf"
            entry = tiny(stalled)
            options["stall_timeout_s"] = 0.5
            expected = (f"downloading the weights of '{MODEL}' failed: downloading {stalled} "
                        "timed out: no data for 0.5 s")
    engine = builtin_engine(tmp_path, **options)
    try:
        async with builtin_hub(settings, engine, [entry]) as porten:
            reply = await asyncio.wait_for(chat(porten, MODEL, "will it load?"), 30.0)
            error = error_of(reply, 502, "node_error")
            assert error["message"] == f"{MODEL} could not be loaded: local: {expected}"
            await settled(porten)
            [failed] = await logged(porten, ev.LoadFailed, model=MODEL)
            assert (failed.node_id, failed.error) == ("local", expected)
            assert engine.processes == {}
    finally:
        if stall_app is not None:
            await stall_app.cleanup()

