"""The builtin engine: a llama.cpp server process per loaded model, weights fetched on demand.

A load pins the model in the weight cache, gets its GGUF (from the cache,
or downloaded with byte progress to the hub and a bar on the terminal),
checks the VRAM budget, starts a server on a free loopback port
(:mod:`~porten.agent.engines.llama_process`) and waits until it answers. An
unload stops the process and keeps the file. Requests go to the process of
the body's ``model`` over HTTP, through the same relay as the ``openai``
engine, so streaming, backpressure and cancellation behave the same.

A server that dies on its own is dropped at once: a request in flight on
it ends with an error (its HTTP stream breaks), the session reports the
model unloaded (``engine_exited``) and the hub loads it again on the next
request — from disk, without a download. Closing the engine stops every
process it started.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final

import aiohttp
import msgspec
import structlog

from porten.agent.engines.base import (
    EngineError,
    EngineResponse,
    LoadPhase,
    LoadProgress,
    LossCallback,
)
from porten.agent.engines.llama_process import (
    START_TIMEOUT_S,
    STOP_GRACE_S,
    LlamaProcess,
    free_port,
    server_command,
)
from porten.agent.engines.openai_engine import CONNECT_TIMEOUT_S, proxy_request
from porten.agent.progress_bar import DownloadBars
from porten.agent.resources import Resources
from porten.agent.weights.cache import MIB, WeightCache
from porten.agent.weights.download import STALL_TIMEOUT_S
from porten.agent.weights.fetcher import WeightFetcher
from porten.domain.values import CatalogEntry
from porten.protocol import Inventory

log = structlog.get_logger(__name__)

#: Progress messages per phase at most (one per 0.5 % moved, plus the ends).
PROGRESS_STEPS: Final = 200
#: Seconds between re-sends of progress that was held back (a stalled download).
FLUSH_S: Final = 0.5


class _RequestModel(msgspec.Struct):
    model: str = ""


_MODEL_OF: Final = msgspec.json.Decoder(_RequestModel)


class _Throttled:
    """Forwards progress to the hub at most :data:`PROGRESS_STEPS` times a phase.

    :meth:`flush` (called on a timer) forwards the latest figure again while
    the phase is unfinished: the hub keeps at most one progress event per
    250 ms, so a figure sent just after another may be dropped there, and a
    download that then stalls would show its old figure for as long as it
    stalls. One small message per tick; the hub ignores repeats.
    """

    def __init__(self, progress: LoadProgress, bars: DownloadBars | None, model_id: str) -> None:
        self._progress = progress
        self._bars = bars
        self._model_id = model_id
        self._sent: tuple[LoadPhase, int, int] | None = None
        self._latest: tuple[LoadPhase, int, int] | None = None

    def __call__(self, phase: LoadPhase, done: int, total: int) -> None:
        if self._bars is not None and phase == "downloading":
            self._bars.update(self._model_id, done, total)
        self._latest = (phase, done, total)
        step = max(1, total // PROGRESS_STEPS)
        sent = self._sent
        if sent is None or sent[0] != phase or done - sent[1] >= step or done >= total:
            self._forward()

    def flush(self) -> None:
        """Forward the latest progress (again) unless its phase is complete."""
        if self._latest is not None and self._latest[1] < self._latest[2]:
            self._forward()

    def _forward(self) -> None:
        assert self._latest is not None
        self._sent = self._latest
        self._progress(*self._latest)

    async def flush_every(self, interval_s: float) -> None:
        """Flush every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.flush()


