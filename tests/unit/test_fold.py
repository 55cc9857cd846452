"""The fold, one behaviour at a time: a harness appends events a second apart and folds them."""

from __future__ import annotations

from typing import Any

import pytest
from msgspec.structs import replace

from porten.domain import events as ev
from porten.domain.codec import UndecodableEvent, decode_event, encode_event
from porten.domain.fold import evolve, fold
from porten.domain.state import (
    DEMAND_HISTORY,
    EMPTY,
    FleetState,
    NodeState,
    demand_in,
    disk_free_mb,
    disk_used_mb,
    is_ready,
    load_in_progress,
    nodes_serving,
    offered_models,
    trust_admits,
    vram_free_mb,
    vram_used_mb,
)
from porten.domain.values import CatalogEntry, KeyPolicy

T0 = 1_000.0


class Harness:
    """A log under construction: every event lands one second after the previous one."""

    def __init__(self) -> None:
        self.events: list[ev.AnyEvent] = []
        self.clock = T0

    def emit(self, cls: type[Any], at: float | None = None, **fields: Any) -> Any:
        """Append a ``cls`` event at the next second (or at ``at``) and return it."""
        self.clock += 1.0
        event = cls(at=self.clock if at is None else at, actor="test", **fields)
        self.events.append(event)
        return event

    @property
    def state(self) -> FleetState:
        """The fold of everything emitted so far."""
        return fold(self.events)

    def node(self, node_id: str = "n1") -> NodeState:
        """The folded state of one node."""
        return self.state.nodes[node_id]

    # --- shorthands for the events most tests need ---

    def offer(self, model_id: str = "m1", vram_mb: int = 1000, disk_mb: int = 500) -> Any:
        return self.emit(
            ev.ModelOffered, model=CatalogEntry(id=model_id, vram_mb=vram_mb, disk_mb=disk_mb)
        )

    def enrol(self, node_id: str = "n1", **fields: Any) -> Any:
        return self.emit(ev.NodeEnrolled, node_id=node_id, owner_id="u1", **fields)

    def connect(self, node_id: str = "n1", session_id: str = "s1") -> Any:
        return self.emit(ev.NodeConnected, node_id=node_id, session_id=session_id)

    def disconnect(self, node_id: str = "n1", session_id: str = "s1") -> Any:
        return self.emit(ev.NodeDisconnected, node_id=node_id, session_id=session_id)

    def online(self, node_id: str = "n1", session_id: str = "s1", **fields: Any) -> None:
        """Enrol and connect ``node_id``."""
        self.enrol(node_id, **fields)
        self.connect(node_id, session_id)

    def report(
        self,
        node_id: str = "n1",
        loaded: tuple[str, ...] = (),
        on_disk: tuple[str, ...] = (),
        vram_budget_mb: int = 8000,
        disk_budget_mb: int = 20_000,
    ) -> Any:
        return self.emit(
            ev.NodeCapabilitiesReported,
            node_id=node_id,
            engine="sim",
            provisionable=True,
            vram_total_mb=vram_budget_mb + 1000,
            vram_budget_mb=vram_budget_mb,
            disk_budget_mb=disk_budget_mb,
            models_on_disk=on_disk,
            models_loaded=loaded,
        )

    def request_load(self, node_id: str = "n1", model_id: str = "m1", load_id: str = "l1") -> Any:
        return self.emit(
            ev.LoadRequested, node_id=node_id, model_id=model_id, load_id=load_id, reason="demand"
        )

    def progress(
        self, phase: str, node_id: str = "n1", model_id: str = "m1", load_id: str = "l1", **b: int
    ) -> Any:
        return self.emit(
            ev.LoadProgressed,
            node_id=node_id,
            model_id=model_id,
            load_id=load_id,
            phase=phase,
            **b,
        )

    def loaded(self, node_id: str = "n1", model_id: str = "m1", load_id: str = "l1") -> Any:
        return self.emit(ev.ModelLoaded, node_id=node_id, model_id=model_id, load_id=load_id)

    def failed(self, node_id: str = "n1", model_id: str = "m1", load_id: str = "l1") -> Any:
        return self.emit(
            ev.LoadFailed, node_id=node_id, model_id=model_id, load_id=load_id, error="no space"
        )

    def serve(
        self, node_id: str = "n1", model_id: str = "m1", tokens: tuple[int, int] = (3, 4), **kw: Any
    ) -> Any:
        return self.emit(
            ev.RequestServed,
            **kw,
            request_id=f"r{len(self.events)}",
            model_id=model_id,
            node_id=node_id,
            key_id="k1",
            prompt_tokens=tokens[0],
            completion_tokens=tokens[1],
        )

    def create_key(self, key_id: str = "k1", secret_hash: str = "h1") -> Any:
        return self.emit(ev.KeyCreated, key_id=key_id, owner_id="u1", secret_hash=secret_hash)

    def revoke_key(self, key_id: str = "k1") -> Any:
        return self.emit(ev.KeyRevoked, key_id=key_id)

    def demand(self, model_id: str, start: float, served: int, unmet: int = 0) -> Any:
        return self.emit(
            ev.DemandObserved,
            model_id=model_id,
            window_start=start,
            window_s=60.0,
            served=served,
            unmet=unmet,
        )


