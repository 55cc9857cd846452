"""Inference engines the agent drives, and the choice among them (``PORTEN_ENGINE``).

Every engine implements :class:`~porten.agent.engines.base.Engine`:
``builtin`` runs llama.cpp servers the agent manages (provisionable);
``ollama`` serves an allow-list from a running Ollama; ``openai`` proxies to
any OpenAI-compatible endpoint someone else runs; ``sim`` is a deterministic
stand-in that needs no GPU. :data:`FACTORIES` maps names to constructors.

Third-party engines are plugins: a distribution declares an entry point in
the ``porten.engines`` group whose object is a factory taking the agent's
:class:`~porten.agent.settings.AgentSettings` and returning an engine::

    [project.entry-points."porten.engines"]
    echo = "porten_echo:create"

``PORTEN_ENGINE=echo`` then selects it (docs/engines.md has the whole
example). A plugin cannot replace a built-in name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Final

import structlog

from porten.config import ConfigError

if TYPE_CHECKING:
    from porten.agent.engines.base import Engine
    from porten.agent.resources import Resources
    from porten.agent.settings import AgentSettings

log = structlog.get_logger(__name__)

#: The entry-point group third-party engines register in.
PLUGIN_GROUP: Final = "porten.engines"

EngineFactory = Callable[["AgentSettings"], "Engine"]


def _resources() -> Resources:
    from porten.agent.resources import detect

    return detect()


def _builtin(settings: AgentSettings) -> Engine:
    from porten.agent.engines.builtin import BuiltinEngine
    from porten.agent.progress_bar import for_terminal
    from porten.agent.weights.cache import default_disk_budget_mb

    resources = _resources()
    cache_dir = settings.data_dir / "weights"
    return BuiltinEngine(
        cache_dir=cache_dir,
        log_dir=settings.data_dir / "engines",
        resources=resources,
        vram_budget_mb=resources.budget_mb(settings.vram_budget_mb),
        disk_budget_mb=settings.disk_budget_mb or default_disk_budget_mb(cache_dir),
        server=settings.llama_server,
        bars=for_terminal(),
    )


def _ollama(settings: AgentSettings) -> Engine:
    from porten.agent.engines.ollama_engine import DEFAULT_URL, OllamaEngine

    resources = _resources()
    return OllamaEngine(
        settings.engine_url or DEFAULT_URL,
        models=settings.engine_models,
        vram_total_mb=resources.vram_total_mb,
        vram_budget_mb=resources.budget_mb(settings.vram_budget_mb),
        disk_budget_mb=settings.disk_budget_mb,
    )


def _openai(settings: AgentSettings) -> Engine:
    from porten.agent.engines.openai_engine import OpenAIEngine

    if not settings.engine_url:
        raise ConfigError("PORTEN_ENGINE=openai needs PORTEN_ENGINE_URL (the endpoint's base URL)")
    resources = _resources()
    return OpenAIEngine(
        settings.engine_url,
        models=settings.engine_models,
        vram_total_mb=resources.vram_total_mb,
        vram_budget_mb=resources.budget_mb(settings.vram_budget_mb),
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


#: The engines that ship with Porten: ``PORTEN_ENGINE`` value → factory.
FACTORIES: Final[Mapping[str, EngineFactory]] = {
    "builtin": _builtin,
    "ollama": _ollama,
    "openai": _openai,
    "sim": _sim,
}


def plugins() -> dict[str, EntryPoint]:
    """Engines installed as plugins (``porten.engines`` entry points), by name."""
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=PLUGIN_GROUP):
        if point.name in FACTORIES:
            log.warning("ignoring a plugin engine that reuses a built-in name",
                        name=point.name, value=point.value)
            continue
        found.setdefault(point.name, point)
    return found


def available() -> list[str]:
    """Every engine name ``PORTEN_ENGINE`` accepts here, sorted."""
    return sorted({*FACTORIES, *plugins()})


def create_engine(settings: AgentSettings) -> Engine:
    """The engine ``settings.engine`` names; :class:`ConfigError` if there is none by that name."""
    from porten.agent.engines.base import Engine

    factory = FACTORIES.get(settings.engine)
    if factory is None:
        point = plugins().get(settings.engine)
        if point is None:
            raise ConfigError(
                f"PORTEN_ENGINE={settings.engine!r} is not an engine here; "
                f"choose one of: {', '.join(available())}"
            )
        factory = _load_plugin(point)
    engine = factory(settings)
    if not isinstance(engine, Engine):
        raise ConfigError(
            f"the {settings.engine!r} engine plugin returned a {type(engine).__name__}, "
            "which does not implement porten.agent.engines.base.Engine"
        )
    return engine


def _load_plugin(point: EntryPoint) -> EngineFactory:
    try:
        factory = point.load()
    except Exception as exc:  # a broken plugin must say which and why, not crash obscurely
        raise ConfigError(
            f"the {point.name!r} engine plugin ({point.value}) cannot be loaded: {exc}"
        ) from exc
    if not callable(factory):
        raise ConfigError(f"the {point.name!r} engine plugin ({point.value}) is not callable")
    return factory  # type: ignore[no-any-return]
