"""The event log in Postgres: the product's implementation of :class:`EventStore`.

Writers serialise on ``LOCK TABLE porten_events IN EXCLUSIVE MODE`` and
number their events ``max(position) + 1, + 2, …`` under it, as
pyeventsourcing's Postgres recorder does. A sequence would hand out numbers
at insert time, and transactions commit in a different order, so a follower
reading ``position > last_seen`` could pass a number whose row commits a
moment later and never see it. Under the lock positions are gapless and
become visible in order. Readers take no lock and are never blocked.

Each append is one transaction: lock; read the head and the touched
streams' versions in one query; one multi-row insert that also sends
``NOTIFY porten_events``; commit. Few round trips keep the lock short, and
``LISTEN`` wakes followers on commit (the payload is only a hint: followers
always read by position). The insert is ``INSERT … SELECT FROM unnest``
rather than ``COPY``: alone, binary COPY moves ~40% more rows per second,
but through the batching writer the two measured the same (encoding and
version lookups dominate), and the INSERT carries the NOTIFY with it
(see ``bench/bench_event_store.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

import msgspec
import psycopg
import structlog
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from porten.adapters.postgres.connect import AsyncConn, Listener, connect, open_pool
from porten.adapters.postgres.migrations import migrate
from porten.domain.codec import decode_event, encode_event
from porten.domain.events import EVENT_TAGS, AnyEvent, stream_of
from porten.domain.ports import (
    NO_STREAM,
    AppendRequest,
    EventStore,
    RecordedEvent,
    Snapshot,
    WrongExpectedVersion,
)

log = structlog.get_logger(__name__)

CHANNEL: Final = "porten_events"
#: Snapshots kept per state schema; older ones are deleted when a new one is saved.
SNAPSHOTS_KEPT: Final = 3
#: Rows per INSERT statement (one statement per append unless it is larger than this).
_INSERT_CHUNK: Final = 10_000

# date_part gives float8 directly (extract's numeric costs a third more server time);
# data::text keeps psycopg from parsing JSON into dicts: msgspec decodes it instead.
_COLUMNS: Final = "position, stream, version, date_part('epoch', recorded_at), data::text"
_LOCK: Final = "LOCK TABLE porten_events IN EXCLUSIVE MODE"
_HEAD: Final = "SELECT coalesce(max(position), 0) FROM porten_events"
# A page as one JSON array (the subquery's order feeds the aggregate without a sort):
# the client decodes it in one msgspec call instead of building a row per event.
_EVENTS_PAGE: Final = """
SELECT max(position), '[' || string_agg(data::text, ',' ORDER BY position) || ']'
FROM (SELECT position, data FROM porten_events WHERE position > %s ORDER BY position LIMIT %s)
    AS page
"""
_EVENT_LIST: Final = msgspec.json.Decoder(list[AnyEvent])
# The head, and each stream's version in input order (NULL for a new stream): one
# backward index probe per stream, whatever its length.
_HEAD_AND_VERSIONS: Final = """
SELECT
    (SELECT coalesce(max(position), 0) FROM porten_events),
    ARRAY(
        SELECT (SELECT max(e.version) FROM porten_events e WHERE e.stream = s.stream)
        FROM unnest(%b::text[]) WITH ORDINALITY AS s(stream, i)
        ORDER BY s.i
    )
"""
# A data-modifying WITH runs to completion even though the SELECT does not read it.
# Arrays go as binary parameters (%b): psycopg quotes text-format arrays in Python,
# which made a 1,000-row insert about four times slower.
_INSERT_AND_NOTIFY: Final = f"""
WITH inserted AS (
    INSERT INTO porten_events (position, stream, version, type, at, data)
    SELECT p, s, v, t, to_timestamp(a), d::jsonb
    FROM unnest(%b::bigint[], %b::text[], %b::bigint[], %b::text[], %b::float8[], %b::text[])
        AS u(p, s, v, t, a, d)
)
SELECT pg_notify('{CHANNEL}', %s)
"""


class EventRejected(ValueError):
    """The database refused these events' content; retrying the same append cannot succeed.

    A ``ValueError`` so that callers which retry (the batching writer) can
    tell "the data is wrong" from "the database is away".
    """


class RawEvent(NamedTuple):
    """A log row as stored, undecoded: for ``porten events list --raw`` and export."""

    position: int
    stream: str
    version: int
    type: str
    recorded_at: float
    data: bytes


class _Row(NamedTuple):
    stream: str
    type: str
    at: float
    data: str


class _Request(NamedTuple):
    rows: list[_Row]
    expected: Mapping[str, int]


class _Columns(NamedTuple):
    """The insert's parameters, one list per column (what ``unnest`` takes)."""

    positions: list[int]
    streams: list[str]
    versions: list[int]
    types: list[str]
    ats: list[float]
    data: list[str]


