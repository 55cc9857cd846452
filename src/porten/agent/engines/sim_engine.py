"""The sim as a provisionable engine: fake downloads and loads, real HTTP.

At :meth:`SimEngine.start` the sim's OpenAI server starts in this process on
a free loopback port, and every request goes to it through
:class:`OpenAIEngine`, the same code that talks to vLLM or exo; only the
model lifecycle is simulated. A load "downloads" weights the engine does not
hold yet (byte progress at ``download_mb_per_s``), then "loads" them
(``load_s_per_gb``), then offers the model on the server; an unload
withdraws it and keeps it on disk. Budgets are enforced the way a real node
would enforce them, so the hub's planner meets the same refusals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final

import structlog
from aiohttp import web

from porten.agent.engines import sim_server
from porten.agent.engines.base import EngineError, EngineResponse, LoadPhase, LoadProgress
from porten.agent.engines.openai_engine import OpenAIEngine
from porten.agent.engines.sim import SimModel, SimProfile, download_time_s, load_time_s
from porten.domain.values import CatalogEntry
from porten.protocol import Inventory

log = structlog.get_logger(__name__)

MIB: Final = 1024 * 1024
#: Simulated VRAM and disk when the operator set no budget (a 24 GB card, 200 GB of disk).
DEFAULT_VRAM_MB: Final = 24_000
DEFAULT_DISK_MB: Final = 200_000


class SimEngine:
    """A deterministic, GPU-free engine the hub can load and unload models on."""

    kind = "sim"
    provisionable = True

    def __init__(
        self,
        profile: SimProfile | None = None,
        *,
        vram_budget_mb: int = DEFAULT_VRAM_MB,
        disk_budget_mb: int = DEFAULT_DISK_MB,
        vram_total_mb: int | None = None,
        preloaded: Iterable[SimModel] = (),
        on_disk: Iterable[str] = (),
        fail_loads: Iterable[str] = (),
        progress_steps: int = 10,
    ) -> None:
        self.profile = profile or SimProfile()
        self._vram_budget_mb = vram_budget_mb
        self._disk_budget_mb = disk_budget_mb
        self._vram_total_mb = vram_total_mb if vram_total_mb is not None else vram_budget_mb
        self._preloaded = {m.id: m for m in preloaded}
        #: model id → MiB it holds (0 when its size is unknown, as for preloaded models).
        self._disk: dict[str, int] = dict.fromkeys([*on_disk, *self._preloaded], 0)
        self._vram: dict[str, int] = dict.fromkeys(self._preloaded, 0)
        self._reserved: dict[str, int] = {}  # VRAM claimed by loads in progress
        self._fail_loads = frozenset(fail_loads)
        self._steps = max(1, progress_steps)
        self._runner: web.AppRunner | None = None
        self._http: OpenAIEngine | None = None

    @property
    def url(self) -> str:
        """The in-process sim server's base URL (once started)."""
        return self._proxy.url

    async def start(self) -> None:
        """Serve the sim on a free loopback port and open the HTTP path to it."""
        app = sim_server.create_app(self._preloaded.values(), self.profile)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        self._runner = runner
        self._http = OpenAIEngine(f"http://{host}:{port}")
        await self._http.start()
        log.info("sim engine started", url=self._http.url, models=sorted(self._vram))

    async def aclose(self) -> None:
        """Close the HTTP path, then stop the server."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def health(self) -> bool:
        """Whether the in-process server answers."""
        return self._http is not None and await self._http.health()

    async def inventory(self) -> Inventory:
        """Budgets, weights on disk and models in memory, sorted."""
        return Inventory(
            engine=self.kind,
            provisionable=True,
            vram_total_mb=self._vram_total_mb,
            vram_budget_mb=self._vram_budget_mb,
            disk_budget_mb=self._disk_budget_mb,
            models_on_disk=tuple(sorted(self._disk)),
            models_loaded=tuple(sorted(self._vram)),
        )

    @property
    def vram_used_mb(self) -> int:
        """VRAM held by loaded models and claimed by loads in progress."""
        return sum(self._vram.values()) + sum(self._reserved.values())

    async def load(self, entry: CatalogEntry, progress: LoadProgress) -> None:
        """Download if needed, load, and serve ``entry``; :class:`EngineError` if it cannot."""
        if entry.id in self._vram:
            return
        if entry.id in self._reserved:
            raise EngineError(f"{entry.id!r} is already being loaded")
        self._claim_vram(entry)
        try:
            if entry.id not in self._disk:
                self._check_disk(entry)
                duration = download_time_s(self.profile, entry.disk_mb)
                await self._advance("downloading", entry.disk_mb * MIB, duration, progress)
                self._disk[entry.id] = entry.disk_mb
            if entry.id in self._fail_loads:
                raise EngineError(f"simulated failure loading {entry.id!r}")
            duration = load_time_s(self.profile, entry.vram_mb)
            await self._advance("loading", entry.vram_mb * MIB, duration, progress)
            sim_server.offer(self._app, SimModel.from_catalog(entry))
            self._vram[entry.id] = entry.vram_mb
        finally:
            self._reserved.pop(entry.id, None)

    async def unload(self, model_id: str) -> None:
        """Stop serving ``model_id``; its weights stay on disk."""
        sim_server.withdraw(self._app, model_id)
        self._vram.pop(model_id, None)

    async def request(self, path: str, body: bytes, *, stream: bool) -> EngineResponse:
        """Relay to the in-process server over real HTTP."""
        return await self._proxy.request(path, body, stream=stream)

    @property
    def _proxy(self) -> OpenAIEngine:
        if self._http is None:
            raise RuntimeError("the engine is not started; call start() first")
        return self._http

    @property
    def _app(self) -> web.Application:
        if self._runner is None:
            raise RuntimeError("the engine is not started; call start() first")
        return self._runner.app

    def _claim_vram(self, entry: CatalogEntry) -> None:
        free = self._vram_budget_mb - self.vram_used_mb
        if entry.vram_mb > free:
            raise EngineError(f"{entry.id!r} needs {entry.vram_mb} MB of VRAM; {free} MB free")
        self._reserved[entry.id] = entry.vram_mb

    def _check_disk(self, entry: CatalogEntry) -> None:
        free = self._disk_budget_mb - sum(self._disk.values())
        if entry.disk_mb > free:
            raise EngineError(f"{entry.id!r} needs {entry.disk_mb} MB of disk; {free} MB free")

    async def _advance(
        self, phase: LoadPhase, total: int, duration: float, progress: LoadProgress
    ) -> None:
        """Report ``phase`` from 0 to ``total`` bytes over ``duration`` seconds, in steps."""
        progress(phase, 0, total)
        for step in range(1, self._steps + 1):
            await asyncio.sleep(duration / self._steps)  # the simulated work itself
            progress(phase, total * step // self._steps, total)