@pytest.fixture
def h() -> Harness:
    """An empty log."""
    return Harness()


def phase(h: Harness, model_id: str = "m1", node_id: str = "n1") -> str | None:
    p = h.node(node_id).placements.get(model_id)
    return None if p is None else p.phase


# --- catalog ----------------------------------------------------------------------------------


def test_offering_a_model_puts_it_in_the_catalog_as_offered(h: Harness) -> None:
    """ModelOffered records the entry, offered, changed at the event's time."""
    e = h.offer("m1", vram_mb=4000)
    c = h.state.catalog["m1"]
    assert (c.entry, c.offered, c.changed_at) == (e.model, True, e.at)
    assert [m.id for m in offered_models(h.state)] == ["m1"]


def test_updating_a_model_replaces_its_entry_and_keeps_it_offered(h: Harness) -> None:
    """ModelUpdated replaces the entry but not whether the model is offered."""
    h.offer("m1", vram_mb=4000)
    new = CatalogEntry(id="m1", vram_mb=6000, disk_mb=500, price_in_per_m=0.5)
    h.emit(ev.ModelUpdated, model=new)
    c = h.state.catalog["m1"]
    assert (c.entry, c.offered) == (new, True)


def test_updating_an_unknown_model_records_it_unoffered(h: Harness) -> None:
    """ModelUpdated of a model never offered records the entry without offering it."""
    h.emit(ev.ModelUpdated, model=CatalogEntry(id="m9", vram_mb=1, disk_mb=1))
    assert h.state.catalog["m9"].offered is False
    assert offered_models(h.state) == []


def test_withdrawing_a_model_keeps_its_entry_but_stops_offering_it(h: Harness) -> None:
    """ModelWithdrawn turns ``offered`` off and keeps the entry for history."""
    h.offer("m1")
    h.offer("m2")
    w = h.emit(ev.ModelWithdrawn, model_id="m1")
    c = h.state.catalog["m1"]
    assert (c.offered, c.changed_at, c.entry.id) == (False, w.at, "m1")
    assert [m.id for m in offered_models(h.state)] == ["m2"]


def test_offered_models_are_sorted_by_id(h: Harness) -> None:
    """``offered_models`` lists offered entries in id order."""
    for m in ("m3", "m1", "m2"):
        h.offer(m)
    assert [m.id for m in offered_models(h.state)] == ["m1", "m2", "m3"]


# --- nodes ------------------------------------------------------------------------------------


def test_enrolling_a_node_takes_region_and_trust_from_the_event(h: Harness) -> None:
    """NodeEnrolled sets owner, region and trust class; the node starts offline."""
    e = h.enrol("n1", region="eu-west", trust_class="trusted", name="box")
    n = h.node("n1")
    assert (n.owner_id, n.region, n.trust_class, n.name) == ("u1", "eu-west", "trusted", "box")
    assert (n.online, n.enrolled_at) == (False, e.at)


