"""Accounts over a real Postgres log: sign-up, sign-in, roles, disabling, argon2 hashes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import argon2
import pytest

from porten.adapters.postgres.event_store import PostgresEventStore
from porten.domain import events as ev
from porten.services.accounts import (
    Accounts,
    EmailTaken,
    InvalidEmail,
    UnknownUser,
    WeakPassword,
)
from porten.services.control import ControlLog
from porten.services.passwords import Passwords
from porten.services.projection import FleetProjection

pytestmark = pytest.mark.postgres

#: Real argon2id, with parameters cheap enough for tests (the product uses the library's defaults).
CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery"


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PostgresEventStore]:
    """A migrated event store on a fresh database."""
    s = await PostgresEventStore.open(database_url)
    try:
        yield s
    finally:
        await s.aclose()


async def accounts_on(store: PostgresEventStore, hasher: argon2.PasswordHasher = CHEAP) -> Accounts:
    """An Accounts service over ``store``, its projection caught up."""
    projection = FleetProjection(store)
    await projection.catch_up()
    log = ControlLog(projection=projection, append=store.append)
    return Accounts(log=log, clock=time.time, passwords=Passwords(hasher))


@pytest.fixture
async def accounts(store: PostgresEventStore) -> Accounts:
    """Accounts on a fresh log."""
    return await accounts_on(store)


async def test_a_new_account_signs_in_with_its_password(accounts: Accounts) -> None:
    """create_user then verify_password with the same password gives the same account."""
    made = await accounts.create_user("Ada@Example.org", PASSWORD, name="Ada", actor="test")
    assert made.email == "ada@example.org"
    assert made.role == "user"
    assert not made.is_operator
    signed_in = await accounts.verify_password("ada@example.org", PASSWORD)
    assert signed_in == made
    assert accounts.get(made.user_id) == made
    assert accounts.by_email("ADA@example.ORG") == made


async def test_wrong_password_and_unknown_email_both_fail(accounts: Accounts) -> None:
    """A wrong password and an unknown email are the same None (no account probing)."""
    await accounts.create_user("ada@example.org", PASSWORD, actor="test")
    assert await accounts.verify_password("ada@example.org", PASSWORD + "!") is None
    assert await accounts.verify_password("nobody@example.org", PASSWORD) is None
    assert await accounts.verify_password("ada@example.org", "") is None


async def test_the_password_is_stored_only_as_argon2id(
    accounts: Accounts, store: PostgresEventStore
) -> None:
    """The user_created event holds an argon2id hash, never the password itself."""
    await accounts.create_user("ada@example.org", PASSWORD, actor="test")
    raw = b"".join(r.data for r in await store.read_raw())
    assert PASSWORD.encode() not in raw
    [created] = [r.event for r in await store.read() if isinstance(r.event, ev.UserCreated)]
    assert created.password_hash.startswith("$argon2id$")


async def test_an_email_opens_one_account_only(accounts: Accounts) -> None:
    """A second account with the same email, in any case, is EmailTaken."""
    await accounts.create_user("ada@example.org", PASSWORD, actor="test")
    with pytest.raises(EmailTaken, match="already exists"):
        await accounts.create_user(" ADA@example.org ", PASSWORD, actor="test")


@pytest.mark.parametrize("email", ["", "ada", "ada@", "@example.org", "a b@example.org",
                                   "ada@example", "a" * 250 + "@example.org"])
async def test_malformed_emails_are_refused(accounts: Accounts, email: str) -> None:
    """Something that is not an email address is InvalidEmail."""
    with pytest.raises(InvalidEmail, match=r"^that is not an email address$"):
        await accounts.create_user(email, PASSWORD, actor="test")


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short", "at least 10 characters"),
        (" padded password ", "must not start or end with spaces"),
        ("x" * 1025, "at most 1024 characters"),
        ("has\ncontrol chars", "control characters"),
    ],
)
async def test_weak_passwords_are_refused(accounts: Accounts, password: str, message: str) -> None:
    """A password under the minimum is WeakPassword, and the message never quotes it."""
    with pytest.raises(WeakPassword, match=message) as info:
        await accounts.create_user("ada@example.org", password, actor="test")
    assert password not in str(info.value)


async def test_operators_are_operators_until_disabled(accounts: Accounts) -> None:
    """is_operator holds for an active operator only; a role change and disabling take effect."""
    op = await accounts.create_user("op@example.org", PASSWORD, operator=True, actor="test")
    user = await accounts.create_user("u@example.org", PASSWORD, actor="test")
    assert accounts.is_operator(op.user_id)
    assert not accounts.is_operator(user.user_id)
    assert not accounts.is_operator("usr_unknown")
    await accounts.set_role(user.user_id, "operator", actor=f"user:{op.user_id}")
    assert accounts.is_operator(user.user_id)
    await accounts.disable(op.user_id, reason="left", actor=f"user:{user.user_id}")
    assert not accounts.is_operator(op.user_id)
    assert await accounts.verify_password("op@example.org", PASSWORD) is None
    await accounts.enable(op.user_id, actor=f"user:{user.user_id}")
    assert accounts.is_operator(op.user_id)
    assert await accounts.verify_password("op@example.org", PASSWORD) is not None


async def test_a_new_password_replaces_the_old(accounts: Accounts) -> None:
    """After set_password only the new password signs in."""
    a = await accounts.create_user("ada@example.org", PASSWORD, actor="test")
    await accounts.set_password(a.user_id, "another long passphrase", actor="test")
    assert await accounts.verify_password("ada@example.org", PASSWORD) is None
    assert await accounts.verify_password("ada@example.org", "another long passphrase") == a


async def test_weaker_hashes_are_upgraded_at_sign_in(store: PostgresEventStore) -> None:
    """A hash made with older, cheaper parameters is replaced by one with the current ones."""
    old = await accounts_on(store)
    a = await old.create_user("ada@example.org", PASSWORD, actor="test")
    stronger = argon2.PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    new = await accounts_on(store, stronger)
    assert await new.verify_password("ada@example.org", PASSWORD) == a
    changes = [r.event for r in await store.read() if isinstance(r.event, ev.UserPasswordChanged)]
    assert len(changes) == 1
    assert not stronger.check_needs_rehash(changes[0].password_hash)
    assert await new.verify_password("ada@example.org", PASSWORD) == a


async def test_node_defaults_are_the_accounts_settings(accounts: Accounts) -> None:
    """node_defaults returns what an operator set, and starts at (no region, community)."""
    a = await accounts.create_user("ada@example.org", PASSWORD, actor="test")
    assert accounts.node_defaults(a.user_id) == ("", "community")
    await accounts.set_node_defaults(a.user_id, region="eu", trust_class="verified",
                                     actor="cli:root")
    assert accounts.node_defaults(a.user_id) == ("eu", "verified")


async def test_changes_to_unknown_accounts_are_refused(accounts: Accounts) -> None:
    """Every change names an existing account, or UnknownUser."""
    with pytest.raises(UnknownUser, match="no account with id 'usr_nope'"):
        await accounts.set_role("usr_nope", "operator", actor="test")
    with pytest.raises(UnknownUser):
        await accounts.disable("usr_nope", actor="test")
    with pytest.raises(UnknownUser):
        accounts.node_defaults("usr_nope")


async def test_audited_changes_record_an_admin_action(
    accounts: Accounts, store: PostgresEventStore
) -> None:
    """audit=True appends admin_action_taken with the actor, in the same transaction."""
    a = await accounts.create_user("ada@example.org", PASSWORD, operator=True, actor="cli:root",
                                   audit=True)
    actions = [r.event for r in await store.read() if isinstance(r.event, ev.AdminActionTaken)]
    assert [(e.actor, e.action, e.target) for e in actions] == [
        ("cli:root", "user.create", a.user_id)
    ]
    assert actions[0].detail == {"email": "ada@example.org", "role": "operator"}
