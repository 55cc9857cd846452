"""The batching writer and the fleet projection on a real Postgres log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from porten.adapters.memory_store import InMemoryEventStore
from porten.adapters.postgres.event_store import EventRejected, PostgresEventStore
from porten.domain import events as ev
from porten.domain.fold import fold
from porten.domain.ports import NO_STREAM, AppendRequest, Snapshot, WrongExpectedVersion
from porten.domain.snapshot import STATE_SCHEMA
from porten.domain.values import CatalogEntry
from porten.services.projection import FleetProjection, state_at
from porten.services.writer import BatchingWriter, WriterClosed

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PostgresEventStore]:
    """A migrated, empty Postgres event store."""
    pg = await PostgresEventStore.open(database_url)
    try:
        yield pg
    finally:
        await pg.aclose()


def history(nodes: int, requests: int) -> list[ev.AnyEvent]:
    """A small fleet's life: a model, enrolled and connected nodes, a load, served requests."""
    events: list[ev.AnyEvent] = [
        ev.ModelOffered(at=1.0, actor="op", model=CatalogEntry(id="m1", vram_mb=4000, disk_mb=3000))
    ]
    for n in range(nodes):
        node = f"n{n}"
        events += [
            ev.NodeEnrolled(at=2.0, actor="op", node_id=node, owner_id="u1"),
            ev.NodeConnected(at=3.0, actor=f"node:{node}", node_id=node, session_id="s1"),
            ev.ModelLoaded(at=4.0, actor=f"node:{node}", node_id=node, model_id="m1"),
        ]
    events += [served(i, node=f"n{i % nodes}", at=10.0 + i) for i in range(requests)]
    return events


def served(i: int, *, node: str = "n0", at: float = 10.0) -> ev.RequestServed:
    return ev.RequestServed(
        at=at,
        actor="hub",
        request_id=f"r{i}",
        model_id="m1",
        node_id=node,
        key_id="k1",
        prompt_tokens=10,
        completion_tokens=i,
    )


async def test_concurrent_appends_are_group_committed(store: PostgresEventStore) -> None:
    """Many callers appending at once share transactions, and each gets its own position."""
    async with BatchingWriter(store) as writer:

        async def caller(c: int) -> list[int]:
            return [await writer.append([served(c * 100 + i)]) for i in range(10)]

        positions = await asyncio.gather(*(caller(c) for c in range(20)))
    flat = sorted(p for ps in positions for p in ps)
    assert flat == list(range(1, 201))
    assert writer.transactions < 200 / 4, writer.transactions
    by_position = {r.position: r.event for r in await store.read()}
    assert all(
        by_position[p] == served(c * 100 + i)
        for c, ps in enumerate(positions)
        for i, p in enumerate(ps)
    )


async def test_a_conflict_fails_only_its_own_append(store: PostgresEventStore) -> None:
    """Two appends expecting a new stream in one batch: the second raises, the rest commit."""
    enrol = ev.NodeEnrolled(at=1.0, actor="op", node_id="n1", owner_id="u1")
    async with BatchingWriter(store) as writer:
        results = await asyncio.gather(
            writer.append([enrol], expected={"node-n1": NO_STREAM}),
            writer.append([enrol], expected={"node-n1": NO_STREAM}),
            writer.append([served(1)]),
            return_exceptions=True,
        )
    assert results[0] == 1
    assert isinstance(results[1], WrongExpectedVersion)
    assert results[2] == 2
    assert await store.head() == 2


async def test_submitted_events_all_arrive_in_order(store: PostgresEventStore) -> None:
    """Submits are all written, in order, each transaction taking up to max_batch queued."""
    async with BatchingWriter(store, max_batch=64) as writer:
        for i in range(500):
            writer.submit([served(i)])
        await writer.flush()
        assert await store.head() == 500
    assert [r.event for r in await store.read()] == [served(i) for i in range(500)]
    assert writer.transactions == 8  # ceil(500 / 64): submit never yields, so all were queued


async def test_aclose_drains_the_queue(store: PostgresEventStore) -> None:
    """Closing writes everything still queued; submits after that are refused."""
    writer = BatchingWriter(store)
    await writer.start()
    for i in range(300):
        writer.submit([served(i)])
    await writer.aclose()
    assert await store.head() == 300
    with pytest.raises(WriterClosed):
        writer.submit([served(0)])


