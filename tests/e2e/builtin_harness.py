"""A real hub whose local node runs the builtin engine, and a weights server a test can pause.

:func:`builtin_hub` is ``porten up --engine builtin`` as a test drives it:
the hub on a real Postgres, the local node a real agent over a real
WebSocket, driving a :class:`BuiltinEngine` that downloads from a loopback
URL and runs server processes — the ``llama-server`` stand-in, or the real
llama.cpp in the real-inference test. The background planner is paused;
tests that need a round call ``hub.planner.plan_once()``.

:class:`GatedWeights` serves a file like :mod:`porten.agent.weights.serve`
but stops at a chosen byte until the test releases it, so a test sees the
download *in progress* on the warming endpoint by waiting on a condition,
never on the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs
from aiohttp import web
from loading_harness import provisionable, sse_payloads
from v1_harness import FAST, Porten, eventually

from porten.agent.engines.builtin import BuiltinEngine
from porten.agent.resources import Resources
from porten.agent.weights.serve import ServedFile
from porten.cli._local_node import local_node
from porten.cli.hub import listening
from porten.config import Settings
from porten.domain.values import CatalogEntry

CPU = Resources("none", 0, 4000, "no GPU found (test)")
LOCAL = "local"


def builtin_engine(tmp_path: Path, **options: Any) -> BuiltinEngine:
    """A builtin engine with its cache and logs under ``tmp_path`` (options override)."""
    values: dict[str, Any] = {
        "cache_dir": tmp_path / "weights", "log_dir": tmp_path / "engines", "resources": CPU,
        "vram_budget_mb": 4000, "disk_budget_mb": 2000, "stop_grace_s": 5.0,
    }
    values.update(options)
    return BuiltinEngine(**values)


@contextlib.asynccontextmanager
async def builtin_hub(
    settings: Settings, engine: BuiltinEngine, entries: Sequence[CatalogEntry]
) -> AsyncIterator[Porten]:
    """The hub with its local node on ``engine``, ``entries`` offered, nothing loaded."""
    async with (
        listening(settings) as (hub, url),
        local_node(hub, url, (), engine=engine, extra=entries) as setup,
    ):
        await hub.planner.aclose()
        porten = Porten(hub=hub, url=url, api_key=setup.api_key, engine=engine,  # type: ignore[arg-type]
                        profile=FAST)
        await eventually(lambda: provisionable(porten, LOCAL), what="the local node online")
        try:
            yield porten
        finally:
            await porten.aclose_clients()


@attrs.define
class GatedWeights:
    """Serves ``file`` at ``/<name>``; the first download pauses at ``hold_at`` until released."""

    file: ServedFile
    hold_at: int
    released: asyncio.Event = attrs.field(factory=asyncio.Event)
    reached: asyncio.Event = attrs.field(factory=asyncio.Event)
    requests: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        size = self.file.size
        response = web.StreamResponse(headers={"Accept-Ranges": "bytes"})
        response.content_length = size
        await response.prepare(request)
        sent = 0
        for part, offset, length in self.file.spans(0, size):
            with part.open("rb") as handle:
                handle.seek(offset)
                left = length
                while left:
                    step = min(left, 1 << 20)
                    if not self.released.is_set() and sent < self.hold_at < sent + step:
                        step = self.hold_at - sent  # stop exactly at the hold point
                    data = handle.read(step)
                    await response.write(data)
                    sent += len(data)
                    left -= len(data)
                    if sent == self.hold_at and not self.released.is_set():
                        self.reached.set()
                        await self.released.wait()
        await response.write_eof()
        return response

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Serve on a free loopback port; yields the file's URL."""
        app = web.Application()
        app.router.add_get("/{name}", self.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            yield f"http://{host}:{port}/{self.file.name}"
        finally:
            self.released.set()
            await runner.cleanup()


@attrs.define
class WarmingWatch:
    """Every event of a warming SSE stream, read in the background until ``ready``."""

    events: list[dict[str, Any]] = attrs.field(factory=list)
    task: asyncio.Task[None] | None = None

    def seen(self, phase: str, *, partly: bool = False) -> bool:
        """Whether an event in ``phase`` arrived (with 0 < pct < 100 if ``partly``)."""
        return any(
            e["phase"] == phase and (not partly or 0 < e["pct"] < 100) for e in self.events
        )


@contextlib.asynccontextmanager
async def watching(porten: Porten, model: str) -> AsyncIterator[WarmingWatch]:
    """Follow ``/public/v1/models/warming/stream?model=`` while the body runs."""
    watch = WarmingWatch()

    async def follow() -> None:
        async with aiohttp.ClientSession() as http, http.get(
            f"{porten.url}/public/v1/models/warming/stream?model={model}"
        ) as resp:
            assert resp.status == 200
            buffer = b""
            async for data in resp.content.iter_any():
                buffer += data
                *complete, buffer = buffer.split(b"\n\n")
                for event in complete:
                    watch.events.extend(sse_payloads(event + b"\n\n"))

    watch.task = asyncio.create_task(follow())
    await eventually(lambda: bool(watch.events), what="the first warming event")
    try:
        yield watch
    finally:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(watch.task), 10.0)
        watch.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch.task
