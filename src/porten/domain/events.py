"""Every fact the control plane records, as frozen tagged msgspec Structs.

The log is append-only and these types are its schema, so they evolve the
msgspec way: a new field gets a default, a field's type never changes, and a
change of meaning is a new event type. The ``type`` tag is the snake_case
class name; it is what ``porten events list --type`` filters on.

Every event carries ``at`` (unix seconds, set by whoever observed or decided
it: the fold never reads a clock), ``actor`` (who caused it: ``hub``,
``node:<id>``, ``user:<id>``, ``planner``…) and ``correlation_id`` (the
request or operation it belongs to). Prompt and completion content never
appear in an event; API keys appear only as their keyed hash.
"""

from __future__ import annotations

import re
from typing import Final, Literal

import msgspec

from porten.domain.values import (
    CatalogEntry,
    EngineKind,
    KeyPolicy,
    Role,
    TrustClass,
    UnloadReason,
)

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _tag(class_name: str) -> str:
    return _CAMEL.sub("_", class_name).lower()


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=_tag):
    """Fields every event has. Not itself an event type."""

    at: float
    actor: str
    correlation_id: str = ""


# --- catalog -----------------------------------------------------------------


class ModelOffered(Event, frozen=True, kw_only=True):
    """An operator enabled a model: requests for it are accepted from now on."""

    model: CatalogEntry


class ModelUpdated(Event, frozen=True, kw_only=True):
    """An operator changed an offered model's entry (sizes, prices, hints)."""

    model: CatalogEntry


class ModelWithdrawn(Event, frozen=True, kw_only=True):
    """An operator disabled a model; new requests get ``model_not_found``."""

    model_id: str
    reason: str = ""


# --- nodes -------------------------------------------------------------------


class NodeEnrolled(Event, frozen=True, kw_only=True):
    """A node joined the fleet, bound to its owner's account.

    Region and trust class come from the operator or the owner's account
    settings, never from the agent.
    """

    node_id: str
    owner_id: str
    name: str = ""
    region: str = ""
    trust_class: TrustClass = "community"
    #: Keyed hash of the node's credential (the agent proves itself with the credential).
    credential_hash: str = ""


class NodeRemoved(Event, frozen=True, kw_only=True):
    """A node left the fleet for good (its credential no longer works)."""

    node_id: str
    reason: str = ""


class NodeConnected(Event, frozen=True, kw_only=True):
    """The node's agent opened its connection; ``session_id`` names this connection."""

    node_id: str
    session_id: str
    agent_version: str = ""


class NodeDisconnected(Event, frozen=True, kw_only=True):
    """The node's connection closed; its loaded models are no longer reachable."""

    node_id: str
    session_id: str
    reason: str = ""


class NodeCapabilitiesReported(Event, frozen=True, kw_only=True):
    """What the agent says it can do: engine, budgets, models on disk and in memory.

    ``provisionable`` nodes accept load/unload commands; the others serve a
    fixed set (``models_loaded``) and are never auto-loaded or evicted.
    """

    node_id: str
    engine: EngineKind
    provisionable: bool
    vram_total_mb: int
    vram_budget_mb: int
    disk_budget_mb: int
    models_on_disk: tuple[str, ...] = ()
    models_loaded: tuple[str, ...] = ()


class NodeRegionSet(Event, frozen=True, kw_only=True):
    """An operator placed the node in a region."""

    node_id: str
    region: str


class NodeTrustClassSet(Event, frozen=True, kw_only=True):
    """An operator assigned the node a trust class."""

    node_id: str
    trust_class: TrustClass


# --- model loads ---------------------------------------------------------------


class LoadRequested(Event, frozen=True, kw_only=True):
    """The hub asked a node to load a model, and why (the planner's reason)."""

    node_id: str
    model_id: str
    load_id: str
    reason: str


class LoadProgressed(Event, frozen=True, kw_only=True):
    """A load moved forward: weights downloading (bytes) or loading into memory."""

    node_id: str
    model_id: str
    load_id: str
    phase: Literal["downloading", "loading"]
    done_bytes: int = 0
    total_bytes: int = 0


class ModelLoaded(Event, frozen=True, kw_only=True):
    """The model is in memory on the node and can serve requests."""

    node_id: str
    model_id: str
    load_id: str = ""


class LoadFailed(Event, frozen=True, kw_only=True):
    """A load did not complete; ``error`` says why in words an owner can act on."""

    node_id: str
    model_id: str
    load_id: str
    error: str


