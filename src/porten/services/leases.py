"""Rates and budgets leased from the shared limiter in slices, so most requests never wait on Redis.

Asking Redis on every request costs a round trip (~100-500 µs on a busy
machine) — more than everything else the hub does before routing. So a hub
takes a *lease* on each busy key, in one atomic call:

* **rates**: about one second's worth of the key's requests (and tokens)
  per minute, charged to the shared GCRA. Requests draw on it in memory
  until it is used up or a second has passed; what it charged and was not
  used is given back with the next lease. Every request admitted was
  charged to Redis first, so the limit holds exactly as without leases; a
  lease only moves *when* a unit is charged. A key whose allowance is too
  small to slice (under 120 a minute) is leased one request at a time;
* **money**: a *slice* of the key's remaining budget — about
  :data:`SLICE_REQUESTS` requests' worst case, but at most 1/8 of what the
  key has available (:func:`~porten.domain.quota.budget_slice`) — added to
  this hub's *hold* on the budget. Requests reserve their worst case from
  the slice in memory; when they settle, what they did not use goes back to
  the slice and what they cost is noted. The next lease (or, for a key gone
  quiet, :meth:`Leases.returns`) reports both to Redis: the cost moves from
  the hold to ``spent``, the unused money back to the key's pool. Redis
  admits a slice only if ``spent + every hub's hold <= budget``, and a hub
  never reserves more than its slice, so hubs together never overspend. Near
  the end of a budget the slice shrinks to one request's reservation: the
  last cents go request by request.

If a lease call fails (Redis unreachable or too slow), the hub cannot know
whether Redis applied it, so it abandons that hold: it forgets the slice
(Redis keeps the money held until the hold expires — it errs towards
spending less), starts a new hold, and requests still running on the old
one settle against it directly. Tokens a request generates beyond its
estimate are taken from the rate lease first; any excess is charged to
Redis after the response (off its path).
"""

from __future__ import annotations

import itertools
import uuid
from typing import Final

import attrs
from msgspec.structs import replace

from porten.services.ratelimit import Ask, Settlement, Verdict

#: How long a lease may be drawn on.
LEASE_S: Final = 1.0
#: The most a rate slice holds, whatever the limit.
MAX_SLICE: Final = 10_000
#: A budget slice asks for this many times the worst case of the request that takes it.
SLICE_REQUESTS: Final = 16
#: What a lease holds of a limit the key does not have.
_UNLIMITED: Final = 1 << 60


@attrs.define
class _Lease:
    """One key's lease on this hub."""

    #: The name of this hub's hold on the key's budget in the shared limiter.
    hold_id: str
    requests: int = 0
    tokens: int = 0
    until: float = 0.0
    #: Money (nano-dollars) held for this hub: not reserved, reserved by requests
    #: running, and spent by requests settled but not yet reported. Together:
    #: what the shared limiter holds under ``hold_id``.
    free: int = 0
    reserved: int = 0
    spent: int = 0
    #: The budget the free money was granted under (a changed budget takes a new lease).
    budget: int | None = None

    def report(self) -> tuple[int, int]:
        """``(release, spent)`` to report on the hold: the money it spent and no longer needs.

        What is reserved stays held. ``free`` is negative when requests cost
        more than they reserved (a prompt longer than its estimate): that is
        spent, but was never held, so it is not released — the next slice
        makes up for it.
        """
        release, spent = max(self.spent + self.free, 0), self.spent
        self.free -= release - spent
        self.spent = 0
        return release, spent


