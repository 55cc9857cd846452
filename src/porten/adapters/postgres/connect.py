"""The connections porten holds to its Postgres, with errors an operator can act on.

psycopg's own connection errors name a socket and an errno; an operator
starting a hub needs to know which database porten tried (with the password
hidden), and what to check. Every connection porten opens goes through here:
one-off connections, pools, and the ``LISTEN`` connection that outlives a
server restart.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final
from urllib.parse import urlsplit

import psycopg
import structlog
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from porten.config import redact_url

log = structlog.get_logger(__name__)

#: Seconds to wait for the server to accept a connection before giving up.
CONNECT_TIMEOUT: Final = 10
_APPLICATION_NAME: Final = "porten"

AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]


class DatabaseUnreachable(Exception):
    """Porten could not connect to its database; the message says which and what to check."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = redact_url(url)
        super().__init__(
            f"cannot connect to the database at {self.url}: {_scrub(problem, url)}. "
            "Check that the server is running and reachable from this machine, that the "
            "host, port, database name, user and password in PORTEN_DATABASE_URL (or "
            "--database-url) are right, and that the server accepts this user "
            "(pg_hba.conf). Unset PORTEN_DATABASE_URL to use the embedded Postgres instead."
        )


def _scrub(text: str, url: str) -> str:
    """``text`` without the URL's password, in case a driver message echoes it."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    text = " ".join(text.split()).rstrip(".?")  # one line: the CLI prints one line
    return text.replace(password, "***") if password else text


def _connection_kwargs() -> dict[str, Any]:
    return {
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT,
        "application_name": _APPLICATION_NAME,
    }


async def connect(url: str) -> AsyncConn:
    """One autocommit connection; :class:`DatabaseUnreachable` if the server cannot be reached."""
    try:
        return await psycopg.AsyncConnection.connect(url, **_connection_kwargs())
    except psycopg.Error as exc:
        # ``from None``: the driver's exception may carry the conninfo in its args.
        raise DatabaseUnreachable(url, str(exc)) from None


async def open_pool(
    url: str, *, min_size: int = 1, max_size: int = 8, name: str = "porten"
) -> AsyncConnectionPool[AsyncConn]:
    """An opened pool of autocommit connections, checked by opening the first one.

    Small by design: the hub's writes go through one batching writer (one
    connection at a time) and its reads are short, so a handful of connections
    serve a busy hub; more would only compete for the table lock.
    """
    pool: AsyncConnectionPool[AsyncConn] = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs=_connection_kwargs(),
        name=name,
        open=False,
        timeout=30.0,
        reconnect_timeout=60.0,
    )
    try:
        await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
    except PoolTimeout:
        await pool.close()
        # The pool hides the driver's reason; one direct attempt recovers it.
        conn = await connect(url)
        await conn.close()
        raise DatabaseUnreachable(url, "the connection pool could not open a connection") from None
    return pool


class Listener:
    """One ``LISTEN`` connection on ``channel``, opened by :meth:`start` and reopened if lost.

    Each notification sets the current :attr:`wakeup` event and replaces it
    with a fresh one, so a waiter takes the event, checks what it waits for,
    then waits: a notification between the check and the wait still wakes
    it. Every (re)connection wakes waiters too, because notifications sent
    while the connection was down are lost.
    """

    def __init__(self, url: str, channel: str) -> None:
        self._url = url
        self._channel = channel
        self._task: asyncio.Task[None] | None = None
        self.wakeup = asyncio.Event()

    def start(self) -> None:
        """Begin listening in the background (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"listen-{self._channel}")

    async def aclose(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _wake(self) -> None:
        woken, self.wakeup = self.wakeup, asyncio.Event()
        woken.set()

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                async with await connect(self._url) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self._wake()
                    delay = 0.1
                    async for _ in conn.notifies():
                        self._wake()
            except (psycopg.Error, DatabaseUnreachable) as exc:
                log.warning(
                    "listen connection lost; reconnecting",
                    channel=self._channel,
                    error=str(exc),
                    retry_in_s=delay,
                )
                self._wake()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
