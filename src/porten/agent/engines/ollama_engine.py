"""A running Ollama as an engine: the models its owner allows, through Ollama's own API.

Ollama pulls and loads models itself (it loads on first request and unloads
on its own keep-alive), so the hub neither provisions nor evicts here: the
node serves the allow-list ``PORTEN_ENGINE_MODELS`` — narrowed to what
``GET /api/tags`` says is pulled — and reports those as loaded. Names match
as Ollama matches them: ``llama3.2`` is ``llama3.2:latest``; the node reports
the allow-list's spelling, which is what the hub's catalog uses.

Requests go to Ollama's OpenAI-compatible ``/v1`` endpoints through the same
relay as the ``openai`` engine (streaming, cancellation). Health is
``GET /api/version``. An Ollama that is down serves nothing until it
answers again; the inventory poll notices both ways.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import aiohttp
import msgspec
import structlog

from porten.agent.engines.base import EngineError, EngineResponse, LoadProgress, NotProvisionable
from porten.agent.engines.openai_engine import ENDPOINT_DOWN, OpenAIEngine
from porten.domain.values import CatalogEntry
from porten.protocol import Inventory

log = structlog.get_logger(__name__)

DEFAULT_URL: Final = "http://127.0.0.1:11434"
PROBE_TIMEOUT_S: Final = 5.0


class _Tag(msgspec.Struct):
    name: str


class _Tags(msgspec.Struct):
    models: list[_Tag] = []


def canonical(name: str) -> str:
    """Ollama's full name for ``name``: the ``:latest`` tag when none is given."""
    base = name.strip()
    return base if ":" in base.rsplit("/", 1)[-1] else f"{base}:latest"


class OllamaEngine:
    """Serves an allow-list of models from an Ollama daemon its owner runs."""

    kind = "ollama"
    provisionable = False

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        models: Sequence[str] = (),
        vram_total_mb: int = 0,
        vram_budget_mb: int = 0,
        disk_budget_mb: int = 0,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self._proxy = OpenAIEngine(url or DEFAULT_URL, warn_if_down=False)
        self.url = self._proxy.url
        self.models = tuple(models)
        self._vram_total_mb = vram_total_mb
        self._vram_budget_mb = vram_budget_mb
        self._disk_budget_mb = disk_budget_mb
        self._probe = aiohttp.ClientTimeout(total=probe_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the HTTP sessions; warn the owner now if Ollama does not answer."""
        await self._proxy.start()
        if self._session is None:
            self._session = aiohttp.ClientSession()
        if not self.models:
            log.warning("PORTEN_ENGINE_MODELS is empty: this ollama node serves nothing")
        if not await self.health():
            log.warning(ENDPOINT_DOWN.format(kind=self.kind, url=self.url))

    async def aclose(self) -> None:
        """Close both sessions."""
        await self._proxy.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def health(self) -> bool:
        """Whether ``GET /api/version`` answers."""
        try:
            async with self._http.get(self.url + "/api/version", timeout=self._probe) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def inventory(self) -> Inventory:
        """The allow-list entries Ollama has pulled, as loaded and on disk."""
        try:
            pulled = await self._pulled()
        except EngineError as exc:
            log.warning("cannot list ollama's models", error=str(exc))
            pulled = set()
        serving = tuple(m for m in self.models if canonical(m) in pulled)
        return Inventory(
            engine=self.kind,
            provisionable=False,
            vram_total_mb=self._vram_total_mb,
            vram_budget_mb=self._vram_budget_mb,
            disk_budget_mb=self._disk_budget_mb,
            models_on_disk=serving,
            models_loaded=serving,
        )

    async def load(self, entry: CatalogEntry, progress: LoadProgress) -> None:
        """Refused: the owner pulls models into Ollama."""
        raise NotProvisionable(
            f"cannot load {entry.id!r}: an ollama engine serves a fixed set of models"
        )

    async def unload(self, model_id: str) -> None:
        """Refused: Ollama unloads on its own keep-alive."""
        raise NotProvisionable(
            f"cannot unload {model_id!r}: an ollama engine serves a fixed set of models"
        )

    async def request(self, path: str, body: bytes, *, stream: bool) -> EngineResponse:
        """Relay to Ollama's OpenAI-compatible endpoint."""
        return await self._proxy.request(path, body, stream=stream)

    @property
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the engine is not started; call start() first")
        return self._session

    async def _pulled(self) -> set[str]:
        try:
            async with self._http.get(self.url + "/api/tags", timeout=self._probe) as resp:
                if resp.status != 200:
                    raise EngineError(f"GET {self.url}/api/tags answered {resp.status}")
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineError(f"the ollama server at {self.url} is unreachable: {exc}") from exc
        try:
            tags = msgspec.json.decode(body, type=_Tags)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EngineError(f"GET {self.url}/api/tags is not Ollama's answer: {exc}") from exc
        return {canonical(t.name) for t in tags.models}
