"""The fold's enrolment handlers: device grants (RFC 8628) and single-use enrolment tokens.

Kept apart from :mod:`porten.domain.fold` (which imports this module so the
handlers register) because enrolment is its own small state machine:
pending → approved | denied, approved → redeemed; a token is minted, then
redeemed or revoked, once. The fold records; the enrolment service decides
(expiry, who may approve) before it appends. Grants and tokens long past
their expiry are dropped when a new one is folded — using the new event's
own ``at``, so the fold stays a pure function of the log.
"""

from __future__ import annotations

from typing import Final

from msgspec.structs import replace

from porten.domain import events as ev
from porten.domain.fold import _on
from porten.domain.state import DeviceGrant, EnrolmentToken, FleetState

#: How long an expired grant stays in the state (so a late poll still hears "expired").
GRANT_RETENTION_S: Final = 24 * 3600.0
#: How long an expired or used token stays (so a second use hears "already used").
TOKEN_RETENTION_S: Final = 30 * 24 * 3600.0


def _prune_grants(state: FleetState, now: float) -> FleetState:
    stale = [g for g in state.device_grants.values() if g.expires_at + GRANT_RETENTION_S < now]
    if not stale:
        return state
    grants, codes = state.device_grants, state.grants_by_code
    for g in stale:
        grants = grants.delete(g.grant_id)
        for h in (g.device_code_hash, g.user_code_hash):
            if codes.get(h) == g.grant_id:
                codes = codes.delete(h)
    return replace(state, device_grants=grants, grants_by_code=codes)


def _prune_tokens(state: FleetState, now: float) -> FleetState:
    stale = [t for t in state.enrolment_tokens.values() if t.expires_at + TOKEN_RETENTION_S < now]
    if not stale:
        return state
    tokens, by_hash = state.enrolment_tokens, state.enrolment_tokens_by_hash
    for t in stale:
        tokens = tokens.delete(t.token_id)
        if by_hash.get(t.token_hash) == t.token_id:
            by_hash = by_hash.delete(t.token_hash)
    return replace(state, enrolment_tokens=tokens, enrolment_tokens_by_hash=by_hash)


@_on(ev.DeviceCodeIssued)
def _device_code_issued(state: FleetState, e: ev.DeviceCodeIssued) -> FleetState:
    state = _prune_grants(state, e.at)
    codes = state.grants_by_code
    old = state.device_grants.get(e.grant_id)
    if old is not None:  # a replayed grant id: counted in its stream, otherwise ignored
        counted = replace(old, events=old.events + 1)
        return replace(state, device_grants=state.device_grants.set(e.grant_id, counted))
    if (
        e.device_code_hash == e.user_code_hash
        or codes.get(e.device_code_hash, e.grant_id) != e.grant_id
        or codes.get(e.user_code_hash, e.grant_id) != e.grant_id
    ):
        return state  # a code that already names another grant
    grant = DeviceGrant(
        grant_id=e.grant_id, device_code_hash=e.device_code_hash,
        user_code_hash=e.user_code_hash, client_name=e.client_name, issued_at=e.at,
        expires_at=e.expires_at, interval_s=e.interval_s,
    )
    codes = codes.set(e.device_code_hash, e.grant_id).set(e.user_code_hash, e.grant_id)
    return replace(state, device_grants=state.device_grants.set(e.grant_id, grant),
                   grants_by_code=codes)


def _decide(state: FleetState, grant_id: str, **change: object) -> FleetState:
    grant = state.device_grants.get(grant_id)
    if grant is None:
        return state
    counted = replace(grant, events=grant.events + 1)  # every event in its stream counts
    allowed = (
        grant.status == "pending" if change["status"] in ("approved", "denied")
        else grant.status == "approved"  # only an approved grant becomes a node, once
    )
    new = replace(counted, **change) if allowed else counted
    return replace(state, device_grants=state.device_grants.set(grant_id, new))


@_on(ev.DeviceCodeApproved)
def _device_code_approved(state: FleetState, e: ev.DeviceCodeApproved) -> FleetState:
    return _decide(state, e.grant_id, status="approved", owner_id=e.owner_id)


@_on(ev.DeviceCodeDenied)
def _device_code_denied(state: FleetState, e: ev.DeviceCodeDenied) -> FleetState:
    return _decide(state, e.grant_id, status="denied", owner_id=e.owner_id)


@_on(ev.DeviceCodeRedeemed)
def _device_code_redeemed(state: FleetState, e: ev.DeviceCodeRedeemed) -> FleetState:
    return _decide(state, e.grant_id, status="redeemed", node_id=e.node_id)


@_on(ev.EnrolmentTokenMinted)
def _token_minted(state: FleetState, e: ev.EnrolmentTokenMinted) -> FleetState:
    state = _prune_tokens(state, e.at)
    old = state.enrolment_tokens.get(e.token_id)
    if old is not None:  # a replayed token id: counted in its stream, otherwise ignored
        counted = replace(old, events=old.events + 1)
        return replace(state, enrolment_tokens=state.enrolment_tokens.set(e.token_id, counted))
    if (
        state.enrolment_tokens_by_hash.get(e.token_hash, e.token_id) != e.token_id
    ):
        return state
    token = EnrolmentToken(
        token_id=e.token_id, owner_id=e.owner_id, token_hash=e.token_hash, prefix=e.prefix,
        name=e.name, created_at=e.at, expires_at=e.expires_at,
    )
    return replace(
        state, enrolment_tokens=state.enrolment_tokens.set(e.token_id, token),
        enrolment_tokens_by_hash=state.enrolment_tokens_by_hash.set(e.token_hash, e.token_id),
    )


def _with_unused_token(state: FleetState, token_id: str, **change: object) -> FleetState:
    token = state.enrolment_tokens.get(token_id)
    if token is None:
        return state
    counted = replace(token, events=token.events + 1)  # every event in its stream counts
    unused = token.used_at is None and token.revoked_at is None
    new = replace(counted, **change) if unused else counted
    return replace(state, enrolment_tokens=state.enrolment_tokens.set(token_id, new))


@_on(ev.EnrolmentTokenRedeemed)
def _token_redeemed(state: FleetState, e: ev.EnrolmentTokenRedeemed) -> FleetState:
    return _with_unused_token(state, e.token_id, used_at=e.at, node_id=e.node_id)


@_on(ev.EnrolmentTokenRevoked)
def _token_revoked(state: FleetState, e: ev.EnrolmentTokenRevoked) -> FleetState:
    return _with_unused_token(state, e.token_id, revoked_at=e.at)
