"""Any OpenAI-compatible endpoint as an engine: vLLM, llama.cpp's server, an exo cluster.

The node owner runs the runtime; the agent only proxies to it, so the
engine is not provisionable: it serves the models its owner lists in
``PORTEN_ENGINE_MODELS`` (intersected with what ``GET /v1/models`` says,
when the endpoint says), and the hub never loads or evicts anything here.

Bytes pass straight through: the request body the hub sent, and the
response body as each piece arrives (``iter_any``, no line splitting or
re-buffering). aiohttp's client sets ``TCP_NODELAY`` on every connection
(``BaseProtocol.connection_made``), and ``Accept-Encoding: identity`` keeps
the runtime from compressing a stream, which would hold tokens back until a
compression block fills. Streams get no total timeout (a long generation is
not a failure), only a connect timeout. Closing a response early closes its
connection, which is how every runtime learns that the client went away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Final

import aiohttp
import msgspec
import structlog

from porten.agent.engines.base import EngineError, EngineResponse, LoadProgress, NotProvisionable
from porten.domain.values import CatalogEntry
from porten.protocol import Inventory

log = structlog.get_logger(__name__)

#: Seconds to open a connection to the engine.
CONNECT_TIMEOUT_S: Final = 10.0
#: Seconds a health or model-list probe may take in all.
PROBE_TIMEOUT_S: Final = 5.0
#: What the owner reads when the endpoint does not answer as the agent starts.
ENDPOINT_DOWN: Final = (
    "the {kind} endpoint at {url} is not answering; this node serves nothing until it does"
)
_HEADERS: Final = {"Content-Type": "application/json", "Accept-Encoding": "identity"}


class _ModelCard(msgspec.Struct):
    id: str


class _ModelList(msgspec.Struct):
    data: list[_ModelCard]


class HttpEngineResponse:
    """An engine's HTTP response, relayed piece by piece."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._finished = False

    @property
    def status(self) -> int:
        """The engine's HTTP status."""
        return self._response.status

    @property
    def content_type(self) -> str:
        """The engine's media type (without parameters)."""
        return self._response.content_type

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body pieces as they arrive; :class:`EngineError` if the engine dies mid-body."""
        try:
            async for data in self._response.content.iter_any():
                yield data
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise EngineError(
                f"the engine's response broke off: {exc or type(exc).__name__}"
            ) from exc
        self._finished = True

    async def aclose(self) -> None:
        """Release the connection; before the body's end, abort it (the engine stops)."""
        if self._finished:
            self._response.release()
        else:
            self._response.close()


async def proxy_request(
    http: aiohttp.ClientSession, base_url: str, path: str, body: bytes, *, stream: bool
) -> HttpEngineResponse:
    """POST ``body`` to ``base_url + path``; returns once the status line arrived.

    Raises :class:`EngineError` if the engine cannot be reached at all.
    """
    accept = "text/event-stream" if stream else "application/json"
    try:
        response = await http.post(
            base_url + path, data=body, headers={**_HEADERS, "Accept": accept}
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise EngineError(f"the engine at {base_url} is unreachable: {exc}") from exc
    return HttpEngineResponse(response)


class OpenAIEngine:
    """Proxies to an OpenAI-compatible HTTP endpoint that someone else runs."""

    kind = "openai"
    provisionable = False

    def __init__(
        self,
        url: str,
        *,
        models: Sequence[str] = (),
        vram_budget_mb: int = 0,
        disk_budget_mb: int = 0,
        vram_total_mb: int | None = None,
        warn_if_down: bool = True,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        base = url.strip().rstrip("/")
        self.url = base.removesuffix("/v1")  # people paste the SDK's base URL; accept it
        self.models = tuple(models)
        self._vram_budget_mb = vram_budget_mb
        self._vram_total_mb = vram_budget_mb if vram_total_mb is None else vram_total_mb
        self._disk_budget_mb = disk_budget_mb
        self._warn_if_down = warn_if_down
        self._connect_timeout_s = connect_timeout_s
        self._probe_timeout = aiohttp.ClientTimeout(total=probe_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the HTTP session (unlimited connections: the hub bounds concurrency).

        An endpoint that is down is not fatal — its owner may start it later,
        and the inventory poll notices — but the owner is told at once.
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self._connect_timeout_s,
                    sock_connect=self._connect_timeout_s,
                ),
            )
            if self._warn_if_down and not await self.health():
                log.warning(ENDPOINT_DOWN.format(kind=self.kind, url=self.url))

    async def aclose(self) -> None:
        """Close the session and every connection it holds."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def health(self) -> bool:
        """Whether ``/v1/models`` (or ``/health``, if it has no model list) answers."""
        try:
            if await self._reported_models() is not None:
                return True
            async with self._http.get(self.url + "/health", timeout=self._probe_timeout) as resp:
                return resp.status < 400
        except (EngineError, aiohttp.ClientError, TimeoutError):
            return False

    async def inventory(self) -> Inventory:
        """The allow-list as loaded, narrowed to what the endpoint reports serving.

        An endpoint that cannot be reached serves nothing; one without a model
        list is taken at its owner's word.
        """
        try:
            reported = await self._reported_models()
        except EngineError:
            loaded: tuple[str, ...] = ()
        else:
            if reported is None:
                loaded = self.models
            elif self.models:
                loaded = tuple(m for m in self.models if m in reported)
            else:
                loaded = reported
        return Inventory(
            engine=self.kind,
            provisionable=False,
            vram_total_mb=self._vram_total_mb,
            vram_budget_mb=self._vram_budget_mb,
            disk_budget_mb=self._disk_budget_mb,
            models_loaded=loaded,
        )

    async def load(self, entry: CatalogEntry, progress: LoadProgress) -> None:
        """Refused: the endpoint's owner decides what it serves."""
        raise NotProvisionable(
            f"cannot load {entry.id!r}: an openai engine serves a fixed set of models"
        )

    async def unload(self, model_id: str) -> None:
        """Refused: the endpoint's owner decides what it serves."""
        raise NotProvisionable(
            f"cannot unload {model_id!r}: an openai engine serves a fixed set of models"
        )

    async def request(self, path: str, body: bytes, *, stream: bool) -> EngineResponse:
        """POST ``body`` to ``path``; returns once the engine's status line arrived."""
        return await proxy_request(self._http, self.url, path, body, stream=stream)

    @property
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the engine is not started; call start() first")
        return self._session

    async def _reported_models(self) -> tuple[str, ...] | None:
        """The model ids ``GET /v1/models`` lists; ``None`` if the endpoint has no list.

        Raises :class:`EngineError` if the endpoint is down or failing.
        """
        try:
            async with self._http.get(self.url + "/v1/models", timeout=self._probe_timeout) as resp:
                if resp.status in (404, 405):
                    return None
                if resp.status >= 400:
                    raise EngineError(f"GET /v1/models answered {resp.status}")
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineError(f"the engine at {self.url} is unreachable: {exc}") from exc
        try:
            listing = msgspec.json.decode(body, type=_ModelList)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        return tuple(card.id for card in listing.data)
