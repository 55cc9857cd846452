"""The one interface the agent drives every inference engine through.

An engine is whatever actually runs models — a ``llama-server`` the agent
manages, an Ollama daemon, an exo cluster's OpenAI endpoint, the sim. The
agent only needs to know what the engine holds (:meth:`Engine.inventory`),
to move models in and out of memory when it can (:meth:`Engine.load`,
:meth:`Engine.unload`), and to pass an OpenAI request through and stream the
answer back (:meth:`Engine.request`). Keeping the surface this small is what
lets a new back-end be a plugin of a hundred lines.

Cancellation is part of the contract, not an afterthought: closing an
:class:`EngineResponse` before its end must abort the engine's request, so
that a client who went away stops the GPU, not just the socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Literal, Protocol, runtime_checkable

from porten.domain.values import CatalogEntry
from porten.protocol import Inventory

LoadPhase = Literal["downloading", "loading"]


class EngineError(Exception):
    """The engine could not do what was asked (unreachable, refused, died mid-answer).

    The message is for the node's owner and the hub's operator to read; it
    travels to the hub as ``AgentResponseEnd.error`` or ``AgentLoadFailed.error``.
    """


class NotProvisionable(EngineError):
    """This engine serves a fixed set of models; the hub cannot load or unload on it."""


class LoadProgress(Protocol):
    """Called by :meth:`Engine.load` as a load moves forward (cheap; never blocks)."""

    def __call__(self, phase: LoadPhase, done_bytes: int, total_bytes: int) -> None: ...


class EngineResponse(Protocol):
    """An engine's answer to one request: status first, then the body as it arrives."""

    @property
    def status(self) -> int:
        """The engine's HTTP status (an OpenAI error body follows a 4xx/5xx)."""
        ...

    @property
    def content_type(self) -> str:
        """``text/event-stream`` for streams, ``application/json`` otherwise."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes in order, as the engine sends them (no re-buffering).

        Raises :class:`EngineError` if the engine dies before the body ends.
        """
        ...

    async def aclose(self) -> None:
        """Release the response; before the body's end this aborts the engine's request."""
        ...


@runtime_checkable
class Engine(Protocol):
    """What the agent needs from an inference back-end."""

    #: The name the hub records (``NodeCapabilitiesReported.engine``): ``sim``, ``openai``…
    kind: str
    #: Whether the hub may load and unload models here (see "What provisionable means").
    provisionable: bool

    async def start(self) -> None:
        """Acquire what the engine needs (HTTP sessions, processes); called once."""
        ...

    async def aclose(self) -> None:
        """Release everything :meth:`start` acquired; no process or task may outlive it."""
        ...

    async def health(self) -> bool:
        """Whether the engine answers right now."""
        ...

    async def inventory(self) -> Inventory:
        """Budgets and the models on disk and in memory, as the hub should see them."""
        ...

    async def load(self, entry: CatalogEntry, progress: LoadProgress) -> None:
        """Download (if needed) and load ``entry``; raise :class:`EngineError` on failure."""
        ...

    async def unload(self, model_id: str) -> None:
        """Take ``model_id`` out of memory, keeping its weights on disk (idempotent)."""
        ...

    async def request(self, path: str, body: bytes, *, stream: bool) -> EngineResponse:
        """Send an OpenAI request; the response's status is known when this returns.

        Raises :class:`EngineError` if the engine cannot be reached at all.
        """
        ...


#: ``(model_id, detail)``: a model left memory without being asked (its process died).
LossCallback = Callable[[str, str], None]


@runtime_checkable
class ReportsLosses(Protocol):
    """An engine that notices on its own when a loaded model dies (optional).

    The session registers a callback while it is connected, and reports each
    loss to the hub at once (``AgentUnloaded``, reason ``engine_exited``)
    instead of waiting for the next inventory poll.
    """

    def on_lost(self, callback: LossCallback | None) -> None:
        """Call ``callback`` for each model lost from now on (``None`` stops it)."""
        ...
