"""``evolve(state, event) -> state``: the only way the fleet state changes.

Pure and total: no I/O, no clock (time comes in ``event.at``), and an event
about something the state does not know (a node that was never enrolled, a
key that does not exist) leaves the state as it was, so replaying any log,
however it was cut, never fails halfway. The shell validates before it
appends; the fold only records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import reduce
from typing import Any, TypeVar

from msgspec.structs import replace

from porten.domain import events as ev
from porten.domain._fold_accounts import ACCOUNT_HANDLERS
from porten.domain.state import (
    DEMAND_HISTORY,
    EMPTY,
    CatalogModel,
    DemandWindow,
    FleetState,
    KeyState,
    LoadFailures,
    ModelDemand,
    NodeState,
    Placement,
)

_E = TypeVar("_E", bound=ev.Event)
_Handler = Callable[[FleetState, Any], FleetState]
_HANDLERS: dict[type[ev.Event], _Handler] = {}


def _on(cls: type[_E]) -> Callable[[Callable[[FleetState, _E], FleetState]], _Handler]:
    def register(fn: Callable[[FleetState, _E], FleetState]) -> _Handler:
        _HANDLERS[cls] = fn
        return fn

    return register


def evolve(state: FleetState, event: ev.AnyEvent) -> FleetState:
    """The state after ``event``."""
    handler = _HANDLERS.get(type(event))
    new = state if handler is None else handler(state, event)
    return replace(new, events_folded=state.events_folded + 1)


def fold(events: Iterable[ev.AnyEvent], state: FleetState = EMPTY) -> FleetState:
    """Fold ``events`` in order onto ``state`` (the empty fleet by default)."""
    return reduce(evolve, events, state)


# --- helpers -------------------------------------------------------------------


def _with_node(
    state: FleetState, node_id: str, change: Callable[[NodeState], NodeState]
) -> FleetState:
    node = state.nodes.get(node_id)
    if node is None:
        return state
    return replace(state, nodes=state.nodes.set(node_id, change(node)))


def _set_placement(node: NodeState, p: Placement) -> NodeState:
    return replace(node, placements=node.placements.set(p.model_id, p))


def _drop_placement(node: NodeState, model_id: str) -> NodeState:
    if model_id not in node.placements:
        return node
    return replace(node, placements=node.placements.delete(model_id))


# --- catalog ---------------------------------------------------------------------


@_on(ev.ModelOffered)
def _model_offered(state: FleetState, e: ev.ModelOffered) -> FleetState:
    c = CatalogModel(entry=e.model, offered=True, changed_at=e.at)
    return replace(state, catalog=state.catalog.set(e.model.id, c))


@_on(ev.ModelUpdated)
def _model_updated(state: FleetState, e: ev.ModelUpdated) -> FleetState:
    old = state.catalog.get(e.model.id)
    offered = old.offered if old is not None else False
    c = CatalogModel(entry=e.model, offered=offered, changed_at=e.at)
    return replace(state, catalog=state.catalog.set(e.model.id, c))


@_on(ev.ModelWithdrawn)
def _model_withdrawn(state: FleetState, e: ev.ModelWithdrawn) -> FleetState:
    old = state.catalog.get(e.model_id)
    if old is None:
        return state
    c = replace(old, offered=False, changed_at=e.at)
    return replace(state, catalog=state.catalog.set(e.model_id, c))


# --- nodes -------------------------------------------------------------------------


@_on(ev.NodeEnrolled)
def _node_enrolled(state: FleetState, e: ev.NodeEnrolled) -> FleetState:
    old = state.nodes.get(e.node_id)
    by_cred = state.nodes_by_credential
    if by_cred.get(e.credential_hash, e.node_id) != e.node_id:
        return state  # the credential already authenticates another node
    if old is not None:  # re-enrolment keeps what the node holds, rebinds the rest
        if old.credential_hash in by_cred:
            by_cred = by_cred.delete(old.credential_hash)
        node = replace(
            old,
            owner_id=e.owner_id,
            name=e.name,
            region=e.region,
            trust_class=e.trust_class,
            credential_hash=e.credential_hash,
        )
    else:
        node = NodeState(
            node_id=e.node_id,
            owner_id=e.owner_id,
            name=e.name,
            region=e.region,
            trust_class=e.trust_class,
            credential_hash=e.credential_hash,
            enrolled_at=e.at,
        )
    if e.credential_hash:
        by_cred = by_cred.set(e.credential_hash, e.node_id)
    return replace(state, nodes=state.nodes.set(e.node_id, node), nodes_by_credential=by_cred)


@_on(ev.NodeRemoved)
def _node_removed(state: FleetState, e: ev.NodeRemoved) -> FleetState:
    old = state.nodes.get(e.node_id)
    if old is None:
        return state
    by_cred = state.nodes_by_credential
    if old.credential_hash in by_cred:
        by_cred = by_cred.delete(old.credential_hash)
    return replace(state, nodes=state.nodes.delete(e.node_id), nodes_by_credential=by_cred)


@_on(ev.NodeConnected)
def _node_connected(state: FleetState, e: ev.NodeConnected) -> FleetState:
    def change(n: NodeState) -> NodeState:
        placements = n.placements
        if n.session_id and n.session_id != e.session_id:
            # A new connection replaced one whose disconnect was never recorded: the
            # loads commanded over the old connection died with it, as on a disconnect.
            for m in [m for m, p in n.placements.items() if p.phase != "ready"]:
                placements = placements.delete(m)
        return replace(
            n, online=True, session_id=e.session_id, placements=placements, last_seen_at=e.at
        )

    return _with_node(state, e.node_id, change)


@_on(ev.NodeDisconnected)
def _node_disconnected(state: FleetState, e: ev.NodeDisconnected) -> FleetState:
    def change(n: NodeState) -> NodeState:
        if n.session_id != e.session_id:
            return n  # a stale disconnect for a connection already replaced
        pending = [m for m, p in n.placements.items() if p.phase != "ready"]
        placements = n.placements
        for m in pending:  # loads in flight died with the connection
            placements = placements.delete(m)
        return replace(n, online=False, placements=placements, last_seen_at=e.at)

    return _with_node(state, e.node_id, change)


@_on(ev.NodeCapabilitiesReported)
def _capabilities(state: FleetState, e: ev.NodeCapabilitiesReported) -> FleetState:
    """The agent's report is the truth about memory: reconcile placements with it."""

    def change(n: NodeState) -> NodeState:
        loaded = set(e.models_loaded)
        with n.placements.mutate() as placements:
            for m, p in n.placements.items():
                if p.phase == "ready" and m not in loaded:
                    del placements[m]
            for m in sorted(loaded):
                old = n.placements.get(m)
                if old is None or old.phase != "ready":
                    placements[m] = Placement(
                        model_id=m,
                        phase="ready",
                        load_id=old.load_id if old is not None else "",
                        reason=old.reason if old is not None else "reported loaded by the node",
                        since=e.at,
                        last_used_at=e.at,
                    )
            new_placements = placements.finish()
        return replace(
            n,
            engine=e.engine,
            provisionable=e.provisionable,
            vram_total_mb=e.vram_total_mb,
            vram_budget_mb=e.vram_budget_mb,
            disk_budget_mb=e.disk_budget_mb,
            on_disk=frozenset(e.models_on_disk) | loaded,
            placements=new_placements,
            last_seen_at=e.at,
        )

    return _with_node(state, e.node_id, change)


