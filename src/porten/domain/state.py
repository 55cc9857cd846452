"""The fleet as the log says it is: immutable values built by :mod:`porten.domain.fold`.

Collections are :class:`immutables.Map` (a HAMT), so an update shares
everything it did not touch: folding one event costs a few microseconds
however large the fleet, and any older state stays valid to read. That is
what lets the hub hand the same snapshot to the router, the planner and a
debugging operator at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, Literal

import immutables
import msgspec

from porten.domain.values import (
    TRUST_ORDER,
    CatalogEntry,
    EngineKind,
    KeyPolicy,
    LoadPhase,
    Role,
    TrustClass,
)

#: How many demand windows each model keeps (with 60 s windows: one hour).
DEMAND_HISTORY: Final = 60


class CatalogModel(msgspec.Struct, frozen=True, kw_only=True):
    """A catalog entry and whether it is offered right now."""

    entry: CatalogEntry
    offered: bool
    changed_at: float


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    """One model on one node, from the load request until it is unloaded.

    ``phase`` moves requested → downloading → loading → ready. ``last_used_at``
    is the last request served from it (or when it became ready), which is
    what idle eviction measures. A ``draining`` placement takes no new
    requests and is unloaded once those in flight finish (``drained_for`` is
    the model it makes room for).
    """

    model_id: str
    phase: LoadPhase
    load_id: str = ""
    reason: str = ""
    done_bytes: int = 0
    total_bytes: int = 0
    since: float
    last_used_at: float
    draining: bool = False
    drained_for: str = ""

    @property
    def serving(self) -> bool:
        """Whether it takes new requests: ready and not draining."""
        return self.phase == "ready" and not self.draining


class LoadFailures(msgspec.Struct, frozen=True, kw_only=True):
    """Consecutive failed loads of one model on one node, for back-off."""

    count: int
    last_at: float
    last_error: str


class NodeState(msgspec.Struct, frozen=True, kw_only=True):
    """One node: who owns it, where it is, what it holds and whether it is reachable.

    ``region`` and ``trust_class`` only ever change through operator events.
    """

    node_id: str
    owner_id: str
    name: str = ""
    region: str = ""
    trust_class: TrustClass = "community"
    credential_hash: str = ""
    enrolled_at: float
    online: bool = False
    session_id: str = ""
    engine: EngineKind = ""
    provisionable: bool = False
    vram_total_mb: int = 0
    vram_budget_mb: int = 0
    disk_budget_mb: int = 0
    on_disk: frozenset[str] = frozenset()
    placements: immutables.Map[str, Placement] = immutables.Map()
    failures: immutables.Map[str, LoadFailures] = immutables.Map()
    last_seen_at: float = 0.0
    requests_served: int = 0
    tokens_served: int = 0

    def ready_models(self) -> Iterator[str]:
        """Models this node can serve right now (if it is online)."""
        return (m for m, p in self.placements.items() if p.serving)


class DemandWindow(msgspec.Struct, frozen=True, array_like=True):
    """Requests for a model in one window (served and unmet)."""

    start: float
    seconds: float
    served: int
    unmet: int


class ModelDemand(msgspec.Struct, frozen=True, kw_only=True):
    """Recent demand for one model, newest window last."""

    model_id: str
    windows: tuple[DemandWindow, ...] = ()
    last_request_at: float = 0.0


class KeyState(msgspec.Struct, frozen=True, kw_only=True):
    """An API key as stored: never the secret, only its keyed hash."""

    key_id: str
    owner_id: str
    name: str = ""
    secret_hash: str
    prefix: str = ""
    policy: KeyPolicy = KeyPolicy()
    created_at: float
    revoked_at: float | None = None
    #: Everything metered against the key so far (the budget's "spent").
    spent_usd: float = 0.0

    @property
    def active(self) -> bool:
        """Whether requests with this key are accepted."""
        return self.revoked_at is None


class UserState(msgspec.Struct, frozen=True, kw_only=True):
    """An account: owns keys and nodes. Never the password, only its argon2id hash."""

    user_id: str
    email: str
    name: str = ""
    password_hash: str = ""
    role: Role = "user"
    created_at: float
    disabled_at: float | None = None
    #: Region and trust class a node this account enrols starts with (operator-set).
    node_region: str = ""
    node_trust_class: TrustClass = "community"

    @property
    def active(self) -> bool:
        """Whether the account may sign in and its keys work."""
        return self.disabled_at is None

    @property
    def is_operator(self) -> bool:
        """Whether the account may use the admin API (an active operator)."""
        return self.role == "operator" and self.disabled_at is None


DeviceGrantStatus = Literal["pending", "approved", "denied", "redeemed"]


class DeviceGrant(msgspec.Struct, frozen=True, kw_only=True):
    """A browser enrolment in progress (RFC 8628): codes only as keyed hashes."""

    grant_id: str
    device_code_hash: str
    user_code_hash: str
    client_name: str = ""
    issued_at: float
    expires_at: float
    interval_s: int = 5
    status: DeviceGrantStatus = "pending"
    #: Who approved or denied it.
    owner_id: str = ""
    #: The node it became, once redeemed.
    node_id: str = ""
    #: Events in the grant's stream so far (its stream version is this minus one).
    events: int = 1


class EnrolmentToken(msgspec.Struct, frozen=True, kw_only=True):
    """A single-use token that enrols one node for its owner (never the token itself)."""

    token_id: str
    owner_id: str
    token_hash: str
    prefix: str = ""
    name: str = ""
    created_at: float
    expires_at: float
    used_at: float | None = None
    node_id: str = ""
    revoked_at: float | None = None
    events: int = 1


class FleetState(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the scheduler and router need, folded from the log."""

    catalog: immutables.Map[str, CatalogModel] = immutables.Map()
    nodes: immutables.Map[str, NodeState] = immutables.Map()
    demand: immutables.Map[str, ModelDemand] = immutables.Map()
    keys: immutables.Map[str, KeyState] = immutables.Map()
    #: secret hash → key id, so authentication is one lookup.
    keys_by_hash: immutables.Map[str, str] = immutables.Map()
    #: credential hash → node id, so an agent's connection is authenticated in one lookup.
    nodes_by_credential: immutables.Map[str, str] = immutables.Map()
    users: immutables.Map[str, UserState] = immutables.Map()
    #: lower-cased email → user id (the first account opened with an email keeps it).
    users_by_email: immutables.Map[str, str] = immutables.Map()
    #: Browser enrolments still of interest (expired ones are dropped a day later).
    device_grants: immutables.Map[str, DeviceGrant] = immutables.Map()
    #: device-code hash and user-code hash → grant id.
    grants_by_code: immutables.Map[str, str] = immutables.Map()
    enrolment_tokens: immutables.Map[str, EnrolmentToken] = immutables.Map()
    #: token hash → token id.
    enrolment_tokens_by_hash: immutables.Map[str, str] = immutables.Map()
    events_folded: int = 0