def _slice(limit: int, at_least: int = 1) -> int:
    """About one second of ``limit`` per minute, at least ``at_least``."""
    return max(at_least, min(limit // 60, MAX_SLICE))


@attrs.define
class Leases:
    """This hub process's leases, per key."""

    _leases: dict[str, _Lease] = attrs.field(factory=dict)
    _prefix: str = attrs.field(factory=lambda: f"lease:{uuid.uuid4().hex[:16]}:")
    _serial: itertools.count[int] = attrs.field(factory=itertools.count)

    def _lease(self, key_id: str) -> _Lease:
        lease = self._leases.get(key_id)
        if lease is None:
            lease = self._leases[key_id] = _Lease(hold_id=f"{self._prefix}{next(self._serial)}")
        return lease

    def take(self, ask: Ask) -> bool:
        """Admit ``ask`` from its key's lease if it covers it (reserving ``want_nano``)."""
        lease = self._leases.get(ask.key_id)
        if lease is None or lease.until <= ask.now or lease.requests < 1:
            return False
        if ask.tokens_per_min is not None and lease.tokens < ask.tokens:
            return False
        if ask.budget_nano is not None and (lease.free < ask.want_nano
                                            or lease.budget != ask.budget_nano):
            return False
        lease.requests -= 1
        lease.tokens -= ask.tokens
        if ask.budget_nano is not None:
            lease.free -= ask.want_nano
            lease.reserved += ask.want_nano
        return True

    def hold_of(self, key_id: str) -> str:
        """The hold a budgeted request of ``key_id`` admitted by this hub reserves from."""
        return self._lease(key_id).hold_id

    def renewal(self, ask: Ask) -> Ask:
        """The ask for a new lease that covers ``ask``, reporting on the key's previous one.

        It gives back the rate units the old lease did not use and, for a
        budgeted key, reports the money it spent and no longer needs; all of
        that is forgotten here, whatever the answer.
        """
        rpm, tpm = ask.requests_per_min, ask.tokens_per_min
        lease = self._lease(ask.key_id)
        refund_requests = max(lease.requests, 0) if rpm is not None else 0
        refund_tokens = max(lease.tokens, 0) if tpm is not None else 0
        lease.requests = lease.tokens = 0
        lease.until = 0.0
        renewal = replace(
            ask, request_cost=_slice(rpm) if rpm is not None else 1,
            tokens=_slice(tpm, ask.tokens) if tpm is not None else ask.tokens,
            refund_requests=refund_requests, refund_tokens=refund_tokens,
        )
        if ask.budget_nano is None:
            return renewal
        release, spent = lease.report()
        return replace(renewal, request_id=lease.hold_id, slice_nano=ask.want_nano * SLICE_REQUESTS,
                       hold_release_nano=release, hold_spent_nano=spent)

    def single(self, ask: Ask) -> Ask:
        """The ask for ``ask`` alone (its lease was refused), reserving under the key's hold."""
        if ask.budget_nano is None:
            return ask
        return replace(ask, request_id=self._lease(ask.key_id).hold_id)

    def granted(self, lease_ask: Ask, ask: Ask, verdict: Verdict) -> int:
        """Record what the shared limiter granted ``lease_ask``; return what ``ask`` reserves of it.

        Concurrent requests may each have taken a lease: they add up, none is lost.
        """
        lease = self._lease(ask.key_id)
        requests = lease_ask.request_cost - 1 if ask.requests_per_min is not None else _UNLIMITED
        tokens = lease_ask.tokens - ask.tokens if ask.tokens_per_min is not None else _UNLIMITED
        if lease.until > ask.now:
            lease.requests = min(lease.requests + requests, _UNLIMITED)
            lease.tokens = min(lease.tokens + tokens, _UNLIMITED)
        else:
            lease.requests, lease.tokens = requests, tokens
        lease.until = max(lease.until, ask.now + LEASE_S)
        if ask.budget_nano is None:
            return 0
        reserved = min(ask.want_nano, verdict.reserved_nano)
        lease.budget = ask.budget_nano
        lease.free += verdict.reserved_nano - reserved
        lease.reserved += reserved
        return reserved

    def lost(self, key_id: str, hold_id: str) -> None:
        """A call about hold ``hold_id`` failed: abandon it (requests running on it settle to it).

        The shared limiter may or may not have applied the call; the hold's
        money stays held there until it expires, and the key's next lease
        starts a new hold.
        """
        lease = self._leases.get(key_id)
        if lease is not None and lease.hold_id == hold_id:
            del self._leases[key_id]

    def settle_money(self, key_id: str, hold_id: str, reserved: int, cost: int
                     ) -> Settlement | None:
        """Settle a request that reserved ``reserved`` from hold ``hold_id`` and cost ``cost``.

        Into the lease if the hold is still this hub's current one; otherwise
        (the hold was abandoned) the settlement to send the shared limiter.
        """
        lease = self._leases.get(key_id)
        if lease is None or lease.hold_id != hold_id:
            return Settlement(key_id=key_id, request_id=hold_id, now=0.0, cost_nano=cost,
                              budgeted=True, release_nano=reserved)
        lease.reserved -= reserved
        lease.free += reserved - cost
        lease.spent += cost
        return None

    def returns(self, now: float, busy: set[str] | frozenset[str] = frozenset()
                ) -> list[Settlement]:
        """What leases past their time (of keys not in ``busy``) give back to the shared limiter.

        Each returns its unused money and reports what it spent, so a key gone
        quiet on this hub leaves its money to the others within a second or two.
        """
        out = []
        for key_id, lease in self._leases.items():
            if lease.until > now or key_id in busy:
                continue
            if lease.free > 0 or lease.spent:
                release, spent = lease.report()
                out.append(Settlement(key_id=key_id, request_id=lease.hold_id, now=now,
                                      cost_nano=spent, budgeted=True, release_nano=release))
        return out

    def holding(self) -> bool:
        """Whether any lease holds money (unused, reserved, or spent and not yet reported)."""
        return any(lease.free > 0 or lease.reserved or lease.spent
                   for lease in self._leases.values())

    def settle_tokens(self, key_id: str, delta: int) -> int:
        """Charge ``delta`` more tokens (negative: give back) to the lease; what it cannot cover.

        A refund goes back to a live lease; tokens beyond what the lease holds
        are returned for the caller to charge to the shared limiter.
        """
        lease = self._leases.get(key_id)
        if lease is None:
            return max(delta, 0)
        if delta <= 0:
            lease.tokens -= delta
            return 0
        covered = min(delta, max(lease.tokens, 0))
        lease.tokens -= covered
        return delta - covered