class ModelDraining(Event, frozen=True, kw_only=True):
    """The hub stopped sending new requests to a ready model on a node, to make room.

    The requests in flight there finish; then the hub unloads it
    (``model_unloaded``). ``evicted_for`` names the model the room is for.
    """

    node_id: str
    model_id: str
    evicted_for: str = ""
    detail: str = ""


class ModelUnloaded(Event, frozen=True, kw_only=True):
    """The model left the node's memory (its weights stay on disk).

    ``evicted_for`` names the model that needed the room when ``reason`` is ``evicted``.
    """

    node_id: str
    model_id: str
    reason: UnloadReason
    evicted_for: str = ""
    detail: str = ""


# --- demand and usage ------------------------------------------------------------


class DemandObserved(Event, frozen=True, kw_only=True):
    """Requests for a model in one window: served, and unmet (no node could take them)."""

    model_id: str
    window_start: float
    window_s: float
    served: int
    unmet: int = 0


class RequestServed(Event, frozen=True, kw_only=True):
    """One request's metered usage. Never the prompt or the completion."""

    request_id: str
    model_id: str
    node_id: str
    key_id: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float = 0.0
    duration_ms: float = 0.0
    outcome: Literal["ok", "cancelled", "node_error", "timeout"] = "ok"
    #: What the request cost, at the catalog's prices when it was admitted (the bill's line).
    cost_usd: float = 0.0
    #: The key's owner and the serving node's owner at the time, so usage and earnings
    #: are sums over the log without re-deriving who owned what when.
    account_id: str = ""
    node_owner_id: str = ""


# --- keys and operators ----------------------------------------------------------


class KeyCreated(Event, frozen=True, kw_only=True):
    """An API key was minted. Only its keyed hash and display prefix are recorded."""

    key_id: str
    owner_id: str
    name: str = ""
    secret_hash: str
    prefix: str = ""
    policy: KeyPolicy = KeyPolicy()


class KeyPolicyChanged(Event, frozen=True, kw_only=True):
    """A key's policy was replaced as a whole."""

    key_id: str
    policy: KeyPolicy


class KeyRevoked(Event, frozen=True, kw_only=True):
    """A key stops working on its next request."""

    key_id: str
    reason: str = ""


# --- accounts ---------------------------------------------------------------------


class UserCreated(Event, frozen=True, kw_only=True):
    """An account was opened. ``email`` is stored lower-cased; the password only as argon2id."""

    user_id: str
    email: str
    name: str = ""
    password_hash: str = ""
    role: Role = "user"


class UserPasswordChanged(Event, frozen=True, kw_only=True):
    """The account's password hash was replaced (a new password, or a rehash)."""

    user_id: str
    password_hash: str


class UserRoleChanged(Event, frozen=True, kw_only=True):
    """An operator made an account an operator, or took the role away."""

    user_id: str
    role: Role


class UserDisabled(Event, frozen=True, kw_only=True):
    """The account can no longer sign in, and its keys stop working on their next request."""

    user_id: str
    reason: str = ""


class UserEnabled(Event, frozen=True, kw_only=True):
    """A disabled account works again (its keys too, unless revoked)."""

    user_id: str


class UserNodeDefaultsSet(Event, frozen=True, kw_only=True):
    """An operator set the region and trust class the account's newly enrolled nodes get."""

    user_id: str
    region: str = ""
    trust_class: TrustClass = "community"


# --- enrolment: device codes (RFC 8628) and enrolment tokens -------------------------
# Codes and tokens appear only as keyed hashes; the stream is the grant's or the token's,
# so "single use" is an expected-version check on it.


class DeviceCodeIssued(Event, frozen=True, kw_only=True):
    """An agent asked to enrol through the browser; it shows the user code and polls."""

    grant_id: str
    device_code_hash: str
    user_code_hash: str
    #: What the agent calls its machine (shown to the owner before approving; untrusted).
    client_name: str = ""
    expires_at: float
    interval_s: int = 5


class DeviceCodeApproved(Event, frozen=True, kw_only=True):
    """The signed-in owner approved the code: the node it becomes is theirs."""

    grant_id: str
    owner_id: str


class DeviceCodeDenied(Event, frozen=True, kw_only=True):
    """The signed-in owner refused the code; the agent's next poll gets access_denied."""

    grant_id: str
    owner_id: str


class DeviceCodeRedeemed(Event, frozen=True, kw_only=True):
    """The agent collected its credential; the code can never be used again."""

    grant_id: str
    node_id: str


class EnrolmentTokenMinted(Event, frozen=True, kw_only=True):
    """An owner minted a single-use token that enrols one node as theirs without a browser."""

    token_id: str
    owner_id: str
    token_hash: str
    prefix: str = ""
    name: str = ""
    expires_at: float