def test_re_enrolling_keeps_what_the_node_holds_and_rebinds_placement(h: Harness) -> None:
    """A second NodeEnrolled changes region/trust but keeps placements and enrolment time."""
    first = h.enrol("n1", region="eu")
    h.connect()
    h.report(loaded=("m1",))
    h.enrol("n1", region="us", trust_class="verified")
    n = h.node("n1")
    assert (n.region, n.trust_class, n.enrolled_at) == ("us", "verified", first.at)
    assert list(n.ready_models()) == ["m1"]


def test_operator_events_move_region_and_trust(h: Harness) -> None:
    """NodeRegionSet and NodeTrustClassSet change exactly what they name."""
    h.enrol("n1", region="eu", trust_class="community")
    h.emit(ev.NodeRegionSet, node_id="n1", region="us")
    assert (h.node().region, h.node().trust_class) == ("us", "community")
    h.emit(ev.NodeTrustClassSet, node_id="n1", trust_class="confidential")
    assert (h.node().region, h.node().trust_class) == ("us", "confidential")


def test_removing_a_node_forgets_it_and_its_credential(h: Harness) -> None:
    """NodeRemoved deletes the node and frees its credential hash."""
    h.enrol("n1", credential_hash="c1")
    assert h.state.nodes_by_credential["c1"] == "n1"
    h.emit(ev.NodeRemoved, node_id="n1")
    assert "n1" not in h.state.nodes
    assert "c1" not in h.state.nodes_by_credential


def test_enrolling_with_another_nodes_credential_is_ignored(h: Harness) -> None:
    """Regression (found by the fold property): n1's credential cannot enrol n2."""
    h.enrol("n1", credential_hash="c1")
    h.enrol("n2", credential_hash="c1")
    assert "n2" not in h.state.nodes
    h.emit(ev.NodeRemoved, node_id="n2")
    assert h.state.nodes_by_credential["c1"] == "n1"


def test_connecting_brings_a_node_online_with_its_session(h: Harness) -> None:
    """NodeConnected sets online, the session id and last_seen_at."""
    h.enrol()
    c = h.connect(session_id="s7")
    n = h.node()
    assert (n.online, n.session_id, n.last_seen_at) == (True, "s7", c.at)


def test_a_stale_disconnect_does_not_take_the_node_offline(h: Harness) -> None:
    """A NodeDisconnected for an old session after a reconnect leaves the node online."""
    h.online(session_id="s1")
    h.request_load()
    h.connect(session_id="s2")
    h.disconnect(session_id="s1")
    n = h.node()
    assert (n.online, n.session_id) == (True, "s2")
    assert "m1" not in n.placements  # the load commanded over s1 died with s1


def test_disconnect_drops_pending_loads_and_keeps_ready_placements(h: Harness) -> None:
    """Disconnecting the current session takes the node offline and drops only loads in flight."""
    h.online()
    h.report(loaded=("m1",))
    h.request_load(model_id="m2", load_id="l2")
    h.request_load(model_id="m3", load_id="l3")
    h.progress("downloading", model_id="m3", load_id="l3")
    d = h.disconnect()
    n = h.node()
    assert (n.online, n.last_seen_at) == (False, d.at)
    assert dict(n.placements.items()).keys() == {"m1"}
    assert phase(h, "m1") == "ready"


def test_a_load_requested_of_an_offline_node_is_not_recorded(h: Harness) -> None:
    """Regression: LoadRequested for a node with no connection leaves no placement behind."""
    h.enrol()
    h.request_load()
    assert phase(h) is None
    h.connect()
    h.progress("downloading")
    assert phase(h) is None


# --- capabilities reports ---------------------------------------------------------------------


def test_capabilities_report_records_engine_budgets_and_disk(h: Harness) -> None:
    """A report sets engine, budgets and on_disk (loaded models count as on disk)."""
    h.online()
    r = h.report(loaded=("m1",), on_disk=("m2",), vram_budget_mb=7000, disk_budget_mb=9000)
    n = h.node()
    assert (n.engine, n.provisionable, n.vram_total_mb) == ("sim", True, 8000)
    assert (n.vram_budget_mb, n.disk_budget_mb, n.last_seen_at) == (7000, 9000, r.at)
    assert n.on_disk == {"m1", "m2"}


