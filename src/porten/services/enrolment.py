"""Enrolling a node through the browser: the device-authorisation flow of RFC 8628.

The agent asks for a code (:meth:`DeviceFlow.start`), prints the short
*user code* and the URL, and polls with the long *device code*
(:meth:`DeviceFlow.poll`). The owner signs in to the portal, types the user
code (:meth:`DeviceFlow.find`) and approves it (:meth:`DeviceFlow.approve`);
the agent's next poll turns the approved grant into a node bound to that
account (``node_enrolled`` with a fresh credential, and
``device_code_redeemed`` in the same transaction) and receives the
credential — once.

What makes it safe:

* **Codes are secrets**: only their keyed hashes reach the log. User codes
  are 8 characters from RFC 8628's 20 consonants (no vowels, so no words; no
  0/O or 1/I) — about 34 bits, read aloud without confusion.
* **Expiring and single-use**: a grant lives :data:`CODE_TTL_S`; it is
  decided once and redeemed once, the latter enforced by the grant stream's
  expected version, so two hubs (or two racing polls) cannot both redeem it.
* **Rate-limited**: an address may start :data:`STARTS_PER_WINDOW` flows per
  window; an account may enter :data:`WRONG_CODES_PER_WINDOW` wrong codes per
  window before it is locked out of entering any (so a user code cannot be
  brute-forced); and polls faster than the interval get ``slow_down``, which
  adds 5 seconds to the interval for good (RFC 8628 §3.5).

The counters are per hub process (in memory); the grants themselves are in
the log, so any hub can serve any step.
"""

from __future__ import annotations

import math
import secrets
import uuid
from collections.abc import Callable
from typing import Final

import attrs

from porten.domain import events as ev
from porten.domain.ports import NO_STREAM, WrongExpectedVersion
from porten.domain.state import DeviceGrant
from porten.services._enrol import (
    DeviceFlowError,
    Enrolled,
    RateWindow,
    clean_client_name,
    enrol_events,
)
from porten.services.accounts import Accounts
from porten.services.control import Log
from porten.services.credentials import token_hash

#: RFC 8628 §6.1: consonants only, none confusable with a digit.
USER_CODE_ALPHABET: Final = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH: Final = 8
CODE_TTL_S: Final = 600.0
POLL_INTERVAL_S: Final = 5
SLOW_DOWN_STEP_S: Final = 5
#: An approved grant may still be collected this long after it expired (a poll in flight).
REDEEM_GRACE_S: Final = 60.0
STARTS_PER_WINDOW: Final = 20
WRONG_CODES_PER_WINDOW: Final = 5
WINDOW_S: Final = 900.0


