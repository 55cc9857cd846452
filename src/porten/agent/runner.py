"""Run an agent in the foreground until SIGINT or SIGTERM (what the service unit runs).

``python -m porten.agent.runner`` reads :class:`AgentSettings` from the
environment; the ``porten`` command's agent subcommands call
:func:`run_agent` the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog

from porten.agent.connection import Agent
from porten.agent.engines import create_engine
from porten.agent.settings import AgentSettings

log = structlog.get_logger(__name__)


async def run_agent(settings: AgentSettings) -> None:
    """Serve until signalled, then stop cleanly (requests aborted, engine closed)."""
    agent = Agent(settings, create_engine(settings))
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, signalled.set)
    running = asyncio.create_task(agent.run(), name="porten-agent-run")
    waiting = asyncio.create_task(signalled.wait())
    try:
        await asyncio.wait({running, waiting}, return_when=asyncio.FIRST_COMPLETED)
        log.info("agent stopping")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        waiting.cancel()
        await agent.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await running  # re-raises what ended run() early (an engine that cannot start)
    log.info("agent stopped")


def main() -> None:
    """Configure logging from the environment and run the agent on uvloop."""
    from porten.config import Settings
    from porten.logs import configure_logging

    hub_settings = Settings.from_env()
    configure_logging(hub_settings.log_level, hub_settings.log_format)
    settings = AgentSettings.from_env()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        asyncio.run(run_agent(settings))
    else:
        uvloop.run(run_agent(settings))


if __name__ == "__main__":
    main()