@_on(ev.NodeRegionSet)
def _region_set(state: FleetState, e: ev.NodeRegionSet) -> FleetState:
    return _with_node(state, e.node_id, lambda n: replace(n, region=e.region))


@_on(ev.NodeTrustClassSet)
def _trust_set(state: FleetState, e: ev.NodeTrustClassSet) -> FleetState:
    return _with_node(state, e.node_id, lambda n: replace(n, trust_class=e.trust_class))


# --- loads ---------------------------------------------------------------------------


@_on(ev.LoadRequested)
def _load_requested(state: FleetState, e: ev.LoadRequested) -> FleetState:
    p = Placement(
        model_id=e.model_id,
        phase="requested",
        load_id=e.load_id,
        reason=e.reason,
        since=e.at,
        last_used_at=e.at,
    )
    # A node without a connection never receives the command: recording the load would
    # leave a placement that claims VRAM and never progresses (disconnect drops them too).
    # A model already ready there stays ready: a duplicate command must not hide it.
    def change(n: NodeState) -> NodeState:
        old = n.placements.get(e.model_id)
        if not n.online or (old is not None and old.phase == "ready"):
            return n
        return _set_placement(n, p)

    return _with_node(state, e.node_id, change)


@_on(ev.LoadProgressed)
def _load_progressed(state: FleetState, e: ev.LoadProgressed) -> FleetState:
    def change(n: NodeState) -> NodeState:
        p = n.placements.get(e.model_id)
        if p is None or p.load_id != e.load_id or p.phase == "ready":
            return n  # progress of a load that is no longer current
        since = p.since if p.phase == e.phase else e.at
        return _set_placement(
            n,
            replace(
                p,
                phase=e.phase,
                done_bytes=e.done_bytes,
                total_bytes=e.total_bytes,
                since=since,
            ),
        )

    return _with_node(state, e.node_id, change)


@_on(ev.ModelLoaded)
def _model_loaded(state: FleetState, e: ev.ModelLoaded) -> FleetState:
    def change(n: NodeState) -> NodeState:
        old = n.placements.get(e.model_id)
        p = Placement(
            model_id=e.model_id,
            phase="ready",
            load_id=e.load_id,
            reason=old.reason if old is not None else "",
            done_bytes=old.total_bytes if old is not None else 0,
            total_bytes=old.total_bytes if old is not None else 0,
            since=e.at,
            last_used_at=e.at,
        )
        failures = n.failures.delete(e.model_id) if e.model_id in n.failures else n.failures
        return replace(
            _set_placement(n, p), on_disk=n.on_disk | {e.model_id}, failures=failures
        )

    return _with_node(state, e.node_id, change)


