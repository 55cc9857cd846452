"""Rate allowances leased from the shared limiter in slices, so most requests never wait on Redis.

Asking Redis on every request costs a round trip (~100-200 µs on a busy
machine) — more than everything else the hub does before routing. So for a
key with rate limits and no budget, a hub takes a *lease*: about one
second's worth of the key's requests (and tokens) per minute, charged to the
shared GCRA in one atomic call; requests then draw on the lease in memory
until it is used up or a second has passed. What a lease charged and was
not used is given back with the next lease. Whatever the number of hubs,
every request admitted was charged to Redis first, so the limit holds
exactly as without leases; a lease only moves *when* a unit is charged. A
key whose allowance is too small to slice (under 60 a minute) gets single
requests, as without leases.

Tokens a request generates beyond its estimate are taken from the lease
first; any excess is charged to Redis after the response (off its path).
Keys with a budget are never leased: money is reserved per request.
"""

from __future__ import annotations

from typing import Final

import attrs
from msgspec.structs import replace

from porten.services.ratelimit import Ask

#: How long a lease may be drawn on.
LEASE_S: Final = 1.0
#: The most a slice holds, whatever the limit.
MAX_SLICE: Final = 10_000


@attrs.define
class _Lease:
    requests: int
    tokens: int
    until: float


#: What a lease holds of a limit the key does not have.
_UNLIMITED: Final = 1 << 60


def _slice(limit: int, at_least: int = 1) -> int:
    """About one second of ``limit`` per minute, at least ``at_least``."""
    return max(at_least, min(limit // 60, MAX_SLICE))


@attrs.define
class RateLeases:
    """This hub process's leases, per key."""

    _leases: dict[str, _Lease] = attrs.field(factory=dict)

    def take(self, ask: Ask) -> bool:
        """Admit ``ask`` from its key's lease, if the lease covers it."""
        lease = self._leases.get(ask.key_id)
        if lease is None or lease.until <= ask.now or lease.requests < 1:
            return False
        if ask.tokens_per_min is not None and lease.tokens < ask.tokens:
            return False
        lease.requests -= 1
        lease.tokens -= ask.tokens
        return True

    def lease_ask(self, ask: Ask) -> Ask | None:
        """The ask for a new lease that covers ``ask`` (None: the limits are too small to slice).

        It gives back what the key's previous lease did not use; that lease is
        forgotten, whatever Redis answers.
        """
        rpm, tpm = ask.requests_per_min, ask.tokens_per_min
        if rpm is not None and _slice(rpm) <= 1:
            return None
        old = self._leases.pop(ask.key_id, None)
        refund_requests = max(old.requests, 0) if old is not None and rpm is not None else 0
        refund_tokens = max(old.tokens, 0) if old is not None and tpm is not None else 0
        return replace(
            ask, request_cost=_slice(rpm) if rpm is not None else 1,
            tokens=_slice(tpm, ask.tokens) if tpm is not None else ask.tokens,
            refund_requests=refund_requests, refund_tokens=refund_tokens,
        )

    def granted(self, lease: Ask, ask: Ask) -> None:
        """Record the lease Redis granted, less what ``ask`` (the request that took it) uses.

        Concurrent requests may each have taken a lease: they add up, none is lost.
        """
        requests = lease.request_cost - 1 if ask.requests_per_min is not None else _UNLIMITED
        tokens = lease.tokens - ask.tokens if ask.tokens_per_min is not None else _UNLIMITED
        held = self._leases.get(ask.key_id)
        if held is not None and held.until > ask.now:
            held.requests = min(held.requests + requests, _UNLIMITED)
            held.tokens = min(held.tokens + tokens, _UNLIMITED)
            held.until = max(held.until, ask.now + LEASE_S)
            return
        self._leases[ask.key_id] = _Lease(requests=requests, tokens=tokens,
                                          until=ask.now + LEASE_S)

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