class BuiltinEngine:
    """Runs GGUF models with llama.cpp, one server process per model."""

    kind = "builtin"
    provisionable = True

    def __init__(
        self,
        *,
        cache_dir: Path,
        log_dir: Path,
        resources: Resources,
        vram_budget_mb: int,
        disk_budget_mb: int,
        server: str = "",
        bars: DownloadBars | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        stop_grace_s: float = STOP_GRACE_S,
        stall_timeout_s: float = STALL_TIMEOUT_S,
    ) -> None:
        self.resources = resources
        self.vram_budget_mb = vram_budget_mb
        self.disk_budget_mb = disk_budget_mb
        self.cache = WeightCache(cache_dir, disk_budget_mb * MIB)
        self._fetcher = WeightFetcher(self.cache, stall_timeout_s=stall_timeout_s)
        self._log_dir = log_dir
        self._server = server
        self._bars = bars
        self._start_timeout_s = start_timeout_s
        self._stop_grace_s = stop_grace_s
        self._processes: dict[str, LlamaProcess] = {}  # serving
        self._vram: dict[str, int] = {}  # held or claimed, by model
        self._locks: dict[str, asyncio.Lock] = {}
        self._on_lost: LossCallback | None = None
        self._http: aiohttp.ClientSession | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP session to the servers; say what memory was found."""
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=CONNECT_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S
                ),
            )
        log.info("builtin engine ready", memory=self.resources.detail,
                 vram_budget_mb=self.vram_budget_mb, disk_budget_mb=self.disk_budget_mb,
                 on_disk=list(self.cache.on_disk()))

    async def aclose(self) -> None:
        """Stop every server process, then close the sessions."""
        processes = list(self._processes.values())
        self._processes.clear()
        self._vram.clear()
        await asyncio.gather(*(p.stop(self._stop_grace_s) for p in processes))
        await self._fetcher.aclose()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def on_lost(self, callback: LossCallback | None) -> None:
        """Report server processes that die on their own to ``callback``."""
        self._on_lost = callback

    async def health(self) -> bool:
        """Whether every server process is still running."""
        return all(p.returncode is None for p in self._processes.values())

    async def inventory(self) -> Inventory:
        """Budgets, verified weights on disk and models being served."""
        return Inventory(
            engine=self.kind,
            provisionable=True,
            vram_total_mb=self.resources.vram_total_mb,
            vram_budget_mb=self.vram_budget_mb,
            disk_budget_mb=self.disk_budget_mb,
            models_on_disk=self.cache.on_disk(),
            models_loaded=tuple(sorted(self._processes)),
        )

    @property
    def processes(self) -> dict[str, LlamaProcess]:
        """The server process of each model being served."""
        return dict(self._processes)

    # --- loads ---------------------------------------------------------------------------

    async def load(self, entry: CatalogEntry, progress: LoadProgress) -> None:
        """Fetch ``entry``'s weights if needed and start its server; ready when this returns."""
        lock = self._locks.setdefault(entry.id, asyncio.Lock())
        async with lock:
            if entry.id in self._processes:
                return
            self._claim_vram(entry)
            self.cache.pin(entry.id)
            try:
                await self._start_server(entry, _Throttled(progress, self._bars, entry.id))
            except BaseException:
                self.cache.unpin(entry.id)
                self._vram.pop(entry.id, None)
                raise

    async def _start_server(self, entry: CatalogEntry, progress: _Throttled) -> None:
        flusher = asyncio.create_task(progress.flush_every(FLUSH_S))
        try:
            path = await self._fetcher.ensure(entry, lambda d, t: progress("downloading", d, t))
        except BaseException as exc:
            if self._bars is not None:
                self._bars.finish(entry.id, str(exc) or type(exc).__name__)
            raise
        finally:
            flusher.cancel()
        if self._bars is not None:
            self._bars.finish(entry.id)
        size = path.stat().st_size
        progress("loading", 0, size)
        argv = server_command(
            path, port=free_port(), alias=entry.id, ctx=entry.ctx, hints=entry.engine_hints,
            explicit=self._server,
        )
        process = LlamaProcess(entry.id, argv, int(argv[argv.index("--port") + 1]),
                               self._log_dir / f"{path.stem}.log", on_exit=self._exited)
        try:
            await process.spawn()
            await process.wait_ready(self._session, self._start_timeout_s)
        except BaseException:
            await process.stop(self._stop_grace_s)
            raise
        self._processes[entry.id] = process
        self.cache.touch(entry.id)
        progress("loading", size, size)
        log.info("model serving", model=entry.id, url=process.url, pid=process.pid)

    def _claim_vram(self, entry: CatalogEntry) -> None:
        free = self.vram_budget_mb - sum(self._vram.values())
        if entry.vram_mb > free:
            raise EngineError(
                f"{entry.id!r} needs {entry.vram_mb} MB of VRAM; {free} MB of the "
                f"{self.vram_budget_mb} MB budget is free"
            )
        self._vram[entry.id] = entry.vram_mb

    async def unload(self, model_id: str) -> None:
        """Stop ``model_id``'s server; its weights stay in the cache (idempotent)."""
        lock = self._locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            process = self._processes.pop(model_id, None)
            if process is None:
                return
            await process.stop(self._stop_grace_s)
            self._release(model_id)

    def _release(self, model_id: str) -> None:
        self._vram.pop(model_id, None)
        self.cache.unpin(model_id)
        self.cache.touch(model_id)

    def _exited(self, process: LlamaProcess) -> None:
        """A server died on its own: forget it and tell the session."""
        if self._processes.get(process.model_id) is not process:
            return  # it died while starting: the load reports that
        del self._processes[process.model_id]
        self._release(process.model_id)
        detail = f"{process.argv[0]} exited with status {process.returncode}"
        log.warning("engine process died", model=process.model_id, detail=detail,
                    output=process.tail())
        if self._on_lost is not None:
            self._on_lost(process.model_id, detail)

    # --- requests ------------------------------------------------------------------------

    async def request(self, path: str, body: bytes, *, stream: bool) -> EngineResponse:
        """Relay to the server of the body's ``model``."""
        try:
            model = _MODEL_OF.decode(body).model
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EngineError(f"the request body has no readable model: {exc}") from exc
        process = self._processes.get(model)
        if process is None:
            raise EngineError(f"{model!r} is not loaded on this node")
        return await proxy_request(self._session, process.url, path, body, stream=stream)

    @property
    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("the engine is not started; call start() first")
        return self._http

