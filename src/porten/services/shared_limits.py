"""The hub's side of the limiter it shares with other hubs: leases, and what it does without it.

:class:`SharedLimits` admits a request from this hub's lease on its key
(:mod:`porten.services.leases`) or takes a new lease in one call to the
shared limiter (Redis), settles admitted requests into their lease, and
gives back what leases no longer use (when they are renewed; for a key gone
quiet, within a second or two; everything when the hub stops).

Calls go to the limiter one at a time (with leases they are few, and one
connection answers them fastest), queued here rather than in the client,
so that when one fails the calls queued behind it fail with it instead of
each trying to reconnect.

**When the shared limiter fails** (unreachable, or no answer in 250 ms) it
says so (:meth:`SharedLimits.admit` returns None, and the gate decides rate
limits in memory) or, for a key with a budget, raises
:class:`LimitsUnavailable` (the gate fails closed). After a failure it does
not ask again for a second; then one request finds out whether the limiter
is back while the others carry on as if it were not, so an outage costs one
attempt a second, not one per request. Settlements due meanwhile are not
sent: a lease's hold expires by itself, and what requests cost is in the log
(``spent`` is the larger of the limiter's count and the log's).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

import attrs
import structlog
from msgspec.structs import replace

from porten.services.leases import LEASE_S, Leases
from porten.services.ratelimit import Ask, Limiter, Settlement, Verdict

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Seconds between two attempts to reach an unreachable shared limiter.
RETRY_SHARED_S: Final = 1.0


class LimitsUnavailable(Exception):
    """The shared limiter is unreachable and the key's budget cannot be checked."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__("the spending budget cannot be checked right now")


@attrs.frozen
class Decision:
    """The verdict on a request and, if admitted, what it reserved under which budget hold."""

    verdict: Verdict
    reserved: int = 0
    hold_id: str = ""


