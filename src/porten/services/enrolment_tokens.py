"""Enrolment tokens: enrol a node without a browser, for scripted fleets.

An owner mints a token (portal **Earn → Add node**, or ``porten admin
enrol-token create``); a machine runs ``porten agent enroll <token>`` and
becomes a node of that owner. A token is a ``pn-enrol-…`` secret with a
checksum (so a mistyped one is refused offline), stored only as its keyed
hash, valid until it expires and for **one** node: the redemption appends
``node_enrolled`` and ``enrolment_token_redeemed`` with the token stream's
expected version, so a second use — from any hub, however close in time —
is refused with "already used".
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Final

import attrs

from porten.domain import events as ev
from porten.domain.ports import NO_STREAM, WrongExpectedVersion
from porten.domain.state import EnrolmentToken
from porten.services._enrol import (
    DeviceFlowError,
    Enrolled,
    RateWindow,
    clean_client_name,
    enrol_events,
)
from porten.services.accounts import Accounts
from porten.services.control import Log
from porten.services.credentials import display_prefix, new_token, token_hash, well_formed

ENROLMENT_TOKEN_PREFIX: Final = "pn-enrol-"  # noqa: S105 (a prefix, not a secret)
DEFAULT_TTL_S: Final = 24 * 3600.0
MAX_TTL_S: Final = 30 * 24 * 3600.0
MAX_NAME_LENGTH: Final = 200
#: Wrong tokens an address may present per window before it is slowed down.
BAD_TOKENS_PER_WINDOW: Final = 10
WINDOW_S: Final = 600.0


class TokenProblem(Exception):
    """A mint or revoke request that cannot be done; the message is safe to show."""


@attrs.frozen
class MintedEnrolmentToken:
    """A new token (shown once) and its folded state."""

    token: str = attrs.field(repr=False)
    state: EnrolmentToken


@attrs.define
class EnrolmentTokens:
    """Single-use enrolment tokens over the log."""

    log: Log
    accounts: Accounts
    server_secret: bytes = attrs.field(repr=False)
    clock: Callable[[], float]
    _bad: RateWindow = attrs.field(factory=lambda: RateWindow(BAD_TOKENS_PER_WINDOW, WINDOW_S))

    def owned_by(self, owner_id: str) -> list[EnrolmentToken]:
        """The owner's tokens, newest first."""
        found = (t for t in self.log.state.enrolment_tokens.values() if t.owner_id == owner_id)
        return sorted(found, key=lambda t: (-t.created_at, t.token_id))

    async def mint(
        self, owner_id: str, *, name: str = "", ttl_s: float = DEFAULT_TTL_S, actor: str
    ) -> MintedEnrolmentToken:
        """A token that enrols one node as ``owner_id``'s within ``ttl_s``."""
        account = self.accounts.get(owner_id)
        if account is None or account.disabled:
            raise TokenProblem("no active account with that id")
        if len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise TokenProblem(f"the token's name must be printable and at most "
                               f"{MAX_NAME_LENGTH} characters")
        if not (math.isfinite(ttl_s) and 60 <= ttl_s <= MAX_TTL_S):
            raise TokenProblem("a token lives between 1 minute and 30 days")
        now = self.clock()
        token = new_token(ENROLMENT_TOKEN_PREFIX)
        token_id = f"etok_{uuid.uuid4().hex[:16]}"
        state = await self.log.commit([ev.EnrolmentTokenMinted(
            at=now, actor=actor, token_id=token_id, owner_id=owner_id,
            token_hash=token_hash(self.server_secret, token),
            prefix=display_prefix(token, ENROLMENT_TOKEN_PREFIX), name=name,
            expires_at=now + ttl_s,
        )], {f"enrolment-token-{token_id}": NO_STREAM})
        return MintedEnrolmentToken(token=token, state=state.enrolment_tokens[token_id])

    async def revoke(self, owner_id: str, token_id: str, *, actor: str) -> EnrolmentToken:
        """Withdraw an unused token of ``owner_id``."""
        token = self.log.state.enrolment_tokens.get(token_id)
        if token is None or token.owner_id != owner_id:
            raise TokenProblem("no such enrolment token")
        if token.used_at is not None or token.revoked_at is not None:
            raise TokenProblem("that token is already used or revoked")
        try:
            state = await self.log.commit(
                [ev.EnrolmentTokenRevoked(at=self.clock(), actor=actor, token_id=token_id)],
                {f"enrolment-token-{token_id}": token.events - 1},
            )
        except WrongExpectedVersion:
            raise TokenProblem("that token is already used or revoked") from None
        return state.enrolment_tokens[token_id]

    async def redeem(self, token: str, *, client_name: str, client_address: str) -> Enrolled:
        """Enrol a node with ``token``; every refusal is an ``invalid_grant`` that says why."""
        now = self.clock()
        wait = self._bad.blocked(client_address, now)
        if wait:
            raise DeviceFlowError("slow_down", "too many invalid enrolment tokens from this "
                                  f"address; retry in {math.ceil(wait)} s", status=429)
        found = self._find(token, client_address, now)
        problem = self._unusable(found, now)
        if problem:
            raise DeviceFlowError("invalid_grant", problem)
        enrolled, events = enrol_events(
            self.accounts, self.server_secret, owner_id=found.owner_id,
            name=clean_client_name(client_name), at=now,
        )
        events.append(ev.EnrolmentTokenRedeemed(
            at=now, actor=f"node:{enrolled.node_id}", token_id=found.token_id,
            node_id=enrolled.node_id))
        stream = f"enrolment-token-{found.token_id}"
        try:
            await self.log.commit(events, {stream: found.events - 1})
        except WrongExpectedVersion:
            raise DeviceFlowError(
                "invalid_grant", "this enrolment token was already used") from None
        return enrolled

    def _find(self, token: str, client_address: str, now: float) -> EnrolmentToken:
        if not well_formed(token, ENROLMENT_TOKEN_PREFIX):
            self._bad.hit(client_address, now)
            raise DeviceFlowError("invalid_grant", "this is not an enrolment token (they start "
                                  f"with {ENROLMENT_TOKEN_PREFIX} and were copied whole)")
        state = self.log.state
        digest = token_hash(self.server_secret, token)
        token_id = state.enrolment_tokens_by_hash.get(digest)
        found = state.enrolment_tokens.get(token_id) if token_id else None
        if found is None or found.token_hash != digest:
            self._bad.hit(client_address, now)
            raise DeviceFlowError("invalid_grant", "unknown enrolment token")
        return found

    def _unusable(self, token: EnrolmentToken, now: float) -> str:
        if token.used_at is not None:
            return f"this enrolment token was already used (it enrolled {token.node_id})"
        if token.revoked_at is not None:
            return "this enrolment token was revoked by its owner"
        if now >= token.expires_at:
            return "this enrolment token has expired; mint a new one under Earn → Add node"
        owner = self.accounts.get(token.owner_id)
        if owner is None or owner.disabled:
            return "the account that minted this enrolment token is disabled"
        return ""