EMPTY: Final = FleetState()


# --- derived views (pure functions of the state) ---------------------------------


def offered_models(state: FleetState) -> list[CatalogEntry]:
    """Offered catalog entries, sorted by id."""
    return sorted(
        (c.entry for c in state.catalog.values() if c.offered), key=lambda e: e.id
    )


def model_vram_mb(state: FleetState, model_id: str) -> int:
    """The catalog's VRAM footprint for a model (0 if the catalog does not know it)."""
    c = state.catalog.get(model_id)
    return c.entry.vram_mb if c is not None else 0


def model_disk_mb(state: FleetState, model_id: str) -> int:
    """The catalog's disk size for a model (0 if the catalog does not know it)."""
    c = state.catalog.get(model_id)
    return c.entry.disk_mb if c is not None else 0


def vram_used_mb(state: FleetState, node: NodeState) -> int:
    """VRAM held or claimed on ``node``: every placement in any phase counts."""
    return sum(model_vram_mb(state, m) for m in node.placements)


def vram_free_mb(state: FleetState, node: NodeState) -> int:
    """Budget left on ``node`` (may be negative if the catalog grew a model)."""
    return node.vram_budget_mb - vram_used_mb(state, node)


def disk_used_mb(state: FleetState, node: NodeState) -> int:
    """Disk held by weights on ``node`` plus downloads in flight."""
    held = set(node.on_disk) | {
        m for m, p in node.placements.items() if p.phase in ("requested", "downloading")
    }
    return sum(model_disk_mb(state, m) for m in held)


def disk_free_mb(state: FleetState, node: NodeState) -> int:
    """Disk budget left for new weights on ``node``."""
    return node.disk_budget_mb - disk_used_mb(state, node)


def nodes_serving(state: FleetState, model_id: str) -> list[NodeState]:
    """Online nodes with ``model_id`` ready (and not draining), sorted by node id."""
    return sorted(
        (
            n
            for n in state.nodes.values()
            if n.online
            and (p := n.placements.get(model_id)) is not None
            and p.serving
        ),
        key=lambda n: n.node_id,
    )


def is_ready(state: FleetState, model_id: str) -> bool:
    """Whether any online node can serve ``model_id`` now."""
    return bool(nodes_serving(state, model_id))


def load_in_progress(state: FleetState, model_id: str) -> list[tuple[NodeState, Placement]]:
    """(node, placement) for each online node loading ``model_id``, by node id."""
    found = [
        (n, p)
        for n in state.nodes.values()
        if n.online
        and (p := n.placements.get(model_id)) is not None
        and p.phase != "ready"
    ]
    return sorted(found, key=lambda np: np[0].node_id)


def demand_in(state: FleetState, model_id: str, since: float) -> tuple[int, int]:
    """(served, unmet) requests for ``model_id`` in windows starting at or after ``since``."""
    d = state.demand.get(model_id)
    if d is None:
        return (0, 0)
    served = unmet = 0
    for w in d.windows:
        if w.start >= since:
            served += w.served
            unmet += w.unmet
    return (served, unmet)


def trust_admits(minimum: TrustClass, actual: TrustClass) -> bool:
    """Whether a node of class ``actual`` satisfies a policy minimum of ``minimum``."""
    return TRUST_ORDER.index(actual) >= TRUST_ORDER.index(minimum)