class ApprovalProblem(Exception):
    """The code an owner entered cannot be approved; ``message`` is shown on the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@attrs.frozen
class DeviceStart:
    """What the agent shows and polls with (RFC 8628 §3.2)."""

    grant_id: str
    device_code: str = attrs.field(repr=False)
    user_code: str
    expires_in: int
    interval: int


def normalise_user_code(text: str) -> str | None:
    """``text`` as a user code (case, spaces and dashes ignored), or ``None`` if it is not one."""
    code = "".join(c for c in text.upper() if c not in " -")
    if len(code) != USER_CODE_LENGTH or any(c not in USER_CODE_ALPHABET for c in code):
        return None
    return code


def display_user_code(code: str) -> str:
    """``WDJBMJHT`` as people read it: ``WDJB-MJHT``."""
    return f"{code[:4]}-{code[4:]}"


@attrs.define
class DeviceFlow:
    """RFC 8628 device grants over the log."""

    log: Log
    accounts: Accounts
    server_secret: bytes = attrs.field(repr=False)
    clock: Callable[[], float]
    ttl_s: float = CODE_TTL_S
    interval_s: int = POLL_INTERVAL_S
    _starts: RateWindow = attrs.field(factory=lambda: RateWindow(STARTS_PER_WINDOW, WINDOW_S))
    _wrong: RateWindow = attrs.field(factory=lambda: RateWindow(WRONG_CODES_PER_WINDOW, WINDOW_S))
    #: grant id → (last poll time, interval now in force).
    _polls: dict[str, tuple[float, int]] = attrs.field(factory=dict)

    def _user_code_hash(self, code: str) -> str:
        return token_hash(self.server_secret, f"user-code:{code}")

    async def start(self, *, client_name: str, client_address: str) -> DeviceStart:
        """Issue a device code and a user code (``slow_down`` when the address asks too often)."""
        now = self.clock()
        wait = self._starts.hit(client_address, now)
        if wait:
            raise DeviceFlowError(
                "slow_down", f"too many enrolment attempts from this address; retry in "
                f"{math.ceil(wait)} s", status=429)
        device_code = secrets.token_urlsafe(32)
        user_code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
        grant_id = f"grant_{uuid.uuid4().hex[:16]}"
        await self.log.commit([ev.DeviceCodeIssued(
            at=now, actor="hub", grant_id=grant_id,
            device_code_hash=token_hash(self.server_secret, device_code),
            user_code_hash=self._user_code_hash(user_code),
            client_name=clean_client_name(client_name), expires_at=now + self.ttl_s,
            interval_s=self.interval_s,
        )], {f"device-{grant_id}": NO_STREAM})
        return DeviceStart(grant_id=grant_id, device_code=device_code, user_code=user_code,
                           expires_in=int(self.ttl_s), interval=self.interval_s)

    # --- the owner's side (the portal) -----------------------------------------------------

    def find(self, user_id: str, entered: str) -> DeviceGrant:
        """The pending grant whose user code ``user_id`` typed; wrong codes count against them."""
        now = self.clock()
        locked = self._wrong.blocked(user_id, now)
        if locked:
            raise ApprovalProblem(429, "Too many wrong codes. Wait "
                                       f"{math.ceil(locked / 60)} minutes and try again.")
        code = normalise_user_code(entered)
        state = self.log.state
        grant_id = state.grants_by_code.get(self._user_code_hash(code)) if code else None
        grant = state.device_grants.get(grant_id) if grant_id else None
        if grant is None or grant.user_code_hash != self._user_code_hash(code or ""):
            self._wrong.hit(user_id, now)
            raise ApprovalProblem(400, "That code is not valid. Check it against the code your "
                                       "machine shows.")
        self._check_pending(grant, now)
        return grant

    def _check_pending(self, grant: DeviceGrant, now: float) -> None:
        if grant.status != "pending":
            raise ApprovalProblem(400, "That code has already been used.")
        if now >= grant.expires_at:
            raise ApprovalProblem(400, "That code has expired. Run `porten agent login` on the "
                                       "machine again for a new one.")

    async def approve(self, user_id: str, grant_id: str) -> DeviceGrant:
        """Approve the grant: the node it becomes will be ``user_id``'s."""
        return await self._decide(user_id, grant_id, approve=True)

    async def deny(self, user_id: str, grant_id: str) -> DeviceGrant:
        """Refuse the grant: the agent's next poll gets ``access_denied``."""
        return await self._decide(user_id, grant_id, approve=False)

    async def _decide(self, user_id: str, grant_id: str, *, approve: bool) -> DeviceGrant:
        now = self.clock()
        grant = self.log.state.device_grants.get(grant_id)
        if grant is None:
            raise ApprovalProblem(400, "That code is not valid. Check it against the code your "
                                       "machine shows.")
        self._check_pending(grant, now)
        cls = ev.DeviceCodeApproved if approve else ev.DeviceCodeDenied
        try:
            state = await self.log.commit(
                [cls(at=now, actor=f"user:{user_id}", grant_id=grant_id, owner_id=user_id)],
                {f"device-{grant_id}": grant.events - 1},
            )
        except WrongExpectedVersion:
            raise ApprovalProblem(400, "That code has already been used.") from None
        return state.device_grants[grant_id]

    # --- the agent's side ----------------------------------------------------------------------

    async def poll(self, device_code: str) -> Enrolled:
        """The credential once approved; else the RFC 8628 §3.5 error the agent acts on."""
        now = self.clock()
        state = self.log.state
        grant_id = state.grants_by_code.get(token_hash(self.server_secret, device_code))
        grant = state.device_grants.get(grant_id) if grant_id else None
        if grant is None or grant.device_code_hash != token_hash(self.server_secret, device_code):
            raise DeviceFlowError("invalid_grant", "unknown device code")
        if grant.status == "redeemed":
            raise DeviceFlowError("invalid_grant", "this device code was already used")
        if grant.status == "denied":
            raise DeviceFlowError("access_denied", "the owner denied this enrolment")
        expired = now >= grant.expires_at + (REDEEM_GRACE_S if grant.status == "approved" else 0)
        if expired:
            raise DeviceFlowError("expired_token", "the code expired before it was approved")
        if grant.status == "pending":
            self._pace(grant, now)  # only waiting is paced: a decided grant answers at once
            raise DeviceFlowError("authorization_pending", "waiting for the owner to approve")
        return await self._redeem(grant, now)

    def _pace(self, grant: DeviceGrant, now: float) -> None:
        last, interval = self._polls.get(grant.grant_id, (-math.inf, grant.interval_s))
        if now - last < interval:
            self._polls[grant.grant_id] = (now, interval + SLOW_DOWN_STEP_S)
            raise DeviceFlowError(
                "slow_down", f"poll at most every {interval + SLOW_DOWN_STEP_S} s",
                interval=interval + SLOW_DOWN_STEP_S)
        self._polls = {g: v for g, v in self._polls.items() if v[0] > now - 2 * self.ttl_s}
        self._polls[grant.grant_id] = (now, interval)

    async def _redeem(self, grant: DeviceGrant, now: float) -> Enrolled:
        enrolled, events = enrol_events(
            self.accounts, self.server_secret, owner_id=grant.owner_id,
            name=grant.client_name, at=now,
        )
        events.append(ev.DeviceCodeRedeemed(at=now, actor=f"node:{enrolled.node_id}",
                                            grant_id=grant.grant_id, node_id=enrolled.node_id))
        try:
            await self.log.commit(events, {f"device-{grant.grant_id}": grant.events - 1})
        except WrongExpectedVersion:
            raise DeviceFlowError("invalid_grant", "this device code was already used") from None
        return enrolled

