"""The fleet state the hub serves from: the log folded, kept current, and snapshotted.

On start the projection loads the newest snapshot of its state schema and
folds only the log's tail; afterwards it follows the log (woken by the
store's ``wait_for_append``) and folds each new page. Every
``snapshot_every`` events it saves a snapshot, so restart time stays flat
however long the log grows. A snapshot is only a cache of the fold: one
that does not decode is ignored and the log folded from the start.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

import msgspec
import structlog

from porten.domain.events import AnyEvent
from porten.domain.fold import fold
from porten.domain.ports import EventStore, Snapshot
from porten.domain.snapshot import STATE_SCHEMA, decode_state, encode_state
from porten.domain.state import EMPTY, FleetState

log = structlog.get_logger(__name__)

#: Events read per page while catching up.
PAGE: Final = 10_000
#: Events folded between two yields to the event loop (about a millisecond's work).
_SLICE: Final = 500
#: The longest a follower sleeps without re-reading, in case a wake-up was lost.
_FOLLOW_RECHECK_S: Final = 30.0
_RETRY_MAX_S: Final = 5.0


#: ``(position of the last event, events)``; the position is the ``after`` read from if empty.
Page = tuple[int, list[AnyEvent]]


async def read_page(store: EventStore, after: int, limit: int) -> Page:
    """One page of bare events (the fold's bulk read)."""
    return await store.read_events(after, limit)


class FleetProjection:
    """``state`` is the log folded up to ``position``; ``catch_up`` and ``follow`` advance it."""

    def __init__(
        self,
        store: EventStore,
        *,
        snapshot_every: int = 10_000,
        page_size: int = PAGE,
        schema: int = STATE_SCHEMA,
    ) -> None:
        self._store = store
        self._snapshot_every = snapshot_every
        self._page_size = page_size
        self._schema = schema
        self._log = log.bind(schema=schema)
        self._lock = asyncio.Lock()
        self._advanced = asyncio.Event()
        self._loaded = False
        self.state: FleetState = EMPTY
        #: The last log position folded into ``state``.
        self.position = 0
        #: The position the starting snapshot covered (0 if the fold started from the empty fleet).
        self.snapshot_position = 0
        #: Events this projection folded itself, on top of its starting snapshot.
        self.tail_folded = 0
        self._last_snapshot = 0

    async def catch_up(self) -> int:
        """Fold every event committed so far; return the position reached.

        The first call starts from the newest usable snapshot. Concurrent
        calls (the follower and a read-your-writes waiter) take turns.
        """
        async with self._lock:
            if not self._loaded:
                await self._load_snapshot()
                self._loaded = True
            async for page in self._pages():
                await self._fold(page)
            if self.position - self._last_snapshot >= self._snapshot_every:
                await self._save_snapshot()
            return self.position

    async def _pages(self) -> AsyncIterator[Page]:
        """The log after ``position``, page by page, each read started before the last is folded.

        The database reads and serialises the next page while this process
        folds the current one, so on a machine with a core to spare their
        work overlaps instead of adding up.
        """
        pending: asyncio.Task[Page] | None = self._read_after(self.position)
        try:
            while pending is not None:
                last, events = await pending
                full = len(events) == self._page_size
                pending = self._read_after(last) if full else None
                if events:
                    yield last, events
        finally:
            if pending is not None:
                pending.cancel()

    def _read_after(self, position: int) -> asyncio.Task[Page]:
        return asyncio.create_task(read_page(self._store, position, self._page_size))

    async def _fold(self, page: Page) -> None:
        """Fold ``page`` in slices, yielding between them.

        Yielding keeps the event loop serving requests during a long
        catch-up, and lets the next page's read drain its socket meanwhile.
        """
        last, events = page
        first = last - len(events) + 1  # positions are gapless
        for start in range(0, len(events), _SLICE):
            chunk = events[start : start + _SLICE]
            self.state = fold(chunk, self.state)
            self.position = first + start + len(chunk) - 1
            self.tail_folded += len(chunk)
            woken, self._advanced = self._advanced, asyncio.Event()
            woken.set()
            await asyncio.sleep(0)
        self.position = last

    async def follow(self) -> None:
        """Fold new events as they are committed, until cancelled (run it as a task).

        Any failure (the database restarting, an event this version cannot
        decode) is logged and retried with capped backoff: the state stays at
        the last position folded, and the loop ends only by cancellation.
        """
        delay = 0.1
        while True:
            try:
                await self.catch_up()
                await self._store.wait_for_append(self.position, _FOLLOW_RECHECK_S)
                delay = 0.1
            except Exception as exc:  # a follower must outlive any one failure
                self._log.warning(
                    "projection cannot fold the log; retrying",
                    position=self.position,
                    error=str(exc),
                    error_type=type(exc).__name__,
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    async def wait_until(self, position: int, timeout: float) -> bool:  # noqa: ASYNC109 (a deadline for the caller's request, not an I/O timeout)
        """True once ``state`` includes ``position`` (read-your-writes), False after ``timeout``.

        Catches up itself rather than waiting for the follower, so a caller
        that has just committed ``position`` sees it without a wake-up's delay.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.position < position:
            await self.catch_up()
            if self.position >= position:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await self._store.wait_for_append(self.position, remaining)
        return True

    async def changed(self) -> None:
        """Return the next time ``state`` advances (then re-read it: it may advance again)."""
        await self._advanced.wait()

    async def _load_snapshot(self) -> None:
        snapshot = await self._store.latest_snapshot(self._schema)
        if snapshot is None:
            return
        try:
            state = decode_state(snapshot.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._log.warning(
                "snapshot unreadable; folding the log from the start",
                position=snapshot.position,
                error=str(exc),
            )
            return
        self.state = state
        self.position = self.snapshot_position = self._last_snapshot = snapshot.position
        self._log.info("projection resumed from snapshot", position=snapshot.position)

    async def _save_snapshot(self) -> None:
        """Save the state; a failure is logged, not raised (a snapshot is only a cache)."""
        data = encode_state(self.state)
        try:
            await self._store.save_snapshot(
                Snapshot(position=self.position, schema=self._schema, data=data)
            )
        except Exception as exc:  # the fold stands; the next catch-up tries again
            self._log.warning("snapshot not saved", position=self.position, error=str(exc))
            return
        self._last_snapshot = self.position
        self._log.info("snapshot saved", position=self.position, size_bytes=len(data))


async def state_at(
    store: EventStore, *, position: int | None = None, at: float | None = None
) -> FleetState:
    """The fleet as the log describes it, folded from the very first event.

    ``position`` stops after that log position. ``at`` (unix seconds) keeps
    only events whose own time is at or before it: clocks of different
    observers may disagree slightly, so this filters the whole log rather
    than stopping at the first later event. Snapshots are not used, so this
    is also an independent check of them.
    """
    state = EMPTY
    after = 0
    while position is None or after < position:
        limit = PAGE if position is None else min(PAGE, position - after)
        after, events = await read_page(store, after, limit)
        if not events:
            break
        state = fold((e for e in events if at is None or e.at <= at), state)
    return state