async def test_refused_append_fails_alone(store: PostgresEventStore) -> None:
    """Content the database refuses (a NUL in jsonb) fails its own append; neighbours commit."""
    bad = ev.KeyRevoked(at=1.0, actor="op", key_id="k1", reason="nul \x00 here")
    async with BatchingWriter(store) as writer:
        writer.submit([served(1)])
        results = await asyncio.gather(
            writer.append([bad]), writer.append([served(2)]), return_exceptions=True
        )
        writer.submit([served(3)])
        await writer.flush()
    assert isinstance(results[0], EventRejected)
    assert [r.event for r in await store.read()] == [served(1), served(2), served(3)]


class FlakyStore(InMemoryEventStore):
    """An in-memory log whose first ``failures`` group commits fail as if the database were away."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def append_many(
        self, requests: Sequence[AppendRequest]
    ) -> list[int | WrongExpectedVersion]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database restarting")
        return await super().append_many(requests)


async def test_submit_retries_until_the_store_is_back() -> None:
    """While the store fails, submitted events wait and retry; none is lost or reordered."""
    flaky = FlakyStore(failures=3)
    async with BatchingWriter(flaky, retry_initial_s=0.001) as writer:
        for i in range(20):
            writer.submit([served(i)])
        await writer.flush()
    assert writer.retries == 3
    assert [r.event for r in await flaky.read()] == [served(i) for i in range(20)]


async def test_aclose_can_give_up_on_a_store_that_never_returns() -> None:
    """With give_up_after, closing stops retrying a dead store and returns."""
    dead = FlakyStore(failures=10**9)
    writer = BatchingWriter(dead, retry_initial_s=0.001, retry_max_s=0.01)
    await writer.start()
    writer.submit([served(1)])
    await writer.aclose(give_up_after=0.1)
    assert writer.pending == 1
    assert await dead.head() == 0


async def test_restart_resumes_from_the_snapshot(database_url: str) -> None:
    """A new projection loads the snapshot, folds only the tail, and equals the full fold."""
    first = await PostgresEventStore.open(database_url)
    try:
        await first.append(history(nodes=5, requests=240))
        projection = FleetProjection(first, snapshot_every=100)
        assert await projection.catch_up() == 256
        snapshot = await first.latest_snapshot(STATE_SCHEMA)
        assert snapshot is not None
        assert snapshot.position == 256
        await first.append([served(1000 + i, at=500.0) for i in range(30)])
    finally:
        await first.aclose()

    second = await PostgresEventStore.open(database_url)
    try:
        restarted = FleetProjection(second, snapshot_every=100)
        assert await restarted.catch_up() == 286
        assert (restarted.snapshot_position, restarted.tail_folded) == (256, 30)
        everything = [r.event for r in await second.read()]
        assert restarted.state == fold(everything)
    finally:
        await second.aclose()


async def test_unreadable_snapshot_means_folding_from_zero(store: PostgresEventStore) -> None:
    """A snapshot that does not decode is ignored: the whole log is folded instead."""
    await store.append(history(nodes=2, requests=10))
    await store.save_snapshot(Snapshot(position=5, schema=STATE_SCHEMA, data=b"\xc1garbage"))
    projection = FleetProjection(store)
    await projection.catch_up()
    assert (projection.snapshot_position, projection.tail_folded) == (0, 17)
    assert projection.state == fold([r.event for r in await store.read()])


async def test_follow_folds_new_events_as_they_commit(store: PostgresEventStore) -> None:
    """A following projection picks up each commit without being asked."""
    projection = FleetProjection(store)
    follower = asyncio.create_task(projection.follow())
    try:
        last = await store.append(history(nodes=1, requests=3))

        async def reached() -> None:
            while projection.position < last:
                await projection.changed()

        await asyncio.wait_for(reached(), timeout=10)
        assert projection.state == fold([r.event for r in await store.read()])
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


async def test_wait_until_gives_read_your_writes(store: PostgresEventStore) -> None:
    """wait_until(p) returns once p is folded, and False if p never comes."""
    projection = FleetProjection(store)
    async with BatchingWriter(store) as writer:
        position = await writer.append(history(nodes=1, requests=2))
    assert await projection.wait_until(position, timeout=5) is True
    assert projection.state.nodes["n0"].requests_served == 2
    assert await projection.wait_until(position + 1, timeout=0.05) is False


async def test_state_at_folds_a_prefix(store: PostgresEventStore) -> None:
    """state_at(position=k) is the fold of the first k events; at= keeps events up to a time."""
    events = history(nodes=3, requests=20)
    await store.append(events)
    for k in (0, 1, 7, 15, len(events)):
        assert await state_at(store, position=k) == fold(events[:k])
    assert await state_at(store) == fold(events)
    assert await state_at(store, at=12.5) == fold(e for e in events if e.at <= 12.5)
