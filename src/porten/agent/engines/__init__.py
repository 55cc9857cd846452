"""Inference engines the agent drives, and the choice among them (``PORTEN_ENGINE``).

Every engine implements :class:`~porten.agent.engines.base.Engine` and is
reached over HTTP: ``openai`` proxies to an endpoint someone else runs;
``sim`` is a deterministic stand-in that needs no GPU, served by
``sim_server`` in-process so the agent's real engine path is exercised end
to end. :data:`FACTORIES` maps ``PORTEN_ENGINE`` values to constructors (a
later release adds engines from entry-point plugins to the same table).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from porten.config import ConfigError

if TYPE_CHECKING:
    from porten.agent.engines.base import Engine
    from porten.agent.settings import AgentSettings


def _openai(settings: AgentSettings) -> Engine:
    from porten.agent.engines.openai_engine import OpenAIEngine

    if not settings.engine_url:
        raise ConfigError("PORTEN_ENGINE=openai needs PORTEN_ENGINE_URL (the endpoint's base URL)")
    return OpenAIEngine(
        settings.engine_url,
        models=settings.engine_models,
        vram_budget_mb=settings.vram_budget_mb,
        disk_budget_mb=settings.disk_budget_mb,
    )


def _sim(settings: AgentSettings) -> Engine:
    from porten.agent.engines.sim import SimModel
    from porten.agent.engines.sim_engine import DEFAULT_DISK_MB, DEFAULT_VRAM_MB, SimEngine

    return SimEngine(
        settings.sim_profile,
        vram_budget_mb=settings.vram_budget_mb or DEFAULT_VRAM_MB,
        disk_budget_mb=settings.disk_budget_mb or DEFAULT_DISK_MB,
        preloaded=[SimModel(id=m) for m in settings.engine_models],
    )


#: ``PORTEN_ENGINE`` value → how to build that engine from the agent's settings.
FACTORIES: Final[Mapping[str, Callable[[AgentSettings], Engine]]] = {
    "openai": _openai,
    "sim": _sim,
}


def create_engine(settings: AgentSettings) -> Engine:
    """The engine ``settings.engine`` names; :class:`ConfigError` for an unknown name."""
    factory = FACTORIES.get(settings.engine)
    if factory is None:
        known = ", ".join(sorted(FACTORIES))
        raise ConfigError(
            f"PORTEN_ENGINE={settings.engine!r} is not available in this version; "
            f"choose one of: {known}"
        )
    return factory(settings)