def test_capabilities_report_reconciles_placements(h: Harness) -> None:
    """Ready models not reported are dropped, reported ones become ready, pending loads stay."""
    h.online()
    h.report(loaded=("m1", "m2"))
    h.request_load(model_id="m3", load_id="l3")
    h.request_load(model_id="m4", load_id="l4")
    h.progress("loading", model_id="m4", load_id="l4")
    r = h.report(loaded=("m2", "m4"))
    n = h.node()
    assert {m: p.phase for m, p in n.placements.items()} == {
        "m2": "ready",
        "m3": "requested",
        "m4": "ready",
    }
    m4 = n.placements["m4"]
    assert (m4.load_id, m4.reason, m4.since, m4.last_used_at) == ("l4", "demand", r.at, r.at)


def test_capabilities_report_keeps_ready_placements_it_confirms(h: Harness) -> None:
    """A model already ready and reported again keeps its ``since`` and ``last_used_at``."""
    h.online()
    first = h.report(loaded=("m1",))
    h.report(loaded=("m1",))
    p = h.node().placements["m1"]
    assert (p.since, p.last_used_at) == (first.at, first.at)


def test_capabilities_report_never_changes_region_or_trust(h: Harness) -> None:
    """Whatever an agent reports, the node's region and trust class stay the operator's."""
    h.online(region="eu", trust_class="trusted")
    h.report(loaded=("m1",), on_disk=("m2",))
    assert (h.node().region, h.node().trust_class) == ("eu", "trusted")


# --- loads ------------------------------------------------------------------------------------


def test_load_lifecycle_requested_downloading_loading_ready(h: Harness) -> None:
    """A load goes requested → downloading (with bytes) → loading → ready and lands on disk."""
    h.online()
    req = h.request_load()
    p = h.node().placements["m1"]
    assert (p.phase, p.load_id, p.reason, p.since) == ("requested", "l1", "demand", req.at)

    d1 = h.progress("downloading", done_bytes=10, total_bytes=100)
    h.progress("downloading", done_bytes=60, total_bytes=100)
    p = h.node().placements["m1"]
    assert (p.phase, p.done_bytes, p.total_bytes, p.since) == ("downloading", 60, 100, d1.at)

    ld = h.progress("loading", done_bytes=100, total_bytes=100)
    p = h.node().placements["m1"]
    assert (p.phase, p.since) == ("loading", ld.at)
    assert [n.node_id for n, _ in load_in_progress(h.state, "m1")] == ["n1"]
    assert not is_ready(h.state, "m1")

    ok = h.loaded()
    p = h.node().placements["m1"]
    assert (p.phase, p.since, p.last_used_at, p.done_bytes) == ("ready", ok.at, ok.at, 100)
    assert "m1" in h.node().on_disk
    assert is_ready(h.state, "m1")
    assert load_in_progress(h.state, "m1") == []


def test_progress_for_a_stale_load_id_is_ignored(h: Harness) -> None:
    """LoadProgressed naming another load than the current one changes nothing."""
    h.online()
    h.request_load(load_id="l2")
    before = h.node().placements["m1"]
    h.progress("downloading", load_id="l1", done_bytes=5, total_bytes=9)
    assert h.node().placements["m1"] == before


def test_progress_after_ready_is_ignored(h: Harness) -> None:
    """A late LoadProgressed does not move a ready model back to loading."""
    h.online()
    h.request_load()
    h.loaded()
    h.progress("loading")
    assert phase(h) == "ready"


def test_load_failed_counts_consecutive_failures_and_loaded_resets_them(h: Harness) -> None:
    """Each LoadFailed adds one to the model's failure count; ModelLoaded clears it."""
    h.online()
    h.request_load(load_id="l1")
    h.failed(load_id="l1")
    assert phase(h) is None
    h.request_load(load_id="l2")
    last = h.failed(load_id="l2")
    f = h.node().failures["m1"]
    assert (f.count, f.last_at, f.last_error) == (2, last.at, "no space")
    h.request_load(load_id="l3")
    h.loaded(load_id="l3")
    assert "m1" not in h.node().failures


