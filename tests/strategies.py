"""Hypothesis strategies for Porten's domain: values, every event type, plausible histories.

Ids are drawn mostly from small pools (``n1``… ``m1``… ``k1``…) so that
generated events hit entities that earlier events created; a minority are
arbitrary strings, so events about unknown entities are mixed in too. Floats
are always finite and times lie in a sane window after :data:`T0`, because a
NaN is unequal to itself and would make every "equals" property fail.

Later tests (planner, router) reuse these: import the pools and the
per-event strategies rather than writing new ones. Every factory is cached:
building a strategy introspects the Struct's signature, which is slow, so a
strategy is built once and drawn from many times.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any, Final

from hypothesis import strategies as st
from msgspec.structs import replace

from porten.domain import events as ev
from porten.domain.fold import evolve, fold
from porten.domain.state import FleetState, Placement
from porten.domain.values import TRUST_ORDER, CatalogEntry, KeyPolicy

#: The start of generated time (2023-11-14); every ``at`` lies within a few weeks of it.
T0: Final = 1_700_000_000.0

NODE_IDS: Final = ("n1", "n2", "n3")
MODEL_IDS: Final = ("m1", "m2", "m3")
KEY_IDS: Final = ("k1", "k2", "k3")
LOAD_IDS: Final = ("l1", "l2", "l3")
SESSION_IDS: Final = ("s1", "s2", "s3")
OWNER_IDS: Final = ("u1", "u2")
REGIONS: Final = ("", "eu", "us")
#: Few hashes, so two keys sometimes share one (the fold must not mix them up).
SECRET_HASHES: Final = ("h1", "h2", "h3", "h4")
#: Few emails, in mixed case, so two accounts sometimes claim the same one.
EMAILS: Final = ("a@example.org", "A@example.org", "b@example.org")
#: Few node credentials, so two enrolments sometimes present the same one.
CREDENTIAL_HASHES: Final = ("", "c1", "c2", "c3")
GRANT_IDS: Final = ("g1", "g2")
ENROLMENT_TOKEN_IDS: Final = ("t1", "t2")
#: Few code and token hashes, so two grants or tokens sometimes claim the same one.
CODE_HASHES: Final = ("d1", "d2", "d3", "d4")

_ID_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789-_:"

_CAPABILITIES: Final = ("chat", "tools", "json", "vision", "reasoning", "embeddings")
_UNLOAD_REASONS: Final = ("idle", "evicted", "operator", "node_lost", "engine_exited", "failed")
_OUTCOMES: Final = ("ok", "cancelled", "node_error", "timeout")


# --- scalars ----------------------------------------------------------------------------------


@functools.cache
def pooled(pool: Sequence[str]) -> st.SearchStrategy[str]:
    """An id from ``pool`` three times in four, otherwise an arbitrary (likely unknown) one."""
    known = st.sampled_from(pool)
    return st.one_of(known, known, known, st.text(_ID_ALPHABET, max_size=6))


@functools.cache
def node_ids() -> st.SearchStrategy[str]:
    """A node id, mostly one of :data:`NODE_IDS`."""
    return pooled(NODE_IDS)


@functools.cache
def model_ids() -> st.SearchStrategy[str]:
    """A model id, mostly one of :data:`MODEL_IDS`."""
    return pooled(MODEL_IDS)


@functools.cache
def key_ids() -> st.SearchStrategy[str]:
    """A key id, mostly one of :data:`KEY_IDS`."""
    return pooled(KEY_IDS)


@functools.cache
def load_ids() -> st.SearchStrategy[str]:
    """A load id, mostly one of :data:`LOAD_IDS`."""
    return pooled(LOAD_IDS)


@functools.cache
def session_ids() -> st.SearchStrategy[str]:
    """A connection id, mostly one of :data:`SESSION_IDS`."""
    return pooled(SESSION_IDS)


@functools.cache
def words(max_size: int = 12) -> st.SearchStrategy[str]:
    """Free text (names, reasons, errors): any unicode, short."""
    return st.text(max_size=max_size)


@functools.cache
def times() -> st.SearchStrategy[float]:
    """A finite unix time within about four weeks after :data:`T0`."""
    return st.floats(T0, T0 + 2_500_000.0, allow_nan=False, allow_infinity=False)


@functools.cache
def gaps() -> st.SearchStrategy[float]:
    """Seconds between two consecutive events: often none, at most ten minutes."""
    return st.one_of(st.just(0.0), st.floats(0.0, 600.0, allow_nan=False))


@functools.cache
def _finite(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@functools.cache
def _sizes_mb() -> st.SearchStrategy[int]:
    return st.integers(0, 200_000)


@functools.cache
def trust_classes() -> st.SearchStrategy[Any]:
    """One of :data:`TRUST_ORDER`."""
    return st.sampled_from(TRUST_ORDER)


@functools.cache
def regions() -> st.SearchStrategy[str]:
    """A region, mostly one of :data:`REGIONS`."""
    return pooled(REGIONS)


@functools.cache
def _actors() -> st.SearchStrategy[str]:
    return st.sampled_from(("hub", "planner", "node:n1", "user:u1", "user:u2"))


#: For each Struct built here, the fields its strategy generates (see :func:`_builds`).
FIELDS_GENERATED: Final[dict[type, frozenset[str]]] = {}


def _builds(cls: type[Any], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``st.builds`` that records which fields it varies, so new fields cannot go unnoticed."""
    FIELDS_GENERATED[cls] = frozenset(fields)
    return st.builds(cls, **fields)


