"""What a node's agent is configured with, from ``PORTEN_*`` variables (and arguments).

The installer bakes these variables into the service unit, so the
environment is the agent's configuration file. Arguments win over the
environment, the environment over defaults, as for the hub's
:class:`porten.config.Settings`. The credential is held but never shown:
it is excluded from ``repr`` so no log line or traceback can carry it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import attrs
import msgspec

from porten.agent.engines.sim import SimProfile
from porten.config import ConfigError, default_data_dir

DEFAULT_HUB_URL: Final = "http://127.0.0.1:8080"
CONNECT_PATH: Final = "/agent/v1/connect"
_WS_SCHEMES: Final = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must not be negative")
    return value


def _models(raw: str) -> tuple[str, ...]:
    """A comma-separated allow-list, trimmed, empty entries dropped, order kept."""
    return tuple(dict.fromkeys(m.strip() for m in raw.split(",") if m.strip()))


def _sim_profile(raw: str) -> SimProfile:
    if not raw.strip():
        return SimProfile()
    try:
        return msgspec.json.decode(raw, type=SimProfile)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"PORTEN_SIM_PROFILE is not a valid sim profile: {exc}") from None


def _hub_url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in _WS_SCHEMES or not parts.netloc:
        raise ConfigError(f"PORTEN_HUB_URL={raw!r} must be an http(s):// or ws(s):// URL")
    return raw.strip().rstrip("/")


@attrs.frozen(kw_only=True)
class AgentSettings:
    """Everything an agent process is configured with."""

    #: The hub's base URL (``http``/``https``/``ws``/``wss``).
    hub_url: str = attrs.field(default=DEFAULT_HUB_URL, converter=_hub_url)
    #: The node credential (``pn-node-…``); never in ``repr``.
    credential: str = attrs.field(default="", repr=False)
    #: Which engine serves: ``builtin``, ``ollama``, ``openai``, ``sim`` or a plugin's name.
    engine: str = "builtin"
    #: The engine's base URL, for engines the agent does not start itself.
    engine_url: str = ""
    #: Models the node may serve (``PORTEN_ENGINE_MODELS``); empty means whatever it reports.
    engine_models: tuple[str, ...] = ()
    #: VRAM the hub may fill; 0 means the detected figure (see :mod:`porten.agent.resources`).
    vram_budget_mb: int = 0
    #: Disk the agent may fill with downloaded weights; 0 means the engine's default.
    disk_budget_mb: int = 0
    #: The llama.cpp server the builtin engine runs (``PORTEN_LLAMA_SERVER``); empty: found.
    llama_server: str = ""
    data_dir: Path = attrs.field(factory=default_data_dir)
    #: Timings of the simulated hardware (``PORTEN_SIM_PROFILE``, JSON), for ``engine=sim``.
    sim_profile: SimProfile = attrs.field(factory=SimProfile)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> AgentSettings:
        """Settings from ``env`` (default ``os.environ``), then the non-None ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "hub_url": env.get("PORTEN_HUB_URL") or DEFAULT_HUB_URL,
            "credential": env.get("PORTEN_NODE_CREDENTIAL", "").strip(),
            "engine": (env.get("PORTEN_ENGINE") or "builtin").strip().lower(),
            "engine_url": env.get("PORTEN_ENGINE_URL", "").strip(),
            "engine_models": _models(env.get("PORTEN_ENGINE_MODELS", "")),
            "vram_budget_mb": _int(env, "PORTEN_VRAM_BUDGET_MB", 0),
            "disk_budget_mb": _int(env, "PORTEN_AUTO_DOWNLOAD_MB", 0),
            "llama_server": env.get("PORTEN_LLAMA_SERVER", "").strip(),
            "sim_profile": _sim_profile(env.get("PORTEN_SIM_PROFILE", "")),
        }
        if env.get("PORTEN_DATA_DIR"):
            values["data_dir"] = Path(env["PORTEN_DATA_DIR"]).expanduser()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def connect_url(self) -> str:
        """The WebSocket URL the agent dials: ``ws(s)://<hub>/agent/v1/connect``."""
        parts = urlsplit(self.hub_url)
        path = parts.path.rstrip("/") + CONNECT_PATH
        return urlunsplit(parts._replace(scheme=_WS_SCHEMES[parts.scheme], path=path))
