"""The hub's single writer: every append goes through one queue and is group-committed.

A request-served event per request is affordable only if the log sees few
transactions: while one transaction is in flight, new appends queue, and the
next transaction takes everything queued (up to ``max_batch`` events) as one
:meth:`EventStore.append_many`. Nothing waits on a timer: under light load
each append commits alone and at once, under heavy load batches grow by
themselves.

Two ways in. :meth:`BatchingWriter.append` awaits the commit and raises
:class:`WrongExpectedVersion` for its own conflict only (each queued append
is atomic on its own inside the batch). :meth:`BatchingWriter.submit` is for
the hot path: it never blocks and never loses an event; if the database is
away the batch is retried, in order, with capped exponential backoff.

Delivery is at-least-once. If the connection breaks while a COMMIT is in
flight nobody can know whether it landed, and the retry may write that batch
a second time; for ``submit`` that is the price of never dropping one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Final

import attrs
import structlog

from porten.domain.events import AnyEvent
from porten.domain.ports import AppendRequest, EventStore, WrongExpectedVersion

log = structlog.get_logger(__name__)

#: Queued appends beyond which the writer warns that the database is falling behind.
_BACKLOG_WARNING: Final = 100_000


class WriterClosed(RuntimeError):
    """The writer is not running (never started, or closed): nothing was queued."""


@attrs.define(slots=True)
class _Pending:
    request: AppendRequest
    #: Set for :meth:`BatchingWriter.append`; ``None`` for fire-and-forget submits.
    done: asyncio.Future[int] | None
    seq: int


def _permanent(exc: BaseException) -> bool:
    """Whether retrying the same append can never succeed.

    Stores raise ``ValueError`` (Postgres: ``EventRejected``) or ``TypeError``
    for content they refuse; anything else (a lost connection, a timeout, a
    server restart) is assumed to pass.
    """
    return isinstance(exc, ValueError | TypeError)


class BatchingWriter:
    """Group-commits appends to ``store``; ``start`` it, and ``aclose`` it to drain."""

    def __init__(
        self,
        store: EventStore,
        *,
        max_batch: int = 1000,
        linger_s: float = 0.01,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 5.0,
    ) -> None:
        self._store = store
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._queue: deque[_Pending] = deque()
        self._queued = asyncio.Event()
        self._urgent = asyncio.Event()  # an awaited append, or shutdown: stop lingering
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._backlogged = False
        self._enqueued = 0
        self._finished = 0
        #: Transactions committed (each one :meth:`EventStore.append_many`).
        self.transactions = 0
        #: Events written by those transactions.
        self.events_written = 0
        #: Failed transaction attempts that were retried.
        self.retries = 0

    @property
    def pending(self) -> int:
        """Appends queued or in flight."""
        return len(self._queue)

    async def start(self) -> None:
        """Start the commit loop (idempotent)."""
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run(), name="porten-batching-writer")

    async def __aenter__(self) -> BatchingWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def submit(
        self, events: Sequence[AnyEvent], expected: Mapping[str, int] | None = None
    ) -> None:
        """Queue ``events`` for the next transaction and return at once.

        They will be written, in submission order, however long the database
        is away; only content the store refuses for good is dropped (and
        logged as an error). Delivery is at-least-once across an unanswered
        COMMIT; pass ``expected={stream: NO_STREAM}`` for an event that must be
        recorded exactly once (a retry then conflicts instead of duplicating).
        """
        self._enqueue(AppendRequest(events=tuple(events), expected=dict(expected or {})), None)

    async def append(
        self, events: Sequence[AnyEvent], expected: Mapping[str, int] | None = None
    ) -> int:
        """Queue ``events`` atomically and return their last position once committed.

        Raises :class:`WrongExpectedVersion` if ``expected`` does not hold when
        its turn in the batch comes (nothing of it is written).
        """
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._enqueue(AppendRequest(events=tuple(events), expected=dict(expected or {})), done)
        # A caller that stops waiting cancels only ``done``: the append stays queued.
        return await done

    async def flush(self) -> None:
        """Return once everything queued before this call is committed (or refused)."""
        target = self._enqueued
        self._urgent.set()  # someone is waiting now: do not linger
        while self._finished < target:
            if self._dead():
                raise WriterClosed("the writer stopped before its queue was written")
            await self._progress.wait()

    async def aclose(self, *, give_up_after: float | None = None) -> None:
        """Write everything queued, then stop.

        With ``give_up_after`` (seconds), stop waiting for an unreachable
        database after that long; what is still queued is then lost, and
        logged as an error with its count.
        """
        if self._task is None:
            return
        self._closing = True
        self._queued.set()
        self._urgent.set()
        task = self._task
        finished, _ = await asyncio.wait({task}, timeout=give_up_after)
        self._task = None
        if finished:
            task.result()  # re-raise if the loop itself crashed
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.error("writer closed with events unwritten", appends_lost=len(self._queue))

    # --- the commit loop ---------------------------------------------------------------

    def _enqueue(self, request: AppendRequest, done: asyncio.Future[int] | None) -> None:
        if self._task is None or self._closing:
            raise WriterClosed("the batching writer is not running; start() it first")
        self._enqueued += 1
        self._queue.append(_Pending(request, done, self._enqueued))
        self._queued.set()
        if done is not None:
            self._urgent.set()

    def _dead(self) -> bool:
        return self._task is None or self._task.done()

    async def _run(self) -> None:
        try:
            while self._queue or not self._closing:
                if not self._queue:
                    self._queued.clear()
                    await self._queued.wait()
                    continue
                await self._linger()
                batch = self._take()
                results = await self._commit(batch)
                for _ in batch:
                    self._queue.popleft()
                self._settle(batch, results)
                self._finished = batch[-1].seq
                self._advance()
        finally:
            self._advance()  # flush() waiters re-check, and see a writer that stopped

    async def _linger(self) -> None:
        """Give fire-and-forget events a moment to gather into one transaction.

        At low load every ``request_served`` would otherwise be a transaction of
        its own (and a read-back by every follower), and that commit's CPU lands
        on the event loop in the middle of a later request. Nobody waits on
        submitted events, so tens of milliseconds cost nothing (the hub's default
        is 50 ms, ``PORTEN_EVENT_LINGER_MS``); an awaited append in the queue, a
        full batch, or shutdown ends the wait at once.
        """
        if self._linger_s <= 0 or self._closing:
            return
        if any(p.done is not None for p in self._queue):
            return
        if sum(len(p.request.events) for p in self._queue) >= self._max_batch:
            return
        self._urgent.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._urgent.wait(), timeout=self._linger_s)

    def _advance(self) -> None:
        """Wake every :meth:`flush` waiting on the current progress event."""
        woken, self._progress = self._progress, asyncio.Event()
        woken.set()

    def _take(self) -> list[_Pending]:
        """The oldest queued appends, up to ``max_batch`` events (always at least one)."""
        batch: list[_Pending] = []
        size = 0
        for pending in self._queue:
            size += len(pending.request.events)
            if batch and size > self._max_batch:
                break
            batch.append(pending)
        self._watch_backlog()
        return batch

    def _watch_backlog(self) -> None:
        """Warn once when the queue passes the threshold, and say when it has drained."""
        queued = len(self._queue)
        if queued > _BACKLOG_WARNING and not self._backlogged:
            self._backlogged = True
            log.warning("event backlog: the database is falling behind", queued_appends=queued)
        elif queued <= _BACKLOG_WARNING // 2 and self._backlogged:
            self._backlogged = False
            log.info("event backlog drained", queued_appends=queued)

    async def _commit(self, batch: list[_Pending]) -> list[int | BaseException]:
        """Commit ``batch`` as one transaction, retrying while the store is unavailable.

        A batch the store refuses outright is split and committed one append
        at a time, so one bad append cannot take its neighbours down with it.
        """
        delay = self._retry_initial_s
        while True:
            try:
                results = await self._store.append_many([p.request for p in batch])
            except Exception as exc:
                if _permanent(exc):
                    if len(batch) == 1:
                        return [exc]
                    return [r for p in batch for r in await self._commit([p])]
                self.retries += 1
                log.warning(
                    "event append failed; retrying",
                    error=str(exc),
                    appends=len(batch),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            self.transactions += 1
            self.events_written += sum(
                len(p.request.events)
                for p, r in zip(batch, results, strict=True)
                if not isinstance(r, WrongExpectedVersion)
            )
            return list(results)

    def _settle(self, batch: list[_Pending], results: list[int | BaseException]) -> None:
        for pending, result in zip(batch, results, strict=True):
            if pending.done is not None:
                if pending.done.done():
                    continue
                if isinstance(result, BaseException):
                    pending.done.set_exception(result)
                else:
                    pending.done.set_result(result)
            elif isinstance(result, WrongExpectedVersion):
                # An exactly-once event already recorded (a retry after an unanswered
                # COMMIT that had in fact committed): nothing to do.
                log.info("submitted events were already recorded", stream=result.stream)
            elif isinstance(result, BaseException):
                log.error(
                    "submitted events refused by the store and dropped",
                    error=str(result),
                    events=[type(e).__name__ for e in pending.request.events],
                )
