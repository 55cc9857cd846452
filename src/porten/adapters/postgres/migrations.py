"""Versioned SQL migrations for the event store, applied at start-up.

Each ``NNNN_name.sql`` in :func:`migrations_dir` runs once, in version order,
in its own transaction together with the row that records it in
``porten_schema_migrations``. Postgres DDL is transactional, so a migration
that fails halfway leaves no trace: not its tables, not its record. Every
transaction first takes a transaction-scoped advisory lock, so two hubs
starting at once apply each migration exactly once between them.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final, NamedTuple

import psycopg
import structlog

from porten.adapters.postgres.connect import AsyncConn, connect

log = structlog.get_logger(__name__)

#: Key of the advisory lock that serialises migrations across processes ("porten" in ASCII).
_LOCK_KEY: Final = 0x706F7274656E
_FILE_NAME: Final = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")

_CREATE_LEDGER: Final = b"""
CREATE TABLE IF NOT EXISTS porten_schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationFailed(Exception):
    """A migration could not be applied; none of it was, and the message says what to do."""


class Migration(NamedTuple):
    """One SQL file: its version (the ``NNNN`` prefix) and its name (the file stem)."""

    version: int
    name: str
    source: Traversable


def migrations_dir() -> Traversable:
    """Where the SQL files are: inside the installed wheel, else the checkout's ``event_store/``."""
    packaged = resources.files("porten") / "_event_store"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[4] / "event_store"


def discover(directory: Traversable) -> list[Migration]:
    """The migrations in ``directory``, by version; a duplicate version is an error."""
    found: dict[int, Migration] = {}
    for entry in directory.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationFailed(
                f"two migrations claim version {version}: {found[version].name}.sql and "
                f"{entry.name} in {directory}; give each file its own number."
            )
        found[version] = Migration(version, entry.name.removesuffix(".sql"), entry)
    return [found[v] for v in sorted(found)]


async def migrate(target: str | AsyncConn, *, directory: Traversable | None = None) -> list[str]:
    """Apply every migration not yet recorded; return the names of those applied now.

    ``target`` is a database URL or an open connection that is not inside a
    transaction (each migration needs a transaction of its own).
    """
    migrations = discover(directory if directory is not None else migrations_dir())
    if isinstance(target, str):
        conn = await connect(target)
        try:
            return await _apply_all(conn, migrations)
        finally:
            await conn.close()
    if target.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ValueError("migrate() needs a connection that is not inside a transaction")
    return await _apply_all(target, migrations)


async def _apply_all(conn: AsyncConn, migrations: list[Migration]) -> list[str]:
    applied_now = [m.name for m in migrations if await _apply(conn, m)]
    if applied_now:
        log.info("migrations applied", migrations=applied_now)
    return applied_now


async def _apply(conn: AsyncConn, migration: Migration) -> bool:
    """Apply one migration unless it is recorded; False if it already was."""
    sql = migration.source.read_bytes()
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            await conn.execute(_CREATE_LEDGER)
            cur = await conn.execute(
                "SELECT 1 FROM porten_schema_migrations WHERE version = %s",
                (migration.version,),
            )
            if await cur.fetchone() is not None:
                return False
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO porten_schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
    except psycopg.Error as exc:
        raise _failure(migration, exc) from exc
    log.info("migration applied", migration=migration.name)
    return True


def _failure(migration: Migration, exc: psycopg.Error) -> MigrationFailed:
    problem = str(exc).strip().replace("\n", " ")
    return MigrationFailed(
        f"migration {migration.name}.sql failed: {problem}. Nothing of this migration "
        "was applied (its transaction was rolled back) and it is not recorded as applied; "
        "migrations before it stay applied. Fix the cause (that error, or the file if it "
        "was edited), then start porten again to retry it."
    )