def test_a_failure_of_a_stale_load_keeps_the_current_load(h: Harness) -> None:
    """LoadFailed for an older load id counts the failure but keeps the current placement."""
    h.online()
    h.request_load(load_id="l2")
    h.failed(load_id="l1")
    assert phase(h) == "requested"
    assert h.node().failures["m1"].count == 1


def test_unloading_drops_the_placement_and_keeps_the_weights(h: Harness) -> None:
    """ModelUnloaded removes the placement; the model stays on disk."""
    h.online()
    h.report(loaded=("m1",))
    h.emit(ev.ModelUnloaded, node_id="n1", model_id="m1", reason="idle")
    assert phase(h) is None
    assert "m1" in h.node().on_disk


# --- usage and demand -------------------------------------------------------------------------


def test_request_served_updates_last_used_and_node_counters(h: Harness) -> None:
    """RequestServed moves the placement's last_used_at and adds to the node's counters."""
    h.online()
    h.report(loaded=("m1",))
    h.serve(tokens=(10, 5))
    last = h.serve(tokens=(1, 2))
    n = h.node()
    assert (n.requests_served, n.tokens_served) == (2, 18)
    assert n.placements["m1"].last_used_at == last.at


def test_a_late_request_record_never_moves_last_used_back(h: Harness) -> None:
    """A RequestServed older than the placement's last use leaves last_used_at alone."""
    h.online()
    r = h.report(loaded=("m1",))
    h.serve(at=r.at - 100.0)
    assert h.node().placements["m1"].last_used_at == r.at
    assert h.node().requests_served == 1


def test_demand_windows_accumulate_and_answer_demand_in(h: Harness) -> None:
    """DemandObserved appends windows; ``demand_in`` sums those starting at or after ``since``."""
    h.demand("m1", start=0.0, served=5, unmet=1)
    h.demand("m1", start=60.0, served=7, unmet=2)
    h.demand("m1", start=120.0, served=0, unmet=0)
    assert demand_in(h.state, "m1", since=0.0) == (12, 3)
    assert demand_in(h.state, "m1", since=60.0) == (7, 2)
    assert demand_in(h.state, "m1", since=121.0) == (0, 0)
    assert demand_in(h.state, "m2", since=0.0) == (0, 0)
    assert h.state.demand["m1"].last_request_at == 120.0  # the empty window does not count


def test_demand_keeps_only_the_last_windows(h: Harness) -> None:
    """A model keeps the newest ``DEMAND_HISTORY`` windows."""
    for i in range(DEMAND_HISTORY + 5):
        h.demand("m1", start=60.0 * i, served=1)
    windows = h.state.demand["m1"].windows
    assert len(windows) == DEMAND_HISTORY
    assert windows[0].start == 60.0 * 5


# --- keys -------------------------------------------------------------------------------------


def test_creating_a_key_indexes_its_hash(h: Harness) -> None:
    """KeyCreated stores the key and makes its hash authenticate it."""
    created = h.create_key("k1", "h1")
    k = h.state.keys["k1"]
    assert (k.secret_hash, k.created_at, k.active) == ("h1", created.at, True)
    assert h.state.keys_by_hash["h1"] == "k1"


def test_revoking_a_key_unindexes_it(h: Harness) -> None:
    """KeyRevoked marks the key revoked and its hash no longer authenticates."""
    h.create_key("k1", "h1")
    r = h.revoke_key("k1")
    assert h.state.keys["k1"].revoked_at == r.at
    assert "h1" not in h.state.keys_by_hash
    h.revoke_key("k1")
    assert h.state.keys["k1"].revoked_at == r.at  # revoking twice keeps the first time


def test_changing_a_policy_replaces_it_whole(h: Harness) -> None:
    """KeyPolicyChanged replaces the policy and keeps the key active."""
    h.create_key()
    policy = KeyPolicy(regions=frozenset({"eu"}), min_trust="trusted", requests_per_min=5)
    h.emit(ev.KeyPolicyChanged, key_id="k1", policy=policy)
    assert h.state.keys["k1"].policy == policy
    assert h.state.keys_by_hash["h1"] == "k1"


