"""What every ``porten`` command shares: the data options, output, errors, the event loop."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import msgspec

from porten.config import Settings
from porten.logs import configure_logging

T = TypeVar("T")

_JSON = msgspec.json.Encoder(order="deterministic")


class CommandError(Exception):
    """A failure the user can act on; printed as one line, exit status 1."""


def data_options() -> argparse.ArgumentParser:
    """``--data-dir`` and ``--database-url``, accepted by every command."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("where the data is")
    g.add_argument(
        "--data-dir",
        metavar="DIR",
        help="porten's data directory (env PORTEN_DATA_DIR; default: the per-user data dir)",
    )
    g.add_argument(
        "--database-url",
        metavar="URL",
        help="an external Postgres (env PORTEN_DATABASE_URL; default: the embedded one)",
    )
    g.add_argument(
        "--log-level", metavar="LEVEL", help="debug, info, warning or error (env PORTEN_LOG_LEVEL)"
    )
    return p


def json_option() -> argparse.ArgumentParser:
    """``--json``, accepted by every command that prints data."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", help="print JSON (one document or JSONL)")
    return p


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The one Settings object, from the environment and this command's flags."""
    settings = Settings.from_env(
        data_dir=getattr(args, "data_dir", None),
        database_url=getattr(args, "database_url", None),
        log_level=getattr(args, "log_level", None),
        **overrides,
    )
    configure_logging(settings.log_level, settings.log_format)
    return settings


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop (the standard loop where uvloop is unavailable)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(coro)
    return uvloop.run(coro)


def to_jsonable(obj: Any) -> Any:
    """Plain builtins for any msgspec value (maps, sets and structs included)."""
    import immutables

    def hook(o: Any) -> Any:
        if isinstance(o, immutables.Map):
            return dict(o)
        raise NotImplementedError(type(o).__name__)

    return msgspec.to_builtins(obj, enc_hook=hook, order="deterministic")


def print_json(obj: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.buffer.write(_JSON.encode(to_jsonable(obj)) + b"\n")
    sys.stdout.flush()


def print_jsonl(objs: Iterable[Any]) -> None:
    """One JSON document per line on stdout, flushed as it goes."""
    out = sys.stdout.buffer
    for obj in objs:
        out.write(_JSON.encode(to_jsonable(obj)) + b"\n")
    sys.stdout.flush()
