"""Shared fixtures: a real Postgres for the whole run, a fresh database per test, a real Redis.

The server is the embedded one (the product's own default) unless
``PORTEN_TEST_DATABASE_URL`` points at another server, whose user must be
allowed to create databases.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from porten.adapters.postgres.embedded import EmbeddedPostgres
from redis_server import RedisServer

# Stand-ins for third-party programs (llama-server, nvidia-smi, systemctl), shared by every level.
sys.path.insert(0, str(Path(__file__).parent / "standins"))


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a database on a running Postgres server, for creating test databases."""
    external = os.environ.get("PORTEN_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "postgres")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def new_database(postgres_admin_url: str) -> Iterator[Callable[[], str]]:
    """A function that creates an empty database and returns its URL; all dropped after."""
    names: list[str] = []

    def create() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        return _with_database(postgres_admin_url, name)

    try:
        yield create
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(new_database: Callable[[], str]) -> str:
    """URL of a new, empty database that is dropped after the test."""
    return new_database()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh porten data directory."""
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server on 127.0.0.1 for the whole run."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_session: RedisServer) -> str:
    """URL of the shared redis-server, emptied for this test."""
    redis_session.flush()
    return redis_session.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may stop (a Redis outage)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
