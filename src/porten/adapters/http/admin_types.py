"""Bodies the admin API accepts and the views it returns (shapes: ``docs/admin.md``).

Request bodies forbid unknown fields: a misspelt ``"region"`` for
``"regions"`` on a policy must be a 400, never a key that silently allows
every region.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from porten.adapters.http import errors
from porten.domain.state import CatalogModel, KeyState, NodeState
from porten.domain.values import Fleet, KeyPolicy, Role, TrustClass
from porten.services.accounts import Account

T = TypeVar("T")


class PolicyBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A key policy as JSON; omitted fields mean "no restriction"."""

    regions: list[str] = []
    min_trust: TrustClass = "community"
    fleet: Fleet = "all"
    models: list[str] = []
    requests_per_min: int | None = None
    tokens_per_min: int | None = None
    budget_usd: float | None = None

    def policy(self) -> KeyPolicy:
        """The domain value."""
        return KeyPolicy(
            regions=frozenset(self.regions), min_trust=self.min_trust, fleet=self.fleet,
            models=frozenset(self.models), requests_per_min=self.requests_per_min,
            tokens_per_min=self.tokens_per_min, budget_usd=self.budget_usd,
        )


class NewKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /admin/v1/keys``."""

    owner_id: str
    name: str = ""
    policy: PolicyBody = msgspec.field(default_factory=PolicyBody)


class Revocation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /admin/v1/keys/{id}/revoke``."""

    reason: str = ""


class NewUser(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /admin/v1/users`` (no password: one is generated and returned once)."""

    email: str
    name: str = ""
    role: Role = "user"
    password: str | None = None


class UserChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PATCH /admin/v1/users/{id}``; absent fields stay as they are."""

    role: Role | None = None
    disabled: bool | None = None
    disabled_reason: str = ""
    node_region: str | None = None
    node_trust_class: TrustClass | None = None


class NodeChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PATCH /admin/v1/nodes/{id}``."""

    region: str | None = None
    trust_class: TrustClass | None = None


class ModelChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PATCH /admin/v1/catalog/{id}``: prices in USD per million tokens."""

    price_in_per_m: float | None = None
    price_out_per_m: float | None = None


class Withdrawal(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /admin/v1/catalog/{id}/disable``."""

    reason: str = ""


def decode_body(data: bytes, type_: type[T]) -> T:
    """``data`` as ``type_``, or a 400 naming the field that is wrong."""
    if not data.strip():
        data = b"{}"
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise errors.invalid_value(None, f"Invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise errors.invalid_json(f"The request body is not valid JSON: {exc}") from None


def key_view(key: KeyState) -> dict[str, Any]:
    """A key as the admin API shows it: never the token or its hash."""
    p = key.policy
    return {
        "id": key.key_id, "owner_id": key.owner_id, "name": key.name, "prefix": key.prefix,
        "created_at": key.created_at, "revoked_at": key.revoked_at,
        "spent_usd": round(key.spent_usd, 9),
        "policy": {
            "regions": sorted(p.regions), "min_trust": p.min_trust, "fleet": p.fleet,
            "models": sorted(p.models), "requests_per_min": p.requests_per_min,
            "tokens_per_min": p.tokens_per_min, "budget_usd": p.budget_usd,
        },
    }


def account_view(a: Account) -> dict[str, Any]:
    """An account as the admin API shows it: never the password or its hash."""
    return {
        "id": a.user_id, "email": a.email, "name": a.name, "role": a.role,
        "disabled": a.disabled, "created_at": a.created_at, "node_region": a.node_region,
        "node_trust_class": a.node_trust_class,
    }


def node_view(n: NodeState) -> dict[str, Any]:
    """A node as the admin API shows it."""
    return {
        "id": n.node_id, "owner_id": n.owner_id, "name": n.name, "region": n.region,
        "trust_class": n.trust_class, "online": n.online, "engine": n.engine,
        "models_ready": sorted(n.ready_models()), "requests_served": n.requests_served,
    }


def model_view(c: CatalogModel) -> dict[str, Any]:
    """A catalog model as the admin API shows it."""
    e = c.entry
    return {
        "id": e.id, "offered": c.offered, "type": e.type, "ctx": e.ctx,
        "vram_mb": e.vram_mb, "disk_mb": e.disk_mb, "price_in_per_m": e.price_in_per_m,
        "price_out_per_m": e.price_out_per_m,
    }
