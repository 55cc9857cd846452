"""The EventStore contract, run against every adapter: memory and Postgres.

Anything the services rely on (gapless positions, per-stream versions,
all-or-nothing conflicts, group-commit atomicity per request, wake-ups,
snapshots) is pinned here, so a simulation on the in-memory store and a hub
on Postgres cannot drift apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from porten.adapters.memory_store import InMemoryEventStore
from porten.adapters.postgres.event_store import PostgresEventStore
from porten.domain import events as ev
from porten.domain.ports import (
    NO_STREAM,
    AppendRequest,
    EventStore,
    Snapshot,
    WrongExpectedVersion,
)


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[EventStore]:
    """Each adapter in turn, empty."""
    if request.param == "memory":
        yield InMemoryEventStore()
        return
    pg = await PostgresEventStore.open(request.getfixturevalue("database_url"))
    try:
        yield pg
    finally:
        await pg.aclose()


def enrolled(node: str, at: float = 1000.0) -> ev.NodeEnrolled:
    return ev.NodeEnrolled(at=at, actor="user:op", node_id=node, owner_id="u1")


def connected(node: str, session: str, at: float = 1001.0) -> ev.NodeConnected:
    return ev.NodeConnected(at=at, actor=f"node:{node}", node_id=node, session_id=session)


def revoked(key: str) -> ev.KeyRevoked:
    return ev.KeyRevoked(at=1002.0, actor="user:op", key_id=key, reason="test")


async def test_append_then_read_round_trips(store: EventStore) -> None:
    """Appended events read back equal, with stream, version and a recorded time."""
    written: list[ev.AnyEvent] = [enrolled("n1"), connected("n1", "s1"), revoked("k1")]
    last = await store.append(written)
    got = await store.read()
    assert last == 3
    assert [r.event for r in got] == written
    assert [(r.position, r.stream, r.version) for r in got] == [
        (1, "node-n1", 0),
        (2, "node-n1", 1),
        (3, "key-k1", 0),
    ]
    assert all(abs(r.recorded_at - time.time()) < 60 for r in got)


async def test_positions_are_gapless_from_one(store: EventStore) -> None:
    """Positions count 1, 2, 3… across appends of any size; head is the last one."""
    assert await store.head() == 0
    returned = [
        await store.append([connected("n1", f"s{i}") for i in range(size)]) for size in (1, 3, 2, 5)
    ]
    positions = [r.position for r in await store.read()]
    assert positions == list(range(1, 12))
    assert returned == [1, 4, 6, 11]
    assert await store.head() == 11


async def test_versions_count_from_zero_per_stream(store: EventStore) -> None:
    """Each stream's versions are 0, 1, 2… however its events interleave with others."""
    await store.append([enrolled("a"), enrolled("b"), connected("a", "s1")])
    await store.append([connected("b", "s1"), connected("a", "s2")])
    assert [r.version for r in await store.read_stream("node-a")] == [0, 1, 2]
    assert [r.version for r in await store.read_stream("node-b")] == [0, 1]
    assert [r.position for r in await store.read_stream("node-a")] == [1, 3, 5]
    assert await store.stream_version("node-a") == 2
    assert await store.read_stream("node-zz") == []


async def test_conflict_raises_and_writes_nothing(store: EventStore) -> None:
    """A wrong expected version raises, naming the versions, and writes no event at all."""
    await store.append([enrolled("n1"), connected("n1", "s1")])
    with pytest.raises(WrongExpectedVersion) as caught:
        await store.append([connected("n1", "s2"), revoked("k1")], expected={"node-n1": 0})
    assert (caught.value.stream, caught.value.expected, caught.value.actual) == ("node-n1", 0, 1)
    assert await store.head() == 2
    assert len(await store.read_stream("node-n1")) == 2
    assert await store.read_stream("key-k1") == []


async def test_matching_expected_version_appends(store: EventStore) -> None:
    """The stream's current version as expected version lets the append through."""
    await store.append([enrolled("n1")])
    assert await store.append([connected("n1", "s1")], expected={"node-n1": 0}) == 2
    assert await store.stream_version("node-n1") == 1


async def test_no_stream_means_the_stream_must_not_exist(store: EventStore) -> None:
    """NO_STREAM admits the first event of a stream and rejects any later one."""
    assert await store.stream_version("node-n1") == NO_STREAM
    await store.append([enrolled("n1")], expected={"node-n1": NO_STREAM})
    with pytest.raises(WrongExpectedVersion) as caught:
        await store.append([enrolled("n1")], expected={"node-n1": NO_STREAM})
    assert caught.value.actual == 0
    assert await store.head() == 1


async def test_expected_version_on_a_stream_not_written(store: EventStore) -> None:
    """An expectation may guard a stream the append does not write to."""
    await store.append([enrolled("n1")])
    with pytest.raises(WrongExpectedVersion):
        await store.append([revoked("k1")], expected={"node-n1": NO_STREAM})
    assert await store.append([revoked("k1")], expected={"node-n1": 0}) == 2


