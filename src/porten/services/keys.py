"""API keys: minted once, stored as a keyed hash, governed by a policy, revocable.

The service API the admin API, the CLI and the portal share::

    keys = hub.keys
    minted = await keys.create(owner_id, name="ci", policy=KeyPolicy(regions=frozenset({"eu"})),
                               actor="user:usr_…")
    minted.token          # "sk-porten-…": shown to the user once, never stored or logged
    minted.key            # the KeyState as folded (id, owner, prefix, policy)
    await keys.set_policy(key_id, policy, actor=...)   # replaces the policy as a whole
    await keys.revoke(key_id, reason="leaked", actor=...)
    keys.get(key_id); keys.owned_by(owner_id); keys.all()

A policy is checked (:func:`policy_problem`) before it is recorded, so the
router never meets a nonsensical one. ``audit=True`` (an operator acting)
records an ``admin_action_taken`` in the same transaction; its detail holds
the key id, name and policy, never the token.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Final

import attrs
import msgspec

from porten.domain import events as ev
from porten.domain.ports import NO_STREAM
from porten.domain.state import KeyState
from porten.domain.values import TRUST_ORDER, KeyPolicy
from porten.services.control import Log, audited
from porten.services.credentials import API_KEY_PREFIX, display_prefix, new_api_key, token_hash

MAX_NAME_LENGTH: Final = 200
#: The policy of a key with no restrictions.
OPEN_POLICY: Final = KeyPolicy()
#: Region and model names are ids: short, printable, no spaces.
MAX_ID_LENGTH: Final = 128


class KeyProblem(Exception):
    """A key request that cannot be done; the message is safe to show (never a token)."""


class UnknownKey(KeyProblem):
    """No key has this id."""


@attrs.frozen
class MintedKey:
    """A new key: its token (shown once) and its folded state."""

    token: str = attrs.field(repr=False)
    key: KeyState


def new_key_id() -> str:
    """A fresh key id (``key_`` and 16 hex characters): safe to log, unlike the token."""
    return f"key_{uuid.uuid4().hex[:16]}"


def _bad_id(value: str) -> bool:
    return not value or len(value) > MAX_ID_LENGTH or not value.isprintable() or " " in value


def policy_problem(policy: KeyPolicy) -> str:  # noqa: PLR0911 (one return per rule)
    """What is wrong with ``policy`` ("" if nothing), in words an operator can act on."""
    if any(_bad_id(r) for r in policy.regions):
        return "regions must be non-empty names without spaces"
    if policy.min_trust not in TRUST_ORDER:
        return f"min_trust must be one of {', '.join(TRUST_ORDER)}"
    if policy.fleet not in ("all", "own"):
        return "fleet must be all or own"
    if any(_bad_id(m) for m in policy.models):
        return "models must be non-empty model ids"
    for name in ("requests_per_min", "tokens_per_min"):
        limit = getattr(policy, name)
        if limit is not None and limit < 1:
            return f"{name} must be at least 1 (omit it for no limit; revoke a key to stop it)"
    if policy.budget_usd is not None and (
        not math.isfinite(policy.budget_usd) or policy.budget_usd < 0
    ):
        return "budget_usd must be a finite amount of at least 0"
    return ""


def policy_json(policy: KeyPolicy) -> str:
    """The policy as compact JSON (for the audit trail's detail)."""
    return msgspec.json.encode(policy, order="deterministic").decode()


@attrs.define
class Keys:
    """API keys over the log."""

    log: Log
    server_secret: bytes = attrs.field(repr=False)
    clock: Callable[[], float]

    def get(self, key_id: str) -> KeyState | None:
        """The key with ``key_id`` (revoked or not), if any."""
        return self.log.state.keys.get(key_id)

    def owned_by(self, owner_id: str) -> list[KeyState]:
        """The keys of ``owner_id``, oldest first."""
        return sorted((k for k in self.log.state.keys.values() if k.owner_id == owner_id),
                      key=lambda k: (k.created_at, k.key_id))

    def all(self) -> list[KeyState]:
        """Every key, oldest first."""
        return sorted(self.log.state.keys.values(), key=lambda k: (k.created_at, k.key_id))

    async def create(
        self, *, owner_id: str, name: str = "", policy: KeyPolicy = OPEN_POLICY, actor: str,
        audit: bool = False,
    ) -> MintedKey:
        """Mint a key for the account ``owner_id``; its token is in the result only."""
        if owner_id not in self.log.state.users:
            raise KeyProblem(f"no account with id {owner_id!r}")
        self._check(name, policy)
        token = new_api_key()
        key_id = new_key_id()
        event = ev.KeyCreated(
            at=self.clock(), actor=actor, key_id=key_id, owner_id=owner_id, name=name,
            secret_hash=token_hash(self.server_secret, token),
            prefix=display_prefix(token, API_KEY_PREFIX), policy=policy,
        )
        events = self._audited(audit, [event], actor, "key.create", key_id, owner_id=owner_id,
                               name=name, policy=policy_json(policy))
        state = await self.log.commit(events, {f"key-{key_id}": NO_STREAM})
        return MintedKey(token=token, key=state.keys[key_id])

    async def set_policy(
        self, key_id: str, policy: KeyPolicy, *, actor: str, audit: bool = False
    ) -> KeyState:
        """Replace the key's policy; it applies from the next request."""
        self._known(key_id)
        self._check("", policy)
        event = ev.KeyPolicyChanged(at=self.clock(), actor=actor, key_id=key_id, policy=policy)
        state = await self.log.commit(self._audited(
            audit, [event], actor, "key.policy", key_id, policy=policy_json(policy)))
        return state.keys[key_id]

    async def revoke(
        self, key_id: str, *, reason: str = "", actor: str, audit: bool = False
    ) -> KeyState:
        """Revoke the key: every hub process refuses it from the next request."""
        self._known(key_id)
        event = ev.KeyRevoked(at=self.clock(), actor=actor, key_id=key_id, reason=reason)
        state = await self.log.commit(
            self._audited(audit, [event], actor, "key.revoke", key_id, reason=reason)
        )
        return state.keys[key_id]

    def _known(self, key_id: str) -> KeyState:
        key = self.log.state.keys.get(key_id)
        if key is None:
            raise UnknownKey(f"no key with id {key_id!r}")
        return key

    @staticmethod
    def _check(name: str, policy: KeyPolicy) -> None:
        if len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise KeyProblem(f"the key's name must be printable, at most {MAX_NAME_LENGTH} "
                             "characters")
        problem = policy_problem(policy)
        if problem:
            raise KeyProblem(f"invalid policy: {problem}")

    def _audited(
        self, audit: bool, events: list[ev.AnyEvent], actor: str, action: str, target: str,
        **detail: str,
    ) -> list[ev.AnyEvent]:
        if not audit:
            return events
        return audited(events, at=self.clock(), actor=actor, action=action, target=target,
                       **detail)
