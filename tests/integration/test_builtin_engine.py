"""The builtin engine: weights fetched, one server process per model, stopped cleanly.

The server is the ``llama-server`` stand-in (``tests/standins``), a real
process the engine starts, probes, relays to and signals exactly as it would
a llama.cpp build; the real llama.cpp runs in the real-inference e2e test.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_harness import eventually
from stand_ins import gguf, llama_server, sha256

from porten.agent.engines.base import EngineError, LoadPhase
from porten.agent.engines.builtin import BuiltinEngine
from porten.agent.resources import Resources
from porten.agent.weights.cache import MIB
from porten.agent.weights.serve import ServedFile, serving
from porten.domain.values import CatalogEntry

CPU = Resources("none", 0, 4000, "no GPU found (test)")
WEIGHTS = {m: gguf(MIB + i, seed=i) for i, m in enumerate(("alpha", "beta", "gamma"))}


def entry(model: str, base: str, **fields: object) -> CatalogEntry:
    values: dict[str, object] = {
        "id": model, "vram_mb": 1000, "disk_mb": 2, "ctx": 2048,
        "download_ref": f"{base}/{model}.gguf", "sha256": sha256(WEIGHTS[model]),
    }
    values.update(fields)
    return CatalogEntry(**values)  # type: ignore[arg-type]


class Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[LoadPhase, int, int]] = []

    def __call__(self, phase: LoadPhase, done: int, total: int) -> None:
        self.calls.append((phase, done, total))

    def phases(self) -> list[str]:
        return list(dict.fromkeys(p for p, _, _ in self.calls))


@pytest.fixture
async def base(tmp_path: Path) -> AsyncIterator[str]:
    files = []
    for model, data in WEIGHTS.items():
        path = tmp_path / "src" / f"{model}.gguf"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        files.append(ServedFile(path.name, (path,)))
    async with serving(files) as url:
        yield url


def engine(tmp_path: Path, server: Path | str, **options: object) -> BuiltinEngine:
    values: dict[str, object] = {
        "cache_dir": tmp_path / "weights", "log_dir": tmp_path / "engines", "resources": CPU,
        "vram_budget_mb": 4000, "disk_budget_mb": 100, "server": str(server),
        "stop_grace_s": 5.0,
    }
    values.update(options)
    return BuiltinEngine(**values)  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def read_all(engine: BuiltinEngine, body: dict[str, object], *, stream: bool) -> bytes:
    response = await engine.request("/v1/chat/completions", json.dumps(body).encode(),
                                    stream=stream)
    try:
        assert response.status == 200
        return b"".join([c async for c in response.chunks()])
    finally:
        await response.aclose()


async def test_load_serve_and_unload_keeps_the_weights(tmp_path: Path, base: str) -> None:
    """A cold load downloads then starts the server; requests reach it; unload stops it."""
    e = engine(tmp_path, llama_server(tmp_path / "bin"))
    await e.start()
    try:
        progress = Progress()
        await e.load(entry("alpha", base), progress)
        assert progress.phases() == ["downloading", "loading"]
        assert progress.calls[-1] == ("loading", MIB, MIB)
        inventory = await e.inventory()
        assert (inventory.engine, inventory.provisionable) == ("builtin", True)
        assert (inventory.models_loaded, inventory.models_on_disk) == (("alpha",), ("alpha",))
        assert (inventory.vram_budget_mb, inventory.disk_budget_mb) == (4000, 100)
        pid = e.processes["alpha"].pid
        assert pid is not None

        body = {"model": "alpha", "messages": [{"role": "user", "content": "hi there"}]}
        whole = json.loads(await read_all(e, body, stream=False))
        assert whole["choices"][0]["message"]["content"] == "echo: hi there"
        streamed = await read_all(e, {**body, "stream": True}, stream=True)
        assert streamed.endswith(b"data: [DONE]\n\n")

        await e.unload("alpha")
        assert not alive(pid)
        inventory = await e.inventory()
        assert (inventory.models_loaded, inventory.models_on_disk) == ((), ("alpha",))
        with pytest.raises(EngineError, match=r"^'alpha' is not loaded on this node$"):
            await e.request("/v1/chat/completions", json.dumps(body).encode(), stream=False)

        again = Progress()
        await e.load(entry("alpha", base), again)
        assert again.phases() == ["loading"]  # from disk: no download
    finally:
        await e.aclose()


async def test_a_missing_server_binary_fails_the_load(tmp_path: Path, base: str) -> None:
    """PORTEN_LLAMA_SERVER naming nothing fails the load clearly and releases the model."""
    e = engine(tmp_path, tmp_path / "nowhere" / "llama-server")
    await e.start()
    try:
        with pytest.raises(EngineError) as caught:
            await e.load(entry("alpha", base), Progress())
        assert str(caught.value) == (
            f"PORTEN_LLAMA_SERVER='{tmp_path}/nowhere/llama-server' is not an executable file "
            "or a command on PATH"
        )
        assert not e.cache.pinned("alpha")
        assert (await e.inventory()).models_on_disk == ("alpha",)  # the download is kept
    finally:
        await e.aclose()


async def test_a_server_that_exits_at_start_fails_the_load_with_its_output(
    tmp_path: Path, base: str
) -> None:
    """The exit status and the server's own last words make the load-failed message."""
    server = llama_server(tmp_path / "bin", {"FAKE_LLAMA_EXIT": "3"})
    e = engine(tmp_path, server)
    await e.start()
    try:
        with pytest.raises(EngineError) as caught:
            await e.load(entry("alpha", base), Progress())
        assert str(caught.value) == (
            f"{server} exited at start with status 3; its last output:\n"
            f"error: failed to load model '{tmp_path}/weights/alpha.gguf'"
        )
        assert e.processes == {}
    finally:
        await e.aclose()