class PostgresEventStore:
    """The log in one Postgres database; open with :meth:`open`, close with :meth:`aclose`."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConn], url: str) -> None:
        self._pool = pool
        self._listener = Listener(url, CHANNEL)

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 8) -> PostgresEventStore:
        """Connect, apply pending migrations and return a ready store.

        Raises :class:`DatabaseUnreachable` or ``MigrationFailed`` with a
        message that says what to check.
        """
        conn = await connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        return cls(await open_pool(url, max_size=pool_size), url)

    @property
    def pool(self) -> AsyncConnectionPool[AsyncConn]:
        """The connection pool, for read models that query the log with SQL (usage reports)."""
        return self._pool

    async def aclose(self) -> None:
        """Stop listening and close every connection."""
        await self._listener.aclose()
        await self._pool.close()

    # --- writing -------------------------------------------------------------------

    async def append(
        self, events: Sequence[AnyEvent], expected: Mapping[str, int] | None = None
    ) -> int:
        """Append atomically; return the last event's position (see :class:`EventStore`)."""
        [result] = await self._commit([_encode(events, expected or {})])
        if isinstance(result, WrongExpectedVersion):
            raise result
        return result

    async def append_many(
        self, requests: Sequence[AppendRequest]
    ) -> list[int | WrongExpectedVersion]:
        """Commit many appends in one transaction; a conflict fails only its own request."""
        return await self._commit([_encode(r.events, r.expected) for r in requests])

    async def import_raw(self, rows: Iterable[bytes | str]) -> int:
        """Append pre-encoded events (an export's ``data``) in order, in one transaction.

        Each row is decoded first, and one that does not decode aborts the
        import before anything is written (its :class:`UndecodableEvent`
        names the row's number in ``rows`` as the position). Into an empty
        log an export keeps its positions, since both are gapless from 1.
        Returns the new head.
        """
        parsed: list[_Row] = []
        for index, row in enumerate(rows, start=1):
            event = decode_event(row, position=index)
            text = row if isinstance(row, str) else row.decode()
            parsed.append(_Row(stream_of(event), _TAG_OF[type(event)], event.at, text))
        [result] = await self._commit([_Request(parsed, {})])
        assert not isinstance(result, WrongExpectedVersion)
        return result

    async def _commit(self, batch: list[_Request]) -> list[int | WrongExpectedVersion]:
        """One transaction of five short round trips: begin, lock, read the head and
        versions, insert what passed its checks (and notify), commit."""
        streams = sorted(
            {r.stream for req in batch for r in req.rows}.union(*(req.expected for req in batch))
        )
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(_LOCK)
                cur = await conn.execute(_HEAD_AND_VERSIONS, (streams,))
                head, found = await _row(cur)
                versions = {
                    s: NO_STREAM if v is None else v for s, v in zip(streams, found, strict=True)
                }
                results, columns = _assign(batch, head, versions)
                for start in range(0, len(columns.positions), _INSERT_CHUNK):
                    chunk = [col[start : start + _INSERT_CHUNK] for col in columns]
                    await conn.execute(_INSERT_AND_NOTIFY, [*chunk, str(chunk[0][-1])])
        except psycopg.DataError as exc:
            raise EventRejected(f"the database refused the events: {exc}") from exc
        return results

    # --- reading -------------------------------------------------------------------

    async def read(self, after: int = 0, limit: int = 10_000) -> list[RecordedEvent]:
        """Events with ``position > after`` in position order, at most ``limit``."""
        return await self._select(
            f"SELECT {_COLUMNS} FROM porten_events WHERE position > %s ORDER BY position LIMIT %s",
            (after, limit),
        )

    async def read_events(self, after: int = 0, limit: int = 10_000) -> tuple[int, list[AnyEvent]]:
        """The bare events of :meth:`read` and the position of the last one (``after`` if none).

        For folds, which need nothing else: about three times less client
        work than :meth:`read`. A page that does not decode is read again
        with :meth:`read`, whose :class:`UndecodableEvent` names the position.
        """
        async with self._pool.connection() as conn:
            cur = await conn.execute(_EVENTS_PAGE, (after, limit))
            last, text = await _row(cur)
        if last is None:
            return after, []
        try:
            return last, _EVENT_LIST.decode(text)
        except msgspec.DecodeError:
            return last, [r.event for r in await self.read(after, limit)]

    async def read_stream(self, stream: str) -> list[RecordedEvent]:
        """All events of one stream in version order."""
        return await self._select(
            f"SELECT {_COLUMNS} FROM porten_events WHERE stream = %s ORDER BY version",
            (stream,),
        )

    async def read_filtered(
        self,
        after: int = 0,
        limit: int = 1_000,
        *,
        streams: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[RecordedEvent]:
        """Events after ``after`` that pass every filter given, in position order.

        ``types`` holds event tags (``node_enrolled``) matched exactly and, for
        anything that is not a known tag, prefixes (``node_``). ``since`` and
        ``until`` bound the event's own ``at`` (unix seconds, ``until`` exclusive).
        """
        clauses: list[sql.Composable] = [sql.SQL("position > %s")]
        params: list[Any] = [after]
        if streams is not None:
            clauses.append(sql.SQL("stream = ANY(%s)"))
            params.append(list(streams))
        if types is not None:
            exact = [t for t in types if t in EVENT_TAGS]
            prefixes = [_like_prefix(t) for t in types if t not in EVENT_TAGS]
            clauses.append(sql.SQL("(type = ANY(%s) OR type LIKE ANY(%s))"))
            params += [exact, prefixes]
        if since is not None:
            clauses.append(sql.SQL("at >= to_timestamp(%s)"))
            params.append(since)
        if until is not None:
            clauses.append(sql.SQL("at < to_timestamp(%s)"))
            params.append(until)
        query = sql.SQL("SELECT {} FROM porten_events WHERE {} ORDER BY position LIMIT %s").format(
            sql.SQL(_COLUMNS), sql.SQL(" AND ").join(clauses)
        )
        return await self._select(query, (*params, limit))

    async def read_raw(self, after: int = 0, limit: int = 10_000) -> list[RawEvent]:
        """Rows after ``after`` as stored, without decoding (so undecodable ones show too)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT position, stream, version, type, date_part('epoch', recorded_at), "
                "data::text FROM porten_events WHERE position > %s ORDER BY position LIMIT %s",
                (after, limit),
            )
            rows = await cur.fetchall()
        return [RawEvent(p, s, v, t, r, d.encode()) for p, s, v, t, r, d in rows]

    async def stream_version(self, stream: str, at: int | None = None) -> int:
        """The stream's version (as of log position ``at``, if given), or :data:`NO_STREAM`."""
        if at is None:
            version = await self._scalar(
                "SELECT max(version) FROM porten_events WHERE stream = %s", (stream,)
            )
        else:
            version = await self._scalar(
                "SELECT max(version) FROM porten_events WHERE stream = %s AND position <= %s",
                (stream, at),
            )
        return NO_STREAM if version is None else int(version)

    async def head(self) -> int:
        """The position of the newest committed event (0 for an empty log)."""
        return int(await self._scalar(_HEAD))

    async def wait_for_append(self, after: int, timeout: float) -> bool:  # noqa: ASYNC109 (the port's signature)
        """True as soon as the head is past ``after``, False once ``timeout`` passes."""
        self._listener.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # Taken before reading the head: a commit after the read still sets it.
            wakeup = self._listener.wakeup
            if await self.head() > after:
                return True
            try:
                async with asyncio.timeout_at(deadline):
                    await wakeup.wait()
            except TimeoutError:
                return await self.head() > after

    async def _scalar(self, query: str, params: Sequence[Any] = ()) -> Any:
        async with self._pool.connection() as conn:
            cur = await conn.execute(query, params)
            return (await _row(cur))[0]

    async def _select(
        self, query: sql.Composable | str, params: Sequence[Any]
    ) -> list[RecordedEvent]:
        async with self._pool.connection() as conn:
            # Binary results: integers and floats arrive without text parsing.
            cur = conn.cursor(binary=True)
            await cur.execute(query, params)  # type: ignore[arg-type]
            rows = await cur.fetchall()
        return [
            RecordedEvent(
                position=p,
                stream=s,
                version=v,
                recorded_at=r,
                event=decode_event(d, position=p),
            )
            for p, s, v, r, d in rows
        ]

    # --- snapshots -----------------------------------------------------------------

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot``; only the newest :data:`SNAPSHOTS_KEPT` of its schema survive."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO porten_snapshots (position, schema, data) VALUES (%s, %s, %s) "
                "ON CONFLICT (schema, position) DO UPDATE "
                "SET data = EXCLUDED.data, created_at = now()",
                (snapshot.position, snapshot.schema, snapshot.data),
            )
            await conn.execute(
                "DELETE FROM porten_snapshots WHERE schema = %s AND position < ("
                "  SELECT position FROM porten_snapshots WHERE schema = %s"
                "  ORDER BY position DESC OFFSET %s LIMIT 1)",
                (snapshot.schema, snapshot.schema, SNAPSHOTS_KEPT - 1),
            )

    async def latest_snapshot(self, schema: int) -> Snapshot | None:
        """The newest snapshot written with this state ``schema``, if any."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT position, data FROM porten_snapshots WHERE schema = %s "
                "ORDER BY position DESC LIMIT 1",
                (schema,),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return Snapshot(position=row[0], schema=schema, data=bytes(row[1]))


_: type[EventStore] = PostgresEventStore  # mypy checks the class against the port


# --- pure helpers --------------------------------------------------------------------


async def _row(cur: psycopg.AsyncCursor[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The one row an aggregate query returns."""
    row = await cur.fetchone()
    assert row is not None, "an aggregate query returns one row"
    return row


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