class EnrolmentTokenRedeemed(Event, frozen=True, kw_only=True):
    """A node enrolled with the token; a second use is refused."""

    token_id: str
    node_id: str


class EnrolmentTokenRevoked(Event, frozen=True, kw_only=True):
    """The owner withdrew an unused token."""

    token_id: str
    reason: str = ""


class AdminActionTaken(Event, frozen=True, kw_only=True):
    """An operator did something; the audit trail. ``actor`` says who."""

    action: str
    target: str = ""
    detail: dict[str, str] = {}


AnyEvent = (
    ModelOffered
    | ModelUpdated
    | ModelWithdrawn
    | NodeEnrolled
    | NodeRemoved
    | NodeConnected
    | NodeDisconnected
    | NodeCapabilitiesReported
    | NodeRegionSet
    | NodeTrustClassSet
    | LoadRequested
    | LoadProgressed
    | ModelLoaded
    | LoadFailed
    | ModelDraining
    | ModelUnloaded
    | DemandObserved
    | RequestServed
    | KeyCreated
    | KeyPolicyChanged
    | KeyRevoked
    | AdminActionTaken
    | UserCreated
    | UserPasswordChanged
    | UserRoleChanged
    | UserDisabled
    | UserEnabled
    | UserNodeDefaultsSet
    | DeviceCodeIssued
    | DeviceCodeApproved
    | DeviceCodeDenied
    | DeviceCodeRedeemed
    | EnrolmentTokenMinted
    | EnrolmentTokenRedeemed
    | EnrolmentTokenRevoked
)

EVENT_TYPES: Final[tuple[type[Event], ...]] = AnyEvent.__args__
#: tag → class, e.g. ``"model_loaded"`` → :class:`ModelLoaded`.
EVENT_TAGS: Final[dict[str, type[Event]]] = {
    _tag(cls.__name__): cls for cls in EVENT_TYPES
}


def stream_of(event: AnyEvent) -> str:  # noqa: PLR0911 (one return per stream family)
    """The stream an event belongs to: the entity whose versions it advances.

    Optimistic concurrency is per stream, so two decisions about the same node
    conflict while decisions about different nodes never do.
    """
    match event:
        case ModelOffered(model=m) | ModelUpdated(model=m):
            return f"model-{m.id}"
        case ModelWithdrawn(model_id=mid):
            return f"model-{mid}"
        case (
            NodeEnrolled(node_id=nid)
            | NodeRemoved(node_id=nid)
            | NodeConnected(node_id=nid)
            | NodeDisconnected(node_id=nid)
            | NodeCapabilitiesReported(node_id=nid)
            | NodeRegionSet(node_id=nid)
            | NodeTrustClassSet(node_id=nid)
            | LoadRequested(node_id=nid)
            | LoadProgressed(node_id=nid)
            | ModelLoaded(node_id=nid)
            | LoadFailed(node_id=nid)
            | ModelDraining(node_id=nid)
            | ModelUnloaded(node_id=nid)
        ):
            return f"node-{nid}"
        case DemandObserved(model_id=mid):
            return f"demand-{mid}"
        case RequestServed(request_id=rid):
            return f"request-{rid}"
        case KeyCreated(key_id=kid) | KeyPolicyChanged(key_id=kid) | KeyRevoked(key_id=kid):
            return f"key-{kid}"
        case AdminActionTaken():
            return "admin"
        case (
            UserCreated(user_id=uid)
            | UserPasswordChanged(user_id=uid)
            | UserRoleChanged(user_id=uid)
            | UserDisabled(user_id=uid)
            | UserEnabled(user_id=uid)
            | UserNodeDefaultsSet(user_id=uid)
        ):
            return f"user-{uid}"
        case (
            DeviceCodeIssued(grant_id=gid)
            | DeviceCodeApproved(grant_id=gid)
            | DeviceCodeDenied(grant_id=gid)
            | DeviceCodeRedeemed(grant_id=gid)
        ):
            return f"device-{gid}"
        case (
            EnrolmentTokenMinted(token_id=tid)
            | EnrolmentTokenRedeemed(token_id=tid)
            | EnrolmentTokenRevoked(token_id=tid)
        ):
            return f"enrolment-token-{tid}"
    raise TypeError(f"no stream for {type(event).__name__}")  # pragma: no cover


def event_type(event: Event) -> str:
    """The tag an event is stored under (``"node_enrolled"``…)."""
    return _tag(type(event).__name__)