async def test_a_model_over_the_vram_budget_is_refused(tmp_path: Path, base: str) -> None:
    """The budget counts models loaded; the message gives the figures."""
    e = engine(tmp_path, llama_server(tmp_path / "bin"), vram_budget_mb=1500)
    await e.start()
    try:
        await e.load(entry("alpha", base), Progress())
        with pytest.raises(EngineError) as caught:
            await e.load(entry("beta", base), Progress())
        assert str(caught.value) == (
            "'beta' needs 1000 MB of VRAM; 500 MB of the 1500 MB budget is free"
        )
    finally:
        await e.aclose()


async def test_a_server_dying_mid_request_ends_it_and_is_reported_lost(
    tmp_path: Path, base: str
) -> None:
    """SIGKILL during a stream: the stream fails, the model is reported lost, then unloaded."""
    e = engine(tmp_path, llama_server(tmp_path / "bin", {"FAKE_LLAMA_HOLD": "1"}))
    lost: list[tuple[str, str]] = []
    e.on_lost(lambda model, detail: lost.append((model, detail)))
    await e.start()
    try:
        await e.load(entry("alpha", base), Progress())
        process = e.processes["alpha"]
        assert process.pid is not None
        body = {"model": "alpha", "stream": True, "messages": [{"role": "user", "content": "x y"}]}
        response = await e.request("/v1/chat/completions", json.dumps(body).encode(), stream=True)
        chunks = response.chunks()
        first = await anext(chunks)
        assert first.startswith(b"data: ")
        os.kill(process.pid, signal.SIGKILL)
        with pytest.raises(EngineError, match=r"^the engine's response broke off"):
            await anext(chunks)
        await response.aclose()
        await eventually(lambda: bool(lost), what="the loss reported")
        assert lost == [("alpha", f"{process.argv[0]} exited with status -9")]
        assert (await e.inventory()).models_loaded == ()
        assert not e.cache.pinned("alpha")
    finally:
        await e.aclose()


async def test_close_stops_every_server_even_one_that_ignores_sigterm(
    tmp_path: Path, base: str
) -> None:
    """aclose SIGTERMs the group and SIGKILLs what ignores it: no process outlives the engine."""
    e = engine(tmp_path, llama_server(tmp_path / "bin", {"FAKE_LLAMA_IGNORE_TERM": "1"}),
               stop_grace_s=0.5)
    await e.start()
    await e.load(entry("alpha", base), Progress())
    await e.load(entry("beta", base), Progress())
    pids = [p.pid for p in e.processes.values()]
    await e.aclose()
    assert pids
    assert [pid for pid in pids if pid is not None and alive(pid)] == []


async def test_lru_removal_never_takes_a_loaded_model(tmp_path: Path, base: str) -> None:
    """With room for two files, a third load removes the unloaded one, not the loaded one."""
    e = engine(tmp_path, llama_server(tmp_path / "bin"), disk_budget_mb=3)
    await e.start()
    try:
        await e.load(entry("alpha", base), Progress())
        await e.load(entry("beta", base), Progress())
        await e.unload("beta")
        await e.load(entry("gamma", base), Progress())
        inventory = await e.inventory()
        assert inventory.models_on_disk == ("alpha", "gamma")
        assert inventory.models_loaded == ("alpha", "gamma")
    finally:
        await e.aclose()