#: Class → tag, so the hot path does not re-derive a tag from each class name.
_TAG_OF: Final = {cls: tag for tag, cls in EVENT_TAGS.items()}


def _encode(events: Sequence[AnyEvent], expected: Mapping[str, int]) -> _Request:
    try:
        rows = [
            _Row(stream_of(e), _TAG_OF[type(e)], e.at, encode_event(e).decode()) for e in events
        ]
    except msgspec.EncodeError as exc:
        raise EventRejected(f"an event cannot be encoded: {exc}") from exc
    return _Request(rows, expected)


def _assign(
    batch: list[_Request], head: int, versions: dict[str, int]
) -> tuple[list[int | WrongExpectedVersion], _Columns]:
    """Positions and versions for each request that passes its version checks, in order.

    ``versions`` is updated as requests are accepted, so a later request
    sees the versions an earlier one in the same batch produced.
    """
    results: list[int | WrongExpectedVersion] = []
    cols = _Columns([], [], [], [], [], [])
    for request in batch:
        conflict = next(
            (
                WrongExpectedVersion(s, want, versions[s])
                for s, want in request.expected.items()
                if versions[s] != want
            ),
            None,
        )
        if conflict is not None:
            results.append(conflict)
            continue
        for row in request.rows:
            head += 1
            versions[row.stream] += 1
            cols.positions.append(head)
            cols.streams.append(row.stream)
            cols.versions.append(versions[row.stream])
            cols.types.append(row.type)
            cols.ats.append(row.at)
            cols.data.append(row.data)
        results.append(head)
    return results, cols