@_on(ev.LoadFailed)
def _load_failed(state: FleetState, e: ev.LoadFailed) -> FleetState:
    def change(n: NodeState) -> NodeState:
        p = n.placements.get(e.model_id)
        if p is not None and p.phase != "ready" and p.load_id == e.load_id:
            n = _drop_placement(n, e.model_id)
        old = n.failures.get(e.model_id)
        f = LoadFailures(count=(old.count if old else 0) + 1, last_at=e.at, last_error=e.error)
        return replace(n, failures=n.failures.set(e.model_id, f))

    return _with_node(state, e.node_id, change)


@_on(ev.ModelDraining)
def _model_draining(state: FleetState, e: ev.ModelDraining) -> FleetState:
    def change(n: NodeState) -> NodeState:
        p = n.placements.get(e.model_id)
        if p is None or p.phase != "ready":
            return n  # only a ready placement drains; a load in progress is not one
        return _set_placement(n, replace(p, draining=True, drained_for=e.evicted_for))

    return _with_node(state, e.node_id, change)


@_on(ev.ModelUnloaded)
def _model_unloaded(state: FleetState, e: ev.ModelUnloaded) -> FleetState:
    return _with_node(state, e.node_id, lambda n: _drop_placement(n, e.model_id))


# --- demand and usage -------------------------------------------------------------------


@_on(ev.DemandObserved)
def _demand_observed(state: FleetState, e: ev.DemandObserved) -> FleetState:
    old = state.demand.get(e.model_id) or ModelDemand(model_id=e.model_id)
    w = DemandWindow(e.window_start, e.window_s, e.served, e.unmet)
    windows = (*old.windows, w)[-DEMAND_HISTORY:]
    last = max(old.last_request_at, e.window_start + e.window_s) if e.served or e.unmet else (
        old.last_request_at
    )
    d = replace(old, windows=windows, last_request_at=last)
    return replace(state, demand=state.demand.set(e.model_id, d))


@_on(ev.RequestServed)
def _request_served(state: FleetState, e: ev.RequestServed) -> FleetState:
    def change(n: NodeState) -> NodeState:
        p = n.placements.get(e.model_id)
        if p is not None and e.at > p.last_used_at:
            n = _set_placement(n, replace(p, last_used_at=e.at))
        return replace(
            n,
            requests_served=n.requests_served + 1,
            tokens_served=n.tokens_served + e.prompt_tokens + e.completion_tokens,
        )

    state = _with_node(state, e.node_id, change)
    k = state.keys.get(e.key_id)
    if k is None or not e.cost_usd:
        return state
    return replace(state, keys=state.keys.set(e.key_id, replace(k, spent_usd=k.spent_usd +
                                                                  e.cost_usd)))


# --- keys ---------------------------------------------------------------------------------


@_on(ev.KeyCreated)
def _key_created(state: FleetState, e: ev.KeyCreated) -> FleetState:
    if e.key_id in state.keys or e.secret_hash in state.keys_by_hash:
        return state  # a hash already authenticates another key: it cannot name a second one
    k = KeyState(
        key_id=e.key_id,
        owner_id=e.owner_id,
        name=e.name,
        secret_hash=e.secret_hash,
        prefix=e.prefix,
        policy=e.policy,
        created_at=e.at,
    )
    return replace(
        state,
        keys=state.keys.set(e.key_id, k),
        keys_by_hash=state.keys_by_hash.set(e.secret_hash, e.key_id),
    )


@_on(ev.KeyPolicyChanged)
def _key_policy_changed(state: FleetState, e: ev.KeyPolicyChanged) -> FleetState:
    k = state.keys.get(e.key_id)
    if k is None:
        return state
    return replace(state, keys=state.keys.set(e.key_id, replace(k, policy=e.policy)))


@_on(ev.KeyRevoked)
def _key_revoked(state: FleetState, e: ev.KeyRevoked) -> FleetState:
    k = state.keys.get(e.key_id)
    if k is None or k.revoked_at is not None:
        return state
    keys_by_hash = state.keys_by_hash
    if keys_by_hash.get(k.secret_hash) == k.key_id:
        keys_by_hash = keys_by_hash.delete(k.secret_hash)
    return replace(
        state,
        keys=state.keys.set(e.key_id, replace(k, revoked_at=e.at)),
        keys_by_hash=keys_by_hash,
    )


_HANDLERS.update(ACCOUNT_HANDLERS)


# Enrolment's handlers live in their own module; importing it registers them.
from porten.domain import fold_enrolment  # noqa: E402, F401


def _assert_total() -> None:
    """Every event type either has a handler or is deliberately state-free."""
    state_free = {ev.AdminActionTaken}
    missing = set(ev.EVENT_TYPES) - set(_HANDLERS) - state_free
    assert not missing, f"events without a fold handler: {sorted(c.__name__ for c in missing)}"


_assert_total()
