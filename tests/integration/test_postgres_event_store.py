"""The Postgres event store on a real server: order under concurrency, migrations, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from porten.adapters.postgres.connect import DatabaseUnreachable, connect
from porten.adapters.postgres.event_store import PostgresEventStore
from porten.adapters.postgres.migrations import MigrationFailed, migrate
from porten.domain import events as ev
from porten.domain.codec import UndecodableEvent, encode_event
from porten.domain.ports import RecordedEvent

pytestmark = pytest.mark.postgres

WRITERS = 8
APPENDS_PER_WRITER = 40
EVENTS_PER_APPEND = 3


def served(writer: int, n: int) -> ev.RequestServed:
    return ev.RequestServed(
        at=1000.0 + n,
        actor="hub",
        correlation_id=f"w{writer}-{n}",
        request_id=f"r-{writer}-{n}",
        model_id="m1",
        node_id="n1",
        key_id="k1",
        prompt_tokens=10,
        completion_tokens=20,
    )


async def _appender(url: str, writer: int) -> None:
    store = await PostgresEventStore.open(url)
    try:
        for i in range(APPENDS_PER_WRITER):
            base = i * EVENTS_PER_APPEND
            await store.append([served(writer, base + k) for k in range(EVENTS_PER_APPEND)])
    finally:
        await store.aclose()


async def _follow(url: str, total: int) -> list[RecordedEvent]:
    """Tail the log the way a hub's projection does, checking each page starts where it left off."""
    store = await PostgresEventStore.open(url)
    seen: list[RecordedEvent] = []
    try:
        while len(seen) < total:
            page = await store.read(len(seen), 50)
            expected = list(range(len(seen) + 1, len(seen) + 1 + len(page)))
            assert [r.position for r in page] == expected, "a follower saw a gap"
            seen += page
            if not page:
                assert await store.wait_for_append(len(seen), timeout=10), "no wake-up"
    finally:
        await store.aclose()
    return seen


async def test_concurrent_writers_give_one_gapless_order(database_url: str) -> None:
    """8 processes' worth of writers at once: a tailing follower sees each event once, no gaps."""
    await migrate(database_url)
    total = WRITERS * APPENDS_PER_WRITER * EVENTS_PER_APPEND
    follower = asyncio.create_task(_follow(database_url, total))
    await asyncio.gather(*(_appender(database_url, w) for w in range(WRITERS)))
    seen = await asyncio.wait_for(follower, timeout=60)

    assert [r.position for r in seen] == list(range(1, total + 1))
    ids = [r.event.correlation_id for r in seen]
    assert len(set(ids)) == total
    for w in range(WRITERS):  # each writer's events appear in the order it wrote them
        mine = [int(i.split("-")[1]) for i in ids if i.startswith(f"w{w}-")]
        assert mine == list(range(APPENDS_PER_WRITER * EVENTS_PER_APPEND))


async def test_migrations_are_idempotent(database_url: str) -> None:
    """A second migrate applies nothing; the ledger lists each migration once."""
    first = await migrate(database_url)
    assert first[:2] == ["0001_events", "0002_snapshots"]
    assert await migrate(database_url) == []
    async with await connect(database_url) as conn:
        cur = await conn.execute("SELECT version FROM porten_schema_migrations ORDER BY version")
        assert [v for (v,) in await cur.fetchall()] == list(range(1, len(first) + 1))


async def test_concurrent_migrations_apply_each_once(database_url: str) -> None:
    """Two hubs starting at once: the advisory lock lets exactly one apply each file."""
    results = await asyncio.gather(migrate(database_url), migrate(database_url))
    # Each migration is its own locked transaction, so the two may share the work: what
    # matters is that every migration was applied once, by one of them.
    assert sorted(results[0] + results[1]) == ["0001_events", "0002_snapshots",
                                               "0003_usage_index"]