async def test_append_many_fails_only_the_conflicting_request(store: EventStore) -> None:
    """In a group commit the conflicting request writes nothing and the others commit."""
    await store.append([enrolled("n1")])
    results = await store.append_many(
        [
            AppendRequest(events=(connected("n1", "s1"),), expected={"node-n1": 0}),
            AppendRequest(events=(revoked("k1"), revoked("k2")), expected={"node-n1": 0}),
            # sees the version the first request produced
            AppendRequest(events=(connected("n1", "s2"),), expected={"node-n1": 1}),
            AppendRequest(events=(revoked("k3"),)),
        ]
    )
    assert results[0] == 2
    assert isinstance(results[1], WrongExpectedVersion)
    assert (results[1].expected, results[1].actual) == (0, 1)
    assert results[2:] == [3, 4]
    got = await store.read()
    assert [r.position for r in got] == [1, 2, 3, 4]
    assert [r.stream for r in got] == ["node-n1", "node-n1", "node-n1", "key-k3"]
    assert await store.read_stream("key-k1") == []


async def test_read_pages_by_position(store: EventStore) -> None:
    """read(after, limit) returns the next page; past the head it is empty."""
    await store.append([connected("n1", f"s{i}") for i in range(25)])
    pages = [await store.read(after, 10) for after in (0, 10, 20, 25)]
    assert [[r.position for r in p] for p in pages] == [
        list(range(1, 11)),
        list(range(11, 21)),
        list(range(21, 26)),
        [],
    ]


async def test_read_events_matches_read(store: EventStore) -> None:
    """The fold's bare-event page holds read's events and the last position (or ``after``)."""
    await store.append([connected("n1", f"s{i}") for i in range(12)])
    for after, limit in ((0, 5), (5, 100), (12, 3)):
        page = await store.read(after, limit)
        last = page[-1].position if page else after
        assert await store.read_events(after, limit) == (last, [r.event for r in page])


async def test_wait_for_append_wakes_on_append(store: EventStore) -> None:
    """A waiter blocks while the head is at ``after`` and returns True once it moves."""
    await store.append([enrolled("n1")])
    waiter = asyncio.create_task(store.wait_for_append(1, timeout=30))
    done, _ = await asyncio.wait({waiter}, timeout=0.2)
    assert not done, "returned before anything was appended"
    await store.append([connected("n1", "s1")])
    assert await asyncio.wait_for(waiter, timeout=5) is True


async def test_wait_for_append_returns_at_once_if_already_past(store: EventStore) -> None:
    """A head already past ``after`` returns True without waiting."""
    await store.append([enrolled("n1"), connected("n1", "s1")])
    assert await store.wait_for_append(1, timeout=0) is True


async def test_wait_for_append_times_out(store: EventStore) -> None:
    """With nothing appended the waiter returns False after its timeout."""
    await store.append([enrolled("n1")])
    assert await store.wait_for_append(1, timeout=0.05) is False


async def test_snapshots_are_kept_per_schema(store: EventStore) -> None:
    """latest_snapshot returns the newest of its schema; other schemas are separate."""
    assert await store.latest_snapshot(1) is None
    for position in (5, 9, 7, 12, 20):
        await store.save_snapshot(Snapshot(position=position, schema=1, data=b"s1-%d" % position))
    await store.save_snapshot(Snapshot(position=3, schema=2, data=b"s2"))
    assert await store.latest_snapshot(1) == Snapshot(position=20, schema=1, data=b"s1-20")
    assert await store.latest_snapshot(2) == Snapshot(position=3, schema=2, data=b"s2")
    assert await store.latest_snapshot(3) is None


async def test_saving_a_snapshot_twice_replaces_it(store: EventStore) -> None:
    """A second snapshot at the same position and schema replaces the first."""
    await store.save_snapshot(Snapshot(position=4, schema=1, data=b"old"))
    await store.save_snapshot(Snapshot(position=4, schema=1, data=b"new"))
    assert await store.latest_snapshot(1) == Snapshot(position=4, schema=1, data=b"new")


async def test_stream_version_as_of_a_position(store: EventStore) -> None:
    """stream_version(at=p) is the stream's version counting only events up to position p."""
    await store.append([connected("n1", "s1")])  # position 1, node-n1 v0
    await store.append([connected("n2", "s1")])  # position 2, node-n2 v0
    await store.append([connected("n1", "s2")])  # position 3, node-n1 v1
    assert await store.stream_version("node-n1", at=0) == NO_STREAM
    assert await store.stream_version("node-n1", at=2) == 0
    assert await store.stream_version("node-n1", at=3) == 1
    assert await store.stream_version("node-n1") == 1