def test_a_key_with_a_hash_already_in_use_is_not_created(h: Harness) -> None:
    """Regression: a key reusing an indexed hash is ignored; revoking it cannot lock out k1."""
    h.create_key("k1", "h1")
    h.create_key("k2", "h1")
    h.revoke_key("k2")
    assert "k2" not in h.state.keys
    assert h.state.keys_by_hash["h1"] == "k1"


def test_a_revoked_keys_hash_can_be_reused(h: Harness) -> None:
    """Once k1 is revoked its hash may authenticate a new key."""
    h.create_key("k1", "h1")
    h.revoke_key("k1")
    h.create_key("k2", "h1")
    assert h.state.keys_by_hash["h1"] == "k2"


# --- derived views ----------------------------------------------------------------------------


def test_vram_and_disk_views_count_the_right_placements(h: Harness) -> None:
    """VRAM counts every placement; disk counts weights held plus downloads in flight."""
    h.offer("m1", vram_mb=1000, disk_mb=100)
    h.offer("m2", vram_mb=2000, disk_mb=200)
    h.offer("m3", vram_mb=4000, disk_mb=400)
    h.online()
    h.report(loaded=("m1",), on_disk=(), vram_budget_mb=8000, disk_budget_mb=1000)
    h.request_load(model_id="m2", load_id="l2")
    h.request_load(model_id="m3", load_id="l3")
    h.progress("loading", model_id="m3", load_id="l3")
    h.request_load(model_id="unknown", load_id="l9")
    n, s = h.node(), h.state
    assert vram_used_mb(s, n) == 7000
    assert vram_free_mb(s, n) == 1000
    assert disk_used_mb(s, n) == 300  # m1 on disk, m2 downloading; m3 is loading from disk
    assert disk_free_mb(s, n) == 700


def test_nodes_serving_lists_online_ready_nodes_by_id(h: Harness) -> None:
    """``nodes_serving``/``is_ready`` see only online nodes where the model is ready."""
    for node_id in ("n3", "n1", "n2", "n4"):
        h.online(node_id, session_id=f"s-{node_id}")
    h.report("n3", loaded=("m1",))
    h.report("n1", loaded=("m1",))
    h.report("n2", loaded=("m1",))
    h.disconnect("n2", session_id="s-n2")
    h.request_load("n4", "m1", "l4")
    assert [n.node_id for n in nodes_serving(h.state, "m1")] == ["n1", "n3"]
    assert is_ready(h.state, "m1")
    assert not is_ready(h.state, "m2")
    assert [(n.node_id, p.phase) for n, p in load_in_progress(h.state, "m1")] == [
        ("n4", "requested")
    ]


@pytest.mark.parametrize(
    ("minimum", "actual", "admitted"),
    [
        ("community", "community", True),
        ("community", "confidential", True),
        ("verified", "community", False),
        ("trusted", "verified", False),
        ("trusted", "trusted", True),
        ("confidential", "trusted", False),
    ],
)
def test_trust_admits_follows_the_trust_order(minimum: Any, actual: Any, admitted: bool) -> None:
    """A node satisfies a minimum trust class at or above it, never below."""
    assert trust_admits(minimum, actual) is admitted


