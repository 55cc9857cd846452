"""Accounts: the users who own keys and nodes, and the operators who run the hub.

This is the stable service API the portal (sign-in, key management) and
device-code enrolment build on. Everything is an event in the log
(``user_created``, ``user_password_changed``, ``user_role_changed``,
``user_disabled``, ``user_enabled``, ``user_node_defaults_set``), so every
hub process sees the same accounts, and lookups read the folded state in
memory (no I/O). The hub holds one :class:`Accounts` as ``hub.accounts``::

    accounts = hub.accounts

    # open an account (validates email and password; EmailTaken if the email is in use)
    account = await accounts.create_user(
        "ada@example.org", "correct horse battery", name="Ada", actor="portal"
    )

    # sign in: the Account, or None for a wrong password, unknown email or disabled account
    account = await accounts.verify_password("ada@example.org", "correct horse battery")

    accounts.get(account.user_id)        # Account | None — by id, in memory
    accounts.by_email("Ada@Example.org") # Account | None — emails are case-insensitive
    accounts.is_operator(account.user_id)  # True only for an active operator

    # node enrolment: the region and trust class a new node of this account starts with
    region, trust_class = accounts.node_defaults(account.user_id)

    # changes (each an event whose ``actor`` is the caller's, e.g. "user:<id>" or "cli:root")
    await accounts.set_password(user_id, "new passphrase here", actor=...)
    await accounts.set_role(user_id, "operator", actor=...)
    await accounts.disable(user_id, reason="left the team", actor=...)
    await accounts.enable(user_id, actor=...)
    await accounts.set_node_defaults(user_id, region="eu", trust_class="verified", actor=...)

:class:`Account` is a frozen value without the password hash; nothing here
ever logs or returns a password or its hash. Failures are
:class:`AccountError` subclasses whose message is safe to show the user:
:class:`InvalidEmail`, :class:`WeakPassword`, :class:`EmailTaken`,
:class:`UnknownUser`.

A disabled account cannot sign in and its API keys stop working on their
next request (authentication checks the owner); enabling it restores both.
Operators are accounts with ``role == "operator"``; the first one is made
with ``porten admin create-user --admin``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Final

import attrs
import msgspec

from porten.domain import events as ev
from porten.domain.ports import NO_STREAM
from porten.domain.state import FleetState, UserState
from porten.domain.values import TRUST_ORDER, Role, TrustClass
from porten.services.control import Log, audited
from porten.services.passwords import Passwords, password_problem

_EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_EMAIL_LENGTH: Final = 254
MAX_NAME_LENGTH: Final = 200


class Account(msgspec.Struct, frozen=True, kw_only=True):
    """An account as callers see it: never the password or its hash."""

    user_id: str
    email: str
    name: str
    role: Role
    created_at: float
    disabled: bool
    node_region: str
    node_trust_class: TrustClass

    @property
    def is_operator(self) -> bool:
        """Whether the account may use the admin API (an active operator)."""
        return self.role == "operator" and not self.disabled


def account_of(user: UserState) -> Account:
    """The public view of a folded user."""
    return Account(
        user_id=user.user_id, email=user.email, name=user.name, role=user.role,
        created_at=user.created_at, disabled=not user.active, node_region=user.node_region,
        node_trust_class=user.node_trust_class,
    )


class AccountError(Exception):
    """A request about an account that cannot be done; the message is safe to show."""


class InvalidEmail(AccountError):
    """The email address is not one."""


class WeakPassword(AccountError):
    """The password does not meet the minimum (the message says which rule, never the password)."""


class EmailTaken(AccountError):
    """Another account already uses this email."""


class UnknownUser(AccountError):
    """No account has this id."""


def normalise_email(email: str) -> str:
    """``email`` trimmed and lower-cased, or :class:`InvalidEmail`."""
    e = email.strip().lower()
    if len(e) > MAX_EMAIL_LENGTH or not _EMAIL.match(e):
        raise InvalidEmail("that is not an email address")
    return e


def new_user_id() -> str:
    """A fresh account id (``usr_`` and 16 hex characters)."""
    return f"usr_{uuid.uuid4().hex[:16]}"


@attrs.define
class Accounts:
    """Accounts over the log: lookups read the folded state, changes are events."""

    log: Log
    clock: Callable[[], float]
    passwords: Passwords = attrs.field(factory=Passwords)

    # --- lookups (in memory) -------------------------------------------------------------

    def get(self, user_id: str) -> Account | None:
        """The account with ``user_id``, if any."""
        user = self.log.state.users.get(user_id)
        return account_of(user) if user is not None else None

    def by_email(self, email: str) -> Account | None:
        """The account whose email is ``email`` (case-insensitive), if any."""
        state = self.log.state
        user_id = state.users_by_email.get(email.strip().lower())
        user = state.users.get(user_id) if user_id is not None else None
        return account_of(user) if user is not None else None

    def is_operator(self, user_id: str) -> bool:
        """Whether ``user_id`` is an active operator."""
        user = self.log.state.users.get(user_id)
        return user is not None and user.is_operator

    def node_defaults(self, user_id: str) -> tuple[str, TrustClass]:
        """The (region, trust class) a node enrolled by ``user_id`` starts with."""
        user = self._user(self.log.state, user_id)
        return user.node_region, user.node_trust_class

    def all(self) -> list[Account]:
        """Every account, by email."""
        return sorted((account_of(u) for u in self.log.state.users.values()),
                      key=lambda a: a.email)

    # --- sign-in -----------------------------------------------------------------------------

    async def verify_password(self, email: str, password: str) -> Account | None:
        """The account if ``password`` is its password and it is active; else ``None``.

        Takes about as long for an unknown email as for a wrong password. A hash
        made with older argon2 parameters is upgraded on a successful sign-in.
        """
        state = self.log.state
        user_id = state.users_by_email.get(email.strip().lower())
        user = state.users.get(user_id) if user_id is not None else None
        ok = await self.passwords.verify(user.password_hash if user else None, password)
        if not ok or user is None or not user.active:
            return None
        if self.passwords.needs_rehash(user.password_hash):
            await self.log.commit([ev.UserPasswordChanged(
                at=self.clock(), actor="hub", user_id=user.user_id,
                password_hash=await self.passwords.hash(password),
            )])
        return account_of(user)

    # --- changes -------------------------------------------------------------------------

    async def create_user(
        self, email: str, password: str, *, name: str = "", operator: bool = False,
        actor: str, audit: bool = False,
    ) -> Account:
        """Open an account; :class:`EmailTaken` if the email is in use (case-insensitive).

        ``audit`` (an operator's action) also records an ``admin_action_taken``.
        """
        address = normalise_email(email)
        problem = password_problem(password)
        if problem:
            raise WeakPassword(problem)
        if len(name) > MAX_NAME_LENGTH:
            raise AccountError(f"the name must be at most {MAX_NAME_LENGTH} characters")
        if address in self.log.state.users_by_email:
            raise EmailTaken("an account with this email already exists")
        user_id = new_user_id()
        event = ev.UserCreated(
            at=self.clock(), actor=actor, user_id=user_id, email=address, name=name,
            password_hash=await self.passwords.hash(password),
            role="operator" if operator else "user",
        )
        events = self._audited(audit, [event], actor, "user.create", user_id,
                               email=address, role=event.role)
        state = await self.log.commit(events, {f"user-{user_id}": NO_STREAM})
        if state.users_by_email.get(address) != user_id:  # another process won the race
            raise EmailTaken("an account with this email already exists")
        return account_of(state.users[user_id])

    async def set_password(
        self, user_id: str, password: str, *, actor: str, audit: bool = False
    ) -> None:
        """Replace the account's password."""
        self._user(self.log.state, user_id)
        problem = password_problem(password)
        if problem:
            raise WeakPassword(problem)
        event = ev.UserPasswordChanged(
            at=self.clock(), actor=actor, user_id=user_id,
            password_hash=await self.passwords.hash(password),
        )
        await self.log.commit(self._audited(audit, [event], actor, "user.password", user_id))

    async def set_role(
        self, user_id: str, role: Role, *, actor: str, audit: bool = False
    ) -> Account:
        """Make the account an operator (``"operator"``) or a plain user (``"user"``)."""
        self._user(self.log.state, user_id)
        if role not in ("user", "operator"):
            raise AccountError("role must be user or operator")
        event = ev.UserRoleChanged(at=self.clock(), actor=actor, user_id=user_id, role=role)
        state = await self.log.commit(
            self._audited(audit, [event], actor, "user.role", user_id, role=role)
        )
        return account_of(state.users[user_id])

    async def disable(
        self, user_id: str, *, reason: str = "", actor: str, audit: bool = False
    ) -> Account:
        """Stop the account signing in and its keys working."""
        self._user(self.log.state, user_id)
        event = ev.UserDisabled(at=self.clock(), actor=actor, user_id=user_id, reason=reason)
        state = await self.log.commit(
            self._audited(audit, [event], actor, "user.disable", user_id, reason=reason)
        )
        return account_of(state.users[user_id])

    async def enable(self, user_id: str, *, actor: str, audit: bool = False) -> Account:
        """Undo :meth:`disable`."""
        self._user(self.log.state, user_id)
        event = ev.UserEnabled(at=self.clock(), actor=actor, user_id=user_id)
        state = await self.log.commit(self._audited(audit, [event], actor, "user.enable",
                                                    user_id))
        return account_of(state.users[user_id])

    async def set_node_defaults(
        self, user_id: str, *, region: str, trust_class: TrustClass, actor: str,
        audit: bool = False,
    ) -> Account:
        """Set the region and trust class the account's newly enrolled nodes get."""
        self._user(self.log.state, user_id)
        if trust_class not in TRUST_ORDER:
            raise AccountError(f"trust class must be one of {', '.join(TRUST_ORDER)}")
        event = ev.UserNodeDefaultsSet(
            at=self.clock(), actor=actor, user_id=user_id, region=region,
            trust_class=trust_class,
        )
        state = await self.log.commit(self._audited(
            audit, [event], actor, "user.node_defaults", user_id, region=region,
            trust_class=trust_class,
        ))
        return account_of(state.users[user_id])

    def _audited(
        self, audit: bool, events: list[ev.AnyEvent], actor: str, action: str, target: str,
        **detail: str,
    ) -> list[ev.AnyEvent]:
        if not audit:
            return events
        return audited(events, at=self.clock(), actor=actor, action=action, target=target,
                       **detail)

    @staticmethod
    def _user(state: FleetState, user_id: str) -> UserState:
        user = state.users.get(user_id)
        if user is None:
            raise UnknownUser(f"no account with id {user_id!r}")
        return user