async def test_failed_migration_leaves_nothing_applied(database_url: str, tmp_path: Path) -> None:
    """A migration failing halfway rolls back whole, is not recorded, and is named in the error."""
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE first_table (id int);")
    (tmp_path / "0002_broken.sql").write_text(
        "CREATE TABLE half_made (id int);\nINSERT INTO half_made VALUES (1 / 0);"
    )
    with pytest.raises(MigrationFailed) as caught:
        await migrate(database_url, directory=tmp_path)
    message = str(caught.value)
    assert "0002_broken.sql" in message
    assert "division by zero" in message
    assert "Nothing of this migration was applied" in message

    async with await connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT to_regclass('first_table') IS NOT NULL, to_regclass('half_made') IS NOT NULL"
        )
        assert await cur.fetchone() == (True, False)
        cur = await conn.execute("SELECT name FROM porten_schema_migrations")
        assert await cur.fetchall() == [("0001_first",)]

    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE half_made (id int);")
    assert await migrate(database_url, directory=tmp_path) == ["0002_broken"]


async def test_unreachable_database_is_named_without_its_password() -> None:
    """Nothing listening: DatabaseUnreachable names the host and port, never the password."""
    url = "postgresql://porten:s3cret-pw@127.0.0.1:1/porten"
    with pytest.raises(DatabaseUnreachable) as caught:
        await PostgresEventStore.open(url)
    message = str(caught.value)
    assert "postgresql://porten:***@127.0.0.1:1/porten" in message
    assert "s3cret-pw" not in message
    assert "s3cret-pw" not in repr(caught.value.__cause__)


async def test_unknown_event_type_stops_reads_naming_its_position(database_url: str) -> None:
    """A row this version cannot decode raises UndecodableEvent at its position, never skipped."""
    store = await PostgresEventStore.open(database_url)
    try:
        await store.append([served(0, 0), served(0, 1)])
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO porten_events (position, stream, version, type, at, data) "
                "VALUES (3, 'x-1', 0, 'teleported', now(), '{\"type\": \"teleported\"}')"
            )
        assert len(await store.read(0, 2)) == 2
        with pytest.raises(UndecodableEvent) as caught:
            await store.read()
        assert caught.value.position == 3
        assert "position 3" in str(caught.value)
        with pytest.raises(UndecodableEvent) as caught:
            await store.read_events(1, 10)
        assert caught.value.position == 3
        raw = await store.read_raw(2, 10)
        assert [(r.position, r.type) for r in raw] == [(3, "teleported")]
    finally:
        await store.aclose()


async def test_read_filtered_by_type_stream_and_time(database_url: str) -> None:
    """Type filters take exact tags and prefixes; stream and time windows combine with them."""
    store = await PostgresEventStore.open(database_url)
    try:
        await store.append(
            [
                ev.NodeEnrolled(at=10.0, actor="op", node_id="a", owner_id="u"),
                ev.NodeConnected(at=20.0, actor="node:a", node_id="a", session_id="s"),
                ev.NodeEnrolled(at=30.0, actor="op", node_id="b", owner_id="u"),
                served(0, 0),
            ]
        )
        by_prefix = await store.read_filtered(types=["node_"])
        assert [r.position for r in by_prefix] == [1, 2, 3]
        exact = await store.read_filtered(types=["node_enrolled", "request_served"])
        assert [r.position for r in exact] == [1, 3, 4]
        window = await store.read_filtered(since=20.0, until=30.0)
        assert [r.position for r in window] == [2]
        stream = await store.read_filtered(streams=["node-b"], after=1, limit=5)
        assert [r.position for r in stream] == [3]
    finally:
        await store.aclose()


async def test_import_raw_validates_then_appends_in_order(database_url: str) -> None:
    """import_raw appends exported JSON in order; one undecodable row aborts it all."""
    store = await PostgresEventStore.open(database_url)
    try:
        rows = [encode_event(served(1, n)) for n in range(5)]
        with pytest.raises(UndecodableEvent):
            await store.import_raw([*rows[:2], b'{"type": "teleported"}'])
        assert await store.head() == 0
        assert await store.import_raw(rows) == 5
        assert [r.event for r in await store.read()] == [served(1, n) for n in range(5)]
    finally:
        await store.aclose()
