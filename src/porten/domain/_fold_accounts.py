"""The fold's account handlers: ``user_*`` events into ``FleetState.users``.

Kept apart from :mod:`porten.domain.fold` only for size; the same rules hold:
pure, total, and an event about an unknown account changes nothing. The
first account to claim an email keeps it (ids and emails are unique in the
state however the log was written).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from msgspec.structs import replace

from porten.domain import events as ev
from porten.domain.state import FleetState, UserState


def _with_user(
    state: FleetState, user_id: str, change: Callable[[UserState], UserState]
) -> FleetState:
    user = state.users.get(user_id)
    if user is None:
        return state
    return replace(state, users=state.users.set(user_id, change(user)))


def _user_created(state: FleetState, e: ev.UserCreated) -> FleetState:
    email = e.email.lower()
    if e.user_id in state.users or email in state.users_by_email:
        return state  # first come keeps the id and the email: a second claim is ignored
    u = UserState(
        user_id=e.user_id,
        email=email,
        name=e.name,
        password_hash=e.password_hash,
        role=e.role,
        created_at=e.at,
    )
    return replace(
        state,
        users=state.users.set(e.user_id, u),
        users_by_email=state.users_by_email.set(email, e.user_id),
    )


def _user_password_changed(state: FleetState, e: ev.UserPasswordChanged) -> FleetState:
    return _with_user(state, e.user_id, lambda u: replace(u, password_hash=e.password_hash))


def _user_role_changed(state: FleetState, e: ev.UserRoleChanged) -> FleetState:
    return _with_user(state, e.user_id, lambda u: replace(u, role=e.role))


def _user_disabled(state: FleetState, e: ev.UserDisabled) -> FleetState:
    return _with_user(
        state, e.user_id, lambda u: u if u.disabled_at is not None else replace(u, disabled_at=e.at)
    )


def _user_enabled(state: FleetState, e: ev.UserEnabled) -> FleetState:
    return _with_user(state, e.user_id, lambda u: replace(u, disabled_at=None))


def _user_node_defaults(state: FleetState, e: ev.UserNodeDefaultsSet) -> FleetState:
    return _with_user(
        state, e.user_id,
        lambda u: replace(u, node_region=e.region, node_trust_class=e.trust_class),
    )


#: Event type → handler, merged into the fold's table.
ACCOUNT_HANDLERS: Final[dict[type[ev.Event], Callable[[FleetState, Any], FleetState]]] = {
    ev.UserCreated: _user_created,
    ev.UserPasswordChanged: _user_password_changed,
    ev.UserRoleChanged: _user_role_changed,
    ev.UserDisabled: _user_disabled,
    ev.UserEnabled: _user_enabled,
    ev.UserNodeDefaultsSet: _user_node_defaults,
}