# --- unknown entities and totality ------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        ev.NodeConnected(at=1.0, actor="t", node_id="ghost", session_id="s"),
        ev.NodeDisconnected(at=1.0, actor="t", node_id="ghost", session_id="s"),
        ev.NodeRemoved(at=1.0, actor="t", node_id="ghost"),
        ev.NodeRegionSet(at=1.0, actor="t", node_id="ghost", region="eu"),
        ev.LoadRequested(at=1.0, actor="t", node_id="ghost", model_id="m", load_id="l", reason=""),
        ev.ModelLoaded(at=1.0, actor="t", node_id="ghost", model_id="m"),
        ev.ModelWithdrawn(at=1.0, actor="t", model_id="ghost"),
        ev.KeyRevoked(at=1.0, actor="t", key_id="ghost"),
        ev.KeyPolicyChanged(at=1.0, actor="t", key_id="ghost", policy=KeyPolicy()),
        ev.AdminActionTaken(at=1.0, actor="user:u1", action="node.drain", target="n1"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_events_about_unknown_entities_change_only_the_count(event: ev.AnyEvent) -> None:
    """An event naming nothing the state knows leaves it as it was, one event later."""
    h = Harness()
    h.online()
    h.create_key()
    before = h.state
    assert evolve(before, event) == replace(before, events_folded=before.events_folded + 1)


def test_folding_nothing_is_the_empty_state() -> None:
    """``fold([])`` is ``EMPTY`` and ``fold`` onto a state continues from it."""
    assert fold([]) == EMPTY
    h = Harness()
    h.online()
    assert fold([], h.state) == h.state


# --- codec ------------------------------------------------------------------------------------


def test_decode_event_of_an_unknown_type_names_position_and_type() -> None:
    """An unknown ``type`` tag raises UndecodableEvent with the position and the tag."""
    with pytest.raises(UndecodableEvent) as info:
        decode_event(b'{"type": "node_teleported", "at": 1.0, "actor": "hub"}', position=42)
    err = info.value
    assert (err.position, err.type) == (42, "node_teleported")
    assert "position 42" in str(err)
    assert "'node_teleported'" in str(err)
    assert "unknown event type" in str(err)


def test_decode_event_of_a_malformed_known_event_says_malformed() -> None:
    """A known type with a missing field is reported as malformed, naming the field."""
    with pytest.raises(UndecodableEvent) as info:
        decode_event('{"type": "node_connected", "at": 1.0, "actor": "hub"}', position=7)
    err = info.value
    assert (err.position, err.type) == (7, "node_connected")
    assert "malformed event" in str(err)
    assert "node_id" in err.problem


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"just a string"', b""])
def test_decode_event_of_invalid_json_raises_with_an_unknown_type(raw: bytes) -> None:
    """Bytes that are not a JSON object raise UndecodableEvent with type ``'?'``."""
    with pytest.raises(UndecodableEvent) as info:
        decode_event(raw, position=3)
    assert (info.value.position, info.value.type) == (3, "?")


def test_encoded_events_carry_their_type_tag() -> None:
    """An encoded event names its snake_case type and decodes back from str or bytes."""
    e = ev.NodeCapabilitiesReported(
        at=5.0,
        actor="node:n1",
        node_id="n1",
        engine="sim",
        provisionable=False,
        vram_total_mb=1,
        vram_budget_mb=1,
        disk_budget_mb=1,
    )
    raw = encode_event(e)
    assert b'"type":"node_capabilities_reported"' in raw
    assert decode_event(raw) == e
    assert decode_event(raw.decode()) == e


def test_a_new_session_without_a_recorded_disconnect_drops_pending_loads() -> None:
    """Loads commanded over a connection that was replaced died with it, even unrecorded."""
    h = Harness()
    h.offer("m1")
    h.offer("m2")
    h.online()
    h.report(loaded=("m2",))
    h.request_load(model_id="m1", load_id="l1")
    h.connect(session_id="s2")  # the hub saw a new connection before the old one's end
    node = h.node()
    assert node.online
    assert node.session_id == "s2"
    assert "m1" not in node.placements
    assert node.placements["m2"].phase == "ready"


def test_reconnecting_with_the_same_session_keeps_pending_loads() -> None:
    """A repeated connect event for the current session changes nothing it holds."""
    h = Harness()
    h.offer("m1")
    h.online()
    h.request_load(model_id="m1", load_id="l1")
    h.connect(session_id="s1")
    assert h.node().placements["m1"].phase == "requested"


def test_a_load_requested_for_a_model_already_ready_keeps_it_ready() -> None:
    """A duplicate load command never turns a serving model back into a pending one."""
    h = Harness()
    h.offer("m1")
    h.online()
    h.report(loaded=("m1",))
    h.request_load(model_id="m1", load_id="l9")
    assert h.node().placements["m1"].phase == "ready"
