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
from collections import Counter
from collections.abc import AsyncIterator

import attrs
import structlog

from porten.adapters.agent_gateway import AgentGateway, GatewayDeps
from porten.adapters.data_dir import HubLock
from porten.adapters.postgres.embedded import EmbeddedPostgres
from porten.adapters.postgres.event_store import PostgresEventStore
from porten.adapters.redis.limiter import RedisLimiter
from porten.config import Settings, redact_url
from porten.domain.events import NodeDisconnected
from porten.scheduler.plan import PlannerConfig
from porten.services.accounts import Accounts
from porten.services.admin import Admin
from porten.services.admission import Gate
from porten.services.control import ControlLog
from porten.services.credentials import load_server_secret
from porten.services.demand import DemandMeter
from porten.services.keys import Keys
from porten.services.loads import LoadCoordinator
from porten.services.planning import PlannerLoop
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


@attrs.define(eq=False)
class Hub:
    """A running hub's long-lived parts."""

    settings: Settings
    store: PostgresEventStore
    writer: BatchingWriter
    projection: FleetProjection
    gateway: AgentGateway
    demand: DemandMeter
    loads: LoadCoordinator
    planner: PlannerLoop
    #: (node, model) → requests open there right now; busy models are never evicted.
    in_flight: Counter[tuple[str, str]]
    #: Accounts and keys over the log (the portal, the admin API and the CLI share them).
    accounts: Accounts
    keys: Keys
    admin: Admin
    #: Rate limits and budgets (shared through Redis when PORTEN_REDIS_URL is set).
    gate: Gate
    server_secret: bytes = attrs.field(repr=False)

    def busy(self) -> dict[tuple[str, str], int]:
        """A copy of what is busy now."""
        return busy_of(self.in_flight)


def busy_of(in_flight: Counter[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The (node, model) pairs with requests open, and how many."""
    return {k: v for k, v in in_flight.items() if v > 0}


@contextlib.asynccontextmanager
async def running_hub(settings: Settings) -> AsyncIterator[Hub]:
    """Start the hub's parts and stop them cleanly, flushing every queued event."""
    lock = HubLock(settings.data_dir)
    if settings.embedded:
        lock.acquire()  # one hub per embedded data dir
    try:
        async with open_event_store(settings) as store:
            writer = BatchingWriter(store, linger_s=settings.event_linger_ms / 1000)
            await writer.start()
            projection = FleetProjection(store, snapshot_every=settings.snapshot_every)
            await projection.catch_up()
            follower = asyncio.create_task(projection.follow(), name="projection-follow")
            await _forget_stale_connections(projection, writer)
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
            in_flight: Counter[tuple[str, str]] = Counter()

            def busy() -> dict[tuple[str, str], int]:
                return busy_of(in_flight)

            config = PlannerConfig(demand_window_s=settings.idle_unload_s)
            planner = PlannerLoop(
                store=store, writer=writer, projection=projection, gateway=gateway,
                config=config, busy=busy, clock=time.time, cadence_s=settings.plan_every_s,
            )
            demand = DemandMeter(
                writer, time.time, window_s=settings.demand_window_s, on_flush=planner.wake
            )
            loads = LoadCoordinator(
                store=store, writer=writer, projection=projection, gateway=gateway,
                config=config, busy=busy, clock=time.time,
            )
            control = ControlLog(projection=projection, append=writer.append)
            shared = RedisLimiter.from_url(settings.redis_url) if settings.redis_url else None
            gate = Gate(state=lambda: projection.state, clock=time.time, shared=shared,
                        hold_s=settings.request_timeout_s + 60.0)
            hub = Hub(
                settings=settings, store=store, writer=writer, projection=projection,
                gateway=gateway, demand=demand, loads=loads, planner=planner,
                in_flight=in_flight, server_secret=secret,
                accounts=Accounts(log=control, clock=time.time),
                keys=Keys(log=control, server_secret=secret, clock=time.time),
                admin=Admin(log=control, clock=time.time), gate=gate,
            )
            demand.start()
            planner.start()
            try:
                yield hub
            finally:
                await planner.aclose()
                await gateway.aclose()
                await gate.aclose()
                if shared is not None:
                    await shared.aclose()
                await demand.aclose()
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
                await writer.aclose()
    finally:
        lock.release()


async def _forget_stale_connections(projection: FleetProjection, writer: BatchingWriter) -> None:
    """Nodes the log shows online belong to connections a previous hub held; end them.

    A hub that stopped cleanly recorded every disconnect; one that crashed did
    not, and its nodes would otherwise look reachable until they reconnect.
    """
    now = time.time()
    stale = [
        NodeDisconnected(at=now, actor="hub", node_id=n.node_id, session_id=n.session_id,
                         reason="the hub restarted without seeing this connection close")
        for n in sorted(projection.state.nodes.values(), key=lambda n: n.node_id)
        if n.online
    ]
    if stale:
        position = await writer.append(stale)
        await projection.wait_until(position, timeout=30.0)
