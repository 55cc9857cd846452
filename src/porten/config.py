"""The one configuration object, read from ``PORTEN_*`` variables and command-line flags.

Flags win over the environment, the environment over defaults. Every
command reads the same object, so "where is the data" has one answer:
``--data-dir``/``PORTEN_DATA_DIR`` (default: the per-user XDG data dir) and
``--database-url``/``PORTEN_DATABASE_URL`` (default: the embedded Postgres
kept under the data dir).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import attrs
import platformdirs

LogFormat = Literal["auto", "json", "console"]


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/porten`` (``~/.local/share/porten`` on Linux)."""
    return platformdirs.user_data_path("porten", appauthor=False)


class ConfigError(ValueError):
    """A setting has a value porten cannot use; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None


@attrs.frozen(kw_only=True)
class Settings:
    """Everything a porten process is configured with."""

    data_dir: Path = attrs.field(factory=default_data_dir)
    database_url: str | None = None
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    log_format: LogFormat = "auto"
    #: Save a state snapshot after this many new events.
    snapshot_every: int = 10_000
    #: Total time a /v1 request may take (to its last byte) before it ends with a 504.
    request_timeout_s: float = 600.0
    #: Largest request body accepted (inline images make chat bodies large).
    max_body_mb: int = 32
    #: How long a request may wait for a cold model to load before 503 ``model_warming``.
    warmup_budget_s: float = 300.0
    #: A model idle this long on a provisionable node is unloaded (its weights stay on disk).
    idle_unload_s: float = 600.0
    #: Seconds between planning rounds (demand changes also trigger one).
    plan_every_s: float = 60.0
    #: Length of a demand-measurement window.
    demand_window_s: float = 60.0
    #: How long usage events may wait to share a transaction (awaited appends never wait).
    event_linger_ms: int = 50
    #: HMAC secret for API keys and node credentials (else ``<data_dir>/secret``).
    secret: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Settings from ``env`` (default ``os.environ``), then non-None ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if env.get("PORTEN_DATA_DIR"):
            values["data_dir"] = Path(env["PORTEN_DATA_DIR"]).expanduser()
        values["database_url"] = env.get("PORTEN_DATABASE_URL") or None
        values["redis_url"] = env.get("PORTEN_REDIS_URL") or None
        values["host"] = env.get("PORTEN_HOST") or "127.0.0.1"
        values["port"] = _int(env, "PORTEN_PORT", 8080)
        values["log_level"] = env.get("PORTEN_LOG_LEVEL") or "info"
        fmt = env.get("PORTEN_LOG_FORMAT") or "auto"
        if fmt not in ("auto", "json", "console"):
            raise ConfigError(f"PORTEN_LOG_FORMAT={fmt!r} must be auto, json or console")
        values["log_format"] = fmt
        values["snapshot_every"] = _int(env, "PORTEN_SNAPSHOT_EVERY", 10_000)
        values["request_timeout_s"] = float(_int(env, "PORTEN_REQUEST_TIMEOUT_S", 600))
        values["max_body_mb"] = _int(env, "PORTEN_MAX_BODY_MB", 32)
        values["warmup_budget_s"] = float(_int(env, "PORTEN_WARMUP_BUDGET_S", 300))
        values["idle_unload_s"] = float(_int(env, "PORTEN_IDLE_UNLOAD_S", 600))
        values["plan_every_s"] = float(_int(env, "PORTEN_PLAN_EVERY_S", 60))
        values["demand_window_s"] = float(_int(env, "PORTEN_DEMAND_WINDOW_S", 60))
        values["event_linger_ms"] = _int(env, "PORTEN_EVENT_LINGER_MS", 50)
        values["secret"] = env.get("PORTEN_SECRET") or None
        for name, value in overrides.items():
            if value is not None:
                values[name] = Path(value).expanduser() if name == "data_dir" else value
        return cls(**values)

    @property
    def embedded(self) -> bool:
        """Whether this process runs (or shares) the embedded Postgres."""
        return self.database_url is None

    @property
    def pgdata(self) -> Path:
        """Where the embedded Postgres keeps its cluster."""
        return self.data_dir / "postgres"


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe for logs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable database url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