# --- values -----------------------------------------------------------------------------------


@functools.cache
def catalog_entries(ids: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[CatalogEntry]:
    """A catalog entry with sane sizes and finite prices; ``id`` mostly from :data:`MODEL_IDS`."""
    return _builds(
        CatalogEntry,
        id=ids if ids is not None else model_ids(),
        type=st.sampled_from(("chat", "embedding")),
        ctx=st.integers(512, 1_000_000),
        capabilities=st.frozensets(st.sampled_from(_CAPABILITIES)),
        vram_mb=st.integers(1, 100_000),
        disk_mb=st.integers(1, 200_000),
        download_ref=words(),
        sha256=st.text("0123456789abcdef", max_size=64),
        engine_hints=st.dictionaries(words(6), words(), max_size=2),
        embedding_dim=st.integers(0, 8192),
        price_in_per_m=_finite(0.0, 100.0),
        price_out_per_m=_finite(0.0, 100.0),
    )


@functools.cache
def key_policies() -> st.SearchStrategy[KeyPolicy]:
    """A key policy: pooled regions and models, optional finite limits."""
    return _builds(
        KeyPolicy,
        regions=st.frozensets(regions(), max_size=3),
        min_trust=trust_classes(),
        fleet=st.sampled_from(("all", "own")),
        models=st.frozensets(model_ids(), max_size=3),
        requests_per_min=st.none() | st.integers(0, 100_000),
        tokens_per_min=st.none() | st.integers(0, 10_000_000),
        budget_usd=st.none() | _finite(0.0, 1e6),
    )


# --- one strategy per event type --------------------------------------------------------------


def _event(cls: type[ev.Event], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return _builds(
        cls, at=times(), actor=_actors(), correlation_id=st.sampled_from(("", "r1", "r2")), **fields
    )


@functools.cache
def model_offered() -> st.SearchStrategy[ev.ModelOffered]:
    """:class:`~porten.domain.events.ModelOffered`."""
    return _event(ev.ModelOffered, model=catalog_entries())


@functools.cache
def model_updated() -> st.SearchStrategy[ev.ModelUpdated]:
    """:class:`~porten.domain.events.ModelUpdated`."""
    return _event(ev.ModelUpdated, model=catalog_entries())


@functools.cache
def model_withdrawn() -> st.SearchStrategy[ev.ModelWithdrawn]:
    """:class:`~porten.domain.events.ModelWithdrawn`."""
    return _event(ev.ModelWithdrawn, model_id=model_ids(), reason=words())


@functools.cache
def node_enrolled() -> st.SearchStrategy[ev.NodeEnrolled]:
    """:class:`~porten.domain.events.NodeEnrolled`."""
    return _event(
        ev.NodeEnrolled,
        node_id=node_ids(),
        owner_id=pooled(OWNER_IDS),
        name=words(),
        region=regions(),
        trust_class=trust_classes(),
        credential_hash=st.sampled_from(CREDENTIAL_HASHES),
    )


@functools.cache
def node_removed() -> st.SearchStrategy[ev.NodeRemoved]:
    """:class:`~porten.domain.events.NodeRemoved`."""
    return _event(ev.NodeRemoved, node_id=node_ids(), reason=words())


@functools.cache
def node_connected() -> st.SearchStrategy[ev.NodeConnected]:
    """:class:`~porten.domain.events.NodeConnected`."""
    return _event(
        ev.NodeConnected, node_id=node_ids(), session_id=session_ids(), agent_version=words(6)
    )


@functools.cache
def node_disconnected() -> st.SearchStrategy[ev.NodeDisconnected]:
    """:class:`~porten.domain.events.NodeDisconnected`."""
    return _event(ev.NodeDisconnected, node_id=node_ids(), session_id=session_ids(), reason=words())


@functools.cache
def node_capabilities_reported() -> st.SearchStrategy[ev.NodeCapabilitiesReported]:
    """:class:`~porten.domain.events.NodeCapabilitiesReported`."""
    model_tuples = st.lists(model_ids(), max_size=4).map(tuple)
    return _event(
        ev.NodeCapabilitiesReported,
        node_id=node_ids(),
        engine=st.sampled_from(("builtin", "sim", "ollama", "openai")),
        provisionable=st.booleans(),
        vram_total_mb=_sizes_mb(),
        vram_budget_mb=_sizes_mb(),
        disk_budget_mb=_sizes_mb(),
        models_on_disk=model_tuples,
        models_loaded=model_tuples,
    )


@functools.cache
def node_region_set() -> st.SearchStrategy[ev.NodeRegionSet]:
    """:class:`~porten.domain.events.NodeRegionSet`."""
    return _event(ev.NodeRegionSet, node_id=node_ids(), region=regions())


@functools.cache
def node_trust_class_set() -> st.SearchStrategy[ev.NodeTrustClassSet]:
    """:class:`~porten.domain.events.NodeTrustClassSet`."""
    return _event(ev.NodeTrustClassSet, node_id=node_ids(), trust_class=trust_classes())


@functools.cache
def load_requested() -> st.SearchStrategy[ev.LoadRequested]:
    """:class:`~porten.domain.events.LoadRequested`."""
    return _event(
        ev.LoadRequested,
        node_id=node_ids(),
        model_id=model_ids(),
        load_id=load_ids(),
        reason=words(),
    )


@functools.cache
def load_progressed() -> st.SearchStrategy[ev.LoadProgressed]:
    """:class:`~porten.domain.events.LoadProgressed`."""
    return _event(
        ev.LoadProgressed,
        node_id=node_ids(),
        model_id=model_ids(),
        load_id=load_ids(),
        phase=st.sampled_from(("downloading", "loading")),
        done_bytes=st.integers(0, 2**40),
        total_bytes=st.integers(0, 2**40),
    )


@functools.cache
def model_loaded() -> st.SearchStrategy[ev.ModelLoaded]:
    """:class:`~porten.domain.events.ModelLoaded`."""
    return _event(
        ev.ModelLoaded, node_id=node_ids(), model_id=model_ids(), load_id=st.just("") | load_ids()
    )


@functools.cache
def load_failed() -> st.SearchStrategy[ev.LoadFailed]:
    """:class:`~porten.domain.events.LoadFailed`."""
    return _event(
        ev.LoadFailed, node_id=node_ids(), model_id=model_ids(), load_id=load_ids(), error=words()
    )


@functools.cache
def model_draining() -> st.SearchStrategy[ev.ModelDraining]:
    """:class:`~porten.domain.events.ModelDraining`."""
    return _event(
        ev.ModelDraining,
        node_id=node_ids(),
        model_id=model_ids(),
        evicted_for=st.just("") | model_ids(),
        detail=words(),
    )


@functools.cache
def model_unloaded() -> st.SearchStrategy[ev.ModelUnloaded]:
    """:class:`~porten.domain.events.ModelUnloaded`."""
    return _event(
        ev.ModelUnloaded,
        node_id=node_ids(),
        model_id=model_ids(),
        reason=st.sampled_from(_UNLOAD_REASONS),
        evicted_for=st.just("") | model_ids(),
        detail=words(),
    )


@functools.cache
def demand_observed() -> st.SearchStrategy[ev.DemandObserved]:
    """:class:`~porten.domain.events.DemandObserved`."""
    return _event(
        ev.DemandObserved,
        model_id=model_ids(),
        window_start=times(),
        window_s=st.sampled_from((10.0, 60.0, 300.0)),
        served=st.integers(0, 10_000),
        unmet=st.integers(0, 10_000),
    )


@functools.cache
def request_served() -> st.SearchStrategy[ev.RequestServed]:
    """:class:`~porten.domain.events.RequestServed`."""
    return _event(
        ev.RequestServed,
        request_id=st.text(_ID_ALPHABET, min_size=1, max_size=8),
        model_id=model_ids(),
        node_id=node_ids(),
        key_id=key_ids(),
        prompt_tokens=st.integers(0, 1_000_000),
        completion_tokens=st.integers(0, 1_000_000),
        ttft_ms=_finite(0.0, 60_000.0),
        duration_ms=_finite(0.0, 600_000.0),
        outcome=st.sampled_from(_OUTCOMES),
        cost_usd=_finite(0.0, 100.0),
        account_id=pooled(OWNER_IDS),
        node_owner_id=pooled(OWNER_IDS),
    )


@functools.cache
def key_created() -> st.SearchStrategy[ev.KeyCreated]:
    """:class:`~porten.domain.events.KeyCreated` (hashes from a small pool, so some collide)."""
    return _event(
        ev.KeyCreated,
        key_id=key_ids(),
        owner_id=pooled(OWNER_IDS),
        name=words(),
        secret_hash=pooled(SECRET_HASHES),
        prefix=st.text(_ID_ALPHABET, max_size=8),
        policy=key_policies(),
    )


@functools.cache
def key_policy_changed() -> st.SearchStrategy[ev.KeyPolicyChanged]:
    """:class:`~porten.domain.events.KeyPolicyChanged`."""
    return _event(ev.KeyPolicyChanged, key_id=key_ids(), policy=key_policies())


@functools.cache
def key_revoked() -> st.SearchStrategy[ev.KeyRevoked]:
    """:class:`~porten.domain.events.KeyRevoked`."""
    return _event(ev.KeyRevoked, key_id=key_ids(), reason=words())


@functools.cache
def admin_action_taken() -> st.SearchStrategy[ev.AdminActionTaken]:
    """:class:`~porten.domain.events.AdminActionTaken`."""
    return _event(
        ev.AdminActionTaken,
        action=st.sampled_from(("node.drain", "model.pin", "key.rotate")),
        target=words(),
        detail=st.dictionaries(words(6), words(), max_size=3),
    )


@functools.cache
def user_ids() -> st.SearchStrategy[str]:
    """A user id, mostly one of :data:`OWNER_IDS` (so users own the generated keys and nodes)."""
    return pooled(OWNER_IDS)


@functools.cache
def user_created() -> st.SearchStrategy[ev.UserCreated]:
    """:class:`~porten.domain.events.UserCreated` (emails from a small pool, so some collide)."""
    return _event(
        ev.UserCreated,
        user_id=user_ids(),
        email=st.sampled_from(EMAILS),
        name=words(),
        password_hash=st.sampled_from(("", "$argon2id$v=19$m=1,t=1,p=1$x$y")),
        role=st.sampled_from(("user", "operator")),
    )


@functools.cache
def user_password_changed() -> st.SearchStrategy[ev.UserPasswordChanged]:
    """:class:`~porten.domain.events.UserPasswordChanged`."""
    return _event(ev.UserPasswordChanged, user_id=user_ids(), password_hash=words())


@functools.cache
def user_role_changed() -> st.SearchStrategy[ev.UserRoleChanged]:
    """:class:`~porten.domain.events.UserRoleChanged`."""
    return _event(ev.UserRoleChanged, user_id=user_ids(),
                  role=st.sampled_from(("user", "operator")))


@functools.cache
def user_disabled() -> st.SearchStrategy[ev.UserDisabled]:
    """:class:`~porten.domain.events.UserDisabled`."""
    return _event(ev.UserDisabled, user_id=user_ids(), reason=words())


@functools.cache
def user_enabled() -> st.SearchStrategy[ev.UserEnabled]:
    """:class:`~porten.domain.events.UserEnabled`."""
    return _event(ev.UserEnabled, user_id=user_ids())


@functools.cache
def user_node_defaults_set() -> st.SearchStrategy[ev.UserNodeDefaultsSet]:
    """:class:`~porten.domain.events.UserNodeDefaultsSet`."""
    return _event(ev.UserNodeDefaultsSet, user_id=user_ids(), region=regions(),
                  trust_class=trust_classes())


@functools.cache
def grant_ids() -> st.SearchStrategy[str]:
    """A device-grant id, mostly one of :data:`GRANT_IDS`."""
    return pooled(GRANT_IDS)


@functools.cache
def enrolment_token_ids() -> st.SearchStrategy[str]:
    """An enrolment-token id, mostly one of :data:`ENROLMENT_TOKEN_IDS`."""
    return pooled(ENROLMENT_TOKEN_IDS)


@functools.cache
def device_code_issued() -> st.SearchStrategy[ev.DeviceCodeIssued]:
    """:class:`~porten.domain.events.DeviceCodeIssued` (code hashes from a small pool)."""
    return _event(
        ev.DeviceCodeIssued, grant_id=grant_ids(), device_code_hash=st.sampled_from(CODE_HASHES),
        user_code_hash=st.sampled_from(CODE_HASHES), client_name=words(),
        expires_at=times(), interval_s=st.integers(1, 60),
    )


@functools.cache
def device_code_approved() -> st.SearchStrategy[ev.DeviceCodeApproved]:
    """:class:`~porten.domain.events.DeviceCodeApproved`."""
    return _event(ev.DeviceCodeApproved, grant_id=grant_ids(), owner_id=user_ids())


@functools.cache
def device_code_denied() -> st.SearchStrategy[ev.DeviceCodeDenied]:
    """:class:`~porten.domain.events.DeviceCodeDenied`."""
    return _event(ev.DeviceCodeDenied, grant_id=grant_ids(), owner_id=user_ids())


@functools.cache
def device_code_redeemed() -> st.SearchStrategy[ev.DeviceCodeRedeemed]:
    """:class:`~porten.domain.events.DeviceCodeRedeemed`."""
    return _event(ev.DeviceCodeRedeemed, grant_id=grant_ids(), node_id=node_ids())


@functools.cache
def enrolment_token_minted() -> st.SearchStrategy[ev.EnrolmentTokenMinted]:
    """:class:`~porten.domain.events.EnrolmentTokenMinted` (hashes from a small pool)."""
    return _event(
        ev.EnrolmentTokenMinted, token_id=enrolment_token_ids(), owner_id=user_ids(),
        token_hash=st.sampled_from(CODE_HASHES), prefix=words(), name=words(),
        expires_at=times(),
    )


@functools.cache
def enrolment_token_redeemed() -> st.SearchStrategy[ev.EnrolmentTokenRedeemed]:
    """:class:`~porten.domain.events.EnrolmentTokenRedeemed`."""
    return _event(ev.EnrolmentTokenRedeemed, token_id=enrolment_token_ids(), node_id=node_ids())


@functools.cache
def enrolment_token_revoked() -> st.SearchStrategy[ev.EnrolmentTokenRevoked]:
    """:class:`~porten.domain.events.EnrolmentTokenRevoked`."""
    return _event(ev.EnrolmentTokenRevoked, token_id=enrolment_token_ids(), reason=words())


#: One strategy factory per event type; a test fails when ``ev.EVENT_TYPES`` outgrows it.
EVENT_STRATEGIES: Final[dict[type[ev.Event], Callable[[], st.SearchStrategy[Any]]]] = {
    ev.ModelOffered: model_offered,
    ev.ModelUpdated: model_updated,
    ev.ModelWithdrawn: model_withdrawn,
    ev.NodeEnrolled: node_enrolled,
    ev.NodeRemoved: node_removed,
    ev.NodeConnected: node_connected,
    ev.NodeDisconnected: node_disconnected,
    ev.NodeCapabilitiesReported: node_capabilities_reported,
    ev.NodeRegionSet: node_region_set,
    ev.NodeTrustClassSet: node_trust_class_set,
    ev.LoadRequested: load_requested,
    ev.LoadProgressed: load_progressed,
    ev.ModelLoaded: model_loaded,
    ev.LoadFailed: load_failed,
    ev.ModelDraining: model_draining,
    ev.ModelUnloaded: model_unloaded,
    ev.DemandObserved: demand_observed,
    ev.RequestServed: request_served,
    ev.KeyCreated: key_created,
    ev.KeyPolicyChanged: key_policy_changed,
    ev.KeyRevoked: key_revoked,
    ev.AdminActionTaken: admin_action_taken,
    ev.UserCreated: user_created,
    ev.UserPasswordChanged: user_password_changed,
    ev.UserRoleChanged: user_role_changed,
    ev.UserDisabled: user_disabled,
    ev.UserEnabled: user_enabled,
    ev.UserNodeDefaultsSet: user_node_defaults_set,
    ev.DeviceCodeIssued: device_code_issued,
    ev.DeviceCodeApproved: device_code_approved,
    ev.DeviceCodeDenied: device_code_denied,
    ev.DeviceCodeRedeemed: device_code_redeemed,
    ev.EnrolmentTokenMinted: enrolment_token_minted,
    ev.EnrolmentTokenRedeemed: enrolment_token_redeemed,
    ev.EnrolmentTokenRevoked: enrolment_token_revoked,
}


@functools.cache
def any_event() -> st.SearchStrategy[Any]:
    """An event of any type in :data:`EVENT_STRATEGIES` (``at`` is arbitrary, not ordered)."""
    return st.one_of([make() for make in EVENT_STRATEGIES.values()])


@functools.cache
def setup_event() -> st.SearchStrategy[Any]:
    """An event that creates or connects something, so later events have targets."""
    return st.one_of(
        node_enrolled(), node_connected(), model_offered(), key_created(), user_created(),
        device_code_issued(), enrolment_token_minted(),
    )


def _follow_up_kinds(state: FleetState) -> dict[str, list[Any]]:
    """What ``state`` has going, by the kind of event that would continue it (ids sorted)."""
    nodes = sorted(state.nodes.values(), key=lambda n: n.node_id)
    placements = [(n, p) for n in nodes for p in sorted(n.placements.values(), key=_by_model)]
    kinds: dict[str, list[Any]] = {
        "connect": nodes,  # an online node reconnecting makes its old session stale
        "disconnect": [n for n in nodes if n.online],
        "request_load": [n for n in nodes if n.online],
        "report": [n for n in nodes if n.online],
        "progress": [(n, p) for n, p in placements if p.phase != "ready"],
        "finish": [(n, p) for n, p in placements if p.phase != "ready"],
        "use": [(n, p) for n, p in placements if p.phase == "ready"],
        "key": sorted((k for k in state.keys.values() if k.active), key=lambda k: k.key_id),
    }
    return {kind: targets for kind, targets in kinds.items() if targets}


def _by_model(p: Placement) -> str:
    return p.model_id


def _draw_follow_up(draw: st.DrawFn, state: FleetState) -> Any:
    """An event about something ``state`` holds: its node, session, load id or key."""
    kinds = _follow_up_kinds(state)
    if not kinds:
        return draw(setup_event())
    kind = draw(st.sampled_from(sorted(kinds)))
    target = draw(st.sampled_from(kinds[kind]))
    base: dict[str, Any] = {"at": T0, "actor": "hub"}
    match kind:
        case "connect":
            return ev.NodeConnected(**base, node_id=target.node_id, session_id=draw(session_ids()))
        case "disconnect":
            return ev.NodeDisconnected(**base, node_id=target.node_id, session_id=target.session_id)
        case "request_load":
            return draw(load_requested().map(lambda e: replace(e, node_id=target.node_id)))
        case "report":
            return draw(
                node_capabilities_reported().map(lambda e: replace(e, node_id=target.node_id))
            )
        case "progress":
            node, p = target
            e = draw(load_progressed())
            return replace(e, node_id=node.node_id, model_id=p.model_id, load_id=p.load_id)
        case "finish":
            node, p = target
            e = draw(st.one_of(model_loaded(), load_failed()))
            return replace(e, node_id=node.node_id, model_id=p.model_id, load_id=p.load_id)
        case "use":
            node, p = target
            e = draw(st.one_of(request_served(), model_draining(), model_unloaded()))
            return replace(e, node_id=node.node_id, model_id=p.model_id)
        case _:  # "key"
            e = draw(st.one_of(key_revoked(), key_policy_changed()))
            return replace(e, key_id=target.key_id)


@st.composite
def follow_ups(draw: st.DrawFn, state: FleetState) -> Any:
    """An event that continues what ``state`` has going (or a set-up event if nothing is).

    Disconnects name the node's current session, load progress names the current
    load id, and so on, so the fold's interesting branches are actually reached.
    """
    return _draw_follow_up(draw, state)


def retimed(events: Sequence[ev.AnyEvent], gaps_s: Sequence[float], start: float = T0) -> list[Any]:
    """``events`` with ``at`` rewritten to ``start`` plus the running sum of ``gaps_s`` (cycled)."""
    if not events:
        return []
    clock = itertools.accumulate(itertools.cycle(gaps_s or (0.0,)), initial=start)
    return [replace(e, at=t) for e, t in zip(events, clock, strict=False)]


@st.composite
def event_sequences(
    draw: st.DrawFn, min_size: int = 0, max_size: int = 30, setup_max: int = 6
) -> list[Any]:
    """A plausible history: set-up events, then any events and follow-ups, ``at`` never falling.

    After the set-up, each event is two times in three a follow-up of what the history
    so far set going (:func:`follow_ups`), otherwise any event at all, often about
    entities that do not exist. At most ``setup_max + max_size`` events; ``at`` starts at
    :data:`T0`.
    """
    events = draw(st.lists(setup_event(), max_size=setup_max))
    state = fold(events)
    for _ in range(draw(st.integers(min_size, max_size), label="body size")):
        if draw(st.integers(0, 2), label="follow up?"):  # two times in three
            event = _draw_follow_up(draw, state)
        else:
            event = draw(any_event())
        events.append(event)
        state = evolve(state, event)
    gaps_s = draw(st.lists(gaps(), min_size=1, max_size=8))
    return retimed(events, gaps_s)
