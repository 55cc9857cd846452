"""The composition root: the one place that wires adapters to services.

Everything a running hub holds is built here, in dependency order, and torn
down in reverse: the data-dir lock, the database (embedded or external), the
event store, the group-committing writer, and the projection that keeps the
folded fleet state current. Commands and tests get a :class:`Hub` and never
construct adapters themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import attrs
import structlog

from porten.adapters.agent_gateway import AgentGateway, GatewayDeps
from porten.adapters.data_dir import HubLock
from porten.adapters.postgres.embedded import EmbeddedPostgres
from porten.adapters.postgres.event_store import PostgresEventStore
from porten.config import Settings, redact_url
from porten.services.credentials import load_server_secret
from porten.services.projection import FleetProjection
from porten.services.writer import BatchingWriter

log = structlog.get_logger(__name__)


@contextlib.asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[str]:
    """Yield the database URL: ``settings.database_url`` or the embedded server's.

    The embedded server is started (or joined, if another porten process on
    the same data dir already runs it) and let go of on exit.
    """
    if settings.database_url is not None:
        yield settings.database_url
        return
    server = EmbeddedPostgres(settings.pgdata)
    url = await asyncio.to_thread(server.start)
    try:
        yield url
    finally:
        await asyncio.to_thread(server.stop)


@contextlib.asynccontextmanager
async def open_event_store(settings: Settings) -> AsyncIterator[PostgresEventStore]:
    """Yield the migrated Postgres event store named by ``settings``."""
    async with open_database(settings) as url:
        store = await PostgresEventStore.open(url)
        try:
            yield store
        finally:
            await store.aclose()


def describe_database(settings: Settings) -> str:
    """Where the event log lives, in words safe to print (no password)."""
    if settings.database_url is None:
        return f"embedded Postgres in {settings.pgdata}"
    return redact_url(settings.database_url)


@attrs.define
class Hub:
    """A running hub's long-lived parts."""

    settings: Settings
    store: PostgresEventStore
    writer: BatchingWriter
    projection: FleetProjection
    gateway: AgentGateway
    server_secret: bytes = attrs.field(repr=False)


@contextlib.asynccontextmanager
async def running_hub(settings: Settings) -> AsyncIterator[Hub]:
    """Start the hub's parts and stop them cleanly, flushing every queued event."""
    lock = HubLock(settings.data_dir)
    if settings.embedded:
        lock.acquire()  # one hub per embedded data dir
    try:
        async with open_event_store(settings) as store:
            writer = BatchingWriter(store)
            await writer.start()
            projection = FleetProjection(store, snapshot_every=settings.snapshot_every)
            await projection.catch_up()
            follower = asyncio.create_task(projection.follow(), name="projection-follow")
            secret = load_server_secret(settings.data_dir, settings.secret)
            gateway = AgentGateway(
                GatewayDeps(
                    state=lambda: projection.state,
                    append=writer.append,
                    submit=writer.submit,
                    clock=time.time,
                    new_id=lambda: uuid.uuid4().hex,
                    server_secret=secret,
                )
            )
            hub = Hub(
                settings=settings,
                store=store,
                writer=writer,
                projection=projection,
                gateway=gateway,
                server_secret=secret,
            )
            try:
                yield hub
            finally:
                await gateway.aclose()
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
                await writer.aclose()
    finally:
        lock.release()
