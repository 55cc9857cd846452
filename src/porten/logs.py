"""Structured logging: JSON lines when stderr is not a terminal, readable colour when it is.

Logs go to stderr so stdout stays for data (``--json`` output, the shell
lines ``porten up`` prints). Request handlers bind ``request_id``, ``node_id``
and ``model`` with :func:`structlog.contextvars.bind_contextvars`, so every
line of a request carries them without passing a logger around.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from porten.config import LogFormat

_SECRET_FIELDS = frozenset(
    {"authorization", "api_key", "password", "secret", "token", "credential"}
)


def _drop_secrets(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Last line of defence: a field named like a secret is never written."""
    for key in list(event_dict):
        if key.lower() in _SECRET_FIELDS:
            event_dict[key] = "***"
    return event_dict


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Configure structlog and route the standard library's logging through it."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO) if numeric < logging.INFO else numeric)
    # aiohttp's access log duplicates our own request log line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
