"""``porten hub`` and ``porten up``: run until interrupted, then stop everything cleanly.

``porten up`` is the whole product on one machine: the hub on embedded
defaults plus a local node agent. When it is ready it prints two shell lines
on stdout (``export PORTEN_BASE_URL=…`` and ``export PORTEN_API_KEY=…``),
so ``eval "$(porten up | head -2)"``-style scripts and a human pasting them
both work; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from porten.adapters.http.app import HUB, RELAY, create_app
from porten.bootstrap import Hub, describe_database
from porten.cli._common import data_options, json_option, print_json, run, settings_from
from porten.config import Settings

if TYPE_CHECKING:
    from porten.services.local_setup import LocalSetup

log = structlog.get_logger(__name__)

#: Models the local sim node holds from the start (they fit its simulated 24 GB).
UP_PRELOADED = (
    "qwen2.5-7b-instruct",
    "deepseek-r1-distill-qwen-14b",
    "qwen2.5-vl-7b-instruct",
    "nomic-embed-text",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hub`` and ``up`` to the command line."""
    common = [data_options()]
    hub = sub.add_parser(
        "hub", parents=common, help="run the hub (API, agent gateway, event log)"
    )
    hub.add_argument("--host", help="address to listen on (env PORTEN_HOST; default 127.0.0.1)")
    hub.add_argument("--port", type=int, help="port to listen on (env PORTEN_PORT; default 8080)")
    hub.set_defaults(func=cmd_hub)

    up = sub.add_parser(
        "up", parents=[*common, json_option()],
        help="the hub and a local node on this machine, on embedded defaults",
    )
    up.add_argument("--port", type=int, help="port to listen on (default 8080; 0 picks one)")
    up.add_argument(
        "--engine", choices=["sim", "builtin"], default="sim",
        help="the local node's engine: sim (simulated models, the default) or builtin "
        "(real inference with llama.cpp; needs pip install 'porten[llama]')",
    )
    up.set_defaults(func=cmd_up)


def cmd_hub(args: argparse.Namespace) -> int:
    """Run the hub in the foreground."""
    settings = settings_from(args, host=args.host, port=args.port)
    run(serve(settings))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Run the hub and a local node; print the base URL and an API key."""
    settings = settings_from(args, port=args.port)
    if args.engine == "builtin":
        from porten.agent.engines.base import EngineError
        from porten.agent.engines.llama_process import find_server
        from porten.cli._common import CommandError

        try:
            find_server(os.environ.get("PORTEN_LLAMA_SERVER", "").strip())
        except EngineError as exc:
            raise CommandError(str(exc)) from None
    run(serve(settings, local_node=True, as_json=args.json, engine=args.engine))
    return 0


#: How long shutdown waits for requests in flight to finish.
DRAIN_TIMEOUT_S = 30.0


@contextlib.asynccontextmanager
async def listening(settings: Settings) -> AsyncIterator[tuple[Hub, str]]:
    """The hub app started and bound; yields the hub and its base URL.

    On exit it drains first (see :func:`drain`), then stops the hub's parts.
    """
    app = create_app(settings)
    # A client that hangs up cancels its handler at once: a request waiting for
    # its first byte, a cold load or a whole non-streamed answer stops on the
    # node instead of generating for nobody (aiohttp leaves this off by default).
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=DRAIN_TIMEOUT_S,
                           handler_cancellation=True)
    await runner.setup()  # opens the database, the event log and the projection
    _RUNNERS[app[HUB]] = runner
    try:
        await web.TCPSite(runner, settings.host, settings.port, reuse_address=True).start()
        port = next(
            (a[1] for a in runner.addresses if isinstance(a, tuple) and len(a) >= 2),
            settings.port,
        )
        yield app[HUB], f"http://{settings.host}:{port}"
    finally:
        await drain(app[HUB])
        del _RUNNERS[app[HUB]]
        await runner.cleanup()  # closes agent links, flushes events, stops Postgres


_RUNNERS: dict[Hub, web.AppRunner] = {}


async def drain(hub: Hub) -> None:
    """Stop accepting connections, then let requests in flight finish (bounded).

    This must come before aiohttp's own shutdown, which stops reading from
    open connections — the agents' included — and would cut every stream.
    """
    runner = _RUNNERS.get(hub)
    if runner is None:
        return
    for site in list(runner.sites):
        await site.stop()
    relay = runner.app[RELAY]
    if relay.active:
        log.info("draining requests in flight", requests=relay.active)
        if not await relay.drain(DRAIN_TIMEOUT_S):
            log.warning("requests still in flight after the drain timeout", requests=relay.active)


async def serve(
    settings: Settings, *, local_node: bool = False, as_json: bool = False, engine: str = "sim"
) -> None:
    """Serve until SIGINT/SIGTERM, then drain requests and stop the hub's parts.

    The signal handlers stay installed until everything has stopped, so a
    second Ctrl-C during shutdown does not abandon it halfway.
    """
    async with signalled() as stop, listening(settings) as (hub, url):
        log.info("hub listening", url=url, event_log=describe_database(settings),
                 position=hub.projection.position)
        if not local_node:
            await stop.wait()
            log.info("hub stopping")
            return
        async with _local(hub, url, engine) as (setup, node_line):
            sys.stderr.write(
                f"porten is up at {url}\n"
                f"  event log: {describe_database(settings)}\n"
                f"{node_line}"
                "  Paste the two lines below into a shell; Ctrl-C stops everything.\n"
            )
            if as_json:
                print_json({"base_url": f"{url}/v1", "api_key": setup.api_key})
            else:
                sys.stdout.write(
                    f"export PORTEN_BASE_URL={url}/v1\nexport PORTEN_API_KEY={setup.api_key}\n"
                )
                sys.stdout.flush()
            await stop.wait()
            log.info("porten up stopping")
            await drain(hub)  # before the local node goes: it serves those requests


@contextlib.asynccontextmanager
async def _local(hub: Hub, url: str, engine: str) -> AsyncIterator[tuple[LocalSetup, str]]:
    """The local node on ``engine``; yields its setup and what to tell the user about it."""
    from porten.cli._local_node import builtin_engine, local_node, packaged_weights

    if engine != "builtin":
        async with local_node(hub, url, UP_PRELOADED) as setup:
            yield setup, (
                "  local node: the 'sim' engine — simulated models, no GPU and no real\n"
                "  inference; `porten up --engine builtin` runs a real model with llama.cpp.\n"
            )
        return
    async with packaged_weights() as entry:
        node = builtin_engine(hub.settings.data_dir)
        async with local_node(hub, url, (), engine=node, extra=[entry]) as setup:
            yield setup, (
                f"  local node: the 'builtin' engine (llama.cpp). Model {entry.id!r} is\n"
                "  downloaded and loaded on its first request (watch it at\n"
                f"  {url}/public/v1/models/warming?model={entry.id}).\n"
            )


@contextlib.asynccontextmanager
async def signalled() -> AsyncIterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM; later signals are logged and ignored."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.info("already stopping; waiting for in-flight work to finish")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