@attrs.define(eq=False)
class SharedLimits:
    """Leases on the shared limiter, and this hub's view of whether it answers."""

    limiter: Limiter
    clock: Callable[[], float]
    leases: Leases = attrs.field(factory=Leases)
    #: Keys whose lease is being asked for, and whether it was granted.
    _leasing: dict[str, asyncio.Future[bool]] = attrs.field(factory=dict)
    _down_until: float = 0.0
    _down: bool = False
    #: Calls wait here for the one before them; ``_failures`` counts the ones that failed.
    _serial: asyncio.Lock = attrs.field(factory=asyncio.Lock)
    _failures: int = 0
    _sweeper: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Task[None]] = attrs.field(factory=set)

    async def admit(self, ask: Ask) -> Decision | None:
        """The decision on ``ask``, or None if the shared limiter cannot be asked now.

        Raises :class:`LimitsUnavailable` instead of returning None for a key
        with a budget.
        """
        budgeted = ask.budget_nano is not None
        now = self.clock()
        if now < self._down_until:  # down a moment ago, or another request is finding out
            if budgeted:
                raise LimitsUnavailable(max(self._down_until - now, RETRY_SHARED_S))
            return None
        if self.leases.take(ask):
            return self._leased(ask, ask.want_nano, self.leases.hold_of(ask.key_id))
        if self._down:  # this request finds out whether it is back; the others wait a second
            self._down_until = now + RETRY_SHARED_S
        try:
            decision = await self._renew(ask)
        except Exception as exc:  # unreachable or too slow: decide without it
            self._went_down(exc)
            if budgeted:
                raise LimitsUnavailable(RETRY_SHARED_S) from None
            return None
        if self._down:
            self._down, self._down_until = False, 0.0
            log.info("shared rate limiter reachable again")
        return decision

    @staticmethod
    def _leased(ask: Ask, reserved: int, hold_id: str) -> Decision:
        if ask.budget_nano is None:
            return Decision(Verdict(allowed=True))
        return Decision(Verdict(allowed=True), reserved, hold_id)

    async def _renew(self, ask: Ask) -> Decision:
        """A lease covering ``ask`` if the key's limits allow one, else ``ask`` alone.

        One lease per key is asked for at a time: concurrent requests of the key
        wait for it and draw on it, rather than each leasing a slice of its own.
        """
        while (pending := self._leasing.get(ask.key_id)) is not None:
            granted = await asyncio.shield(pending)
            if self.leases.take(ask):
                return self._leased(ask, ask.want_nano, self.leases.hold_of(ask.key_id))
            if not granted and self.clock() < self._down_until:  # that lease call failed
                raise ConnectionError("the shared limiter did not answer")
            if not granted:  # the limits are short of a lease: ask for this request alone
                return await self._alone(ask)
        renewal = self.leases.renewal(ask)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._leasing[ask.key_id] = done
        granted = False
        try:
            verdict = await self._ask(renewal)
            if verdict.allowed:
                granted = True
                if ask.budget_nano is not None:
                    self._sweep_soon()
                return self._leased(ask, self.leases.granted(renewal, ask, verdict),
                                    renewal.request_id)
        finally:
            del self._leasing[ask.key_id]
            done.set_result(granted)
        if verdict.limit == "budget":  # a request alone would get no more than the lease did
            return Decision(verdict)
        return await self._alone(ask)

    async def _alone(self, ask: Ask) -> Decision:
        single = self.leases.single(ask)
        verdict = await self._ask(single)
        if not verdict.allowed:
            return Decision(verdict)
        return self._leased(ask, self.leases.granted(single, ask, verdict), single.request_id)

    async def _ask(self, ask: Ask) -> Verdict:
        try:
            return await self._call(self.limiter.admit(ask))
        except Exception:
            if ask.budget_nano is not None:  # applied or not, nobody knows: abandon the hold
                self.leases.lost(ask.key_id, ask.request_id)
            raise

    async def _call(self, call: Coroutine[Any, Any, T]) -> T:
        """Await ``call`` after the calls queued before it; fail at once if one of them failed."""
        failures = self._failures
        async with self._serial:
            if self._failures != failures:
                call.close()
                raise ConnectionError("the shared limiter failed while this call waited for it")
            try:
                return await call
            except Exception:
                self._failures += 1
                raise

    def settle(self, key_id: str, hold_id: str, *, reserved: int, cost: int,
               tokens_per_min: int | None, tokens_delta: int) -> None:
        """Settle an admitted request into its lease; what the lease cannot take, to Redis.

        ``hold_id`` is empty for a key without a budget.
        """
        excess = 0
        if tokens_per_min is not None and tokens_delta:
            excess = self.leases.settle_tokens(key_id, tokens_delta)
        money = self.leases.settle_money(key_id, hold_id, reserved, cost) if hold_id else None
        if excess <= 0 and money is None:
            return
        settlement = money or Settlement(key_id=key_id, request_id="", now=0.0)
        self.background(self._settle(replace(settlement, now=self.clock(),
                                              tokens_per_min=tokens_per_min,
                                              tokens_delta=excess)))

    async def _settle(self, settlement: Settlement) -> None:
        if self.clock() < self._down_until:  # no attempt while it is down: the log has the cost
            return
        try:
            await self._call(self.limiter.settle(settlement))
        except Exception as exc:  # the hold expires; spent heals from the log
            self._went_down(exc)
            self.leases.lost(settlement.key_id, settlement.request_id)

    def return_leases(self, *, everything: bool = False) -> None:
        """Give back what expired leases (``everything``: all leases) no longer use."""
        now = self.clock()
        if now < self._down_until:
            return
        for settlement in self.leases.returns(math.inf if everything else now,
                                              busy=set(self._leasing)):
            self.background(self._settle(replace(settlement, now=now)))

    def _sweep_soon(self) -> None:
        """Return expired leases every second while this hub holds budget slices."""
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while self.leases.holding():
            await asyncio.sleep(LEASE_S)
            self.return_leases()

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` without waiting for it (kept referenced until it ends)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Wait for settlements still on their way."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Give back every lease's unused money and wait for settlements on their way."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.flush()
        self.return_leases(everything=True)
        await self.flush()

    def _went_down(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            log.warning("shared rate limiter unreachable; rate limits are per hub process and "
                        "budgeted keys get 503 until it answers", error_type=type(exc).__name__,
                        error=str(exc))
        self._down_until = self.clock() + RETRY_SHARED_S
