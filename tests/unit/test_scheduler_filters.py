"""Filters and scores of the scheduling core, one at a time, without the solver.

Every fleet is built through the real fold (``FleetBuilder``), so a filter is
tested on states the product can actually be in.
"""

from __future__ import annotations

import pytest

from porten.scheduler import filters as f
from porten.scheduler.plan import PlannerConfig
from porten.scheduler.testing import FleetBuilder

CONFIG = PlannerConfig()


@pytest.fixture
def b() -> FleetBuilder:
    """A fleet with one 10 GB model in the catalog."""
    return FleetBuilder().model("m1", vram_mb=10_000, disk_mb=6_000)


# --- nodes ------------------------------------------------------------------------------------


def test_provisionable_nodes_are_online_provisionable_with_budgets_sorted_by_id(
    b: FleetBuilder,
) -> None:
    """Offline, fixed-set and zero-budget nodes are left out; the rest come sorted by id."""
    b.node("n3").node("n1").node("n2", online=False).node("n4", provisionable=False)
    b.node("n5", vram_mb=0).node("n6", disk_mb=0)
    assert [n.node_id for n in f.provisionable_nodes(b.state)] == ["n1", "n3"]


def test_fits_at_all_compares_both_budgets(b: FleetBuilder) -> None:
    """A model fits at all when its VRAM and its weights fit the budgets, equality included."""
    b.node("exact", vram_mb=10_000, disk_mb=6_000).node("small", vram_mb=9_999)
    b.node("no-disk", disk_mb=5_999)
    s = b.state
    assert f.fits_at_all(s, s.nodes["exact"], "m1")
    assert not f.fits_at_all(s, s.nodes["small"], "m1")
    assert not f.fits_at_all(s, s.nodes["no-disk"], "m1")


def test_a_model_the_catalog_does_not_know_never_fits(b: FleetBuilder) -> None:
    """Without a catalog entry the size is unknown, so nothing is placed."""
    b.node("n1")
    assert not f.fits_at_all(b.state, b.state.nodes["n1"], "unknown")


def test_fits_at_all_ignores_what_is_loaded(b: FleetBuilder) -> None:
    """Fitting at all is about budgets; a full node still could hold it after evictions."""
    b.model("big", vram_mb=24_000).node("n1", vram_mb=24_000, loaded=["big"])
    assert f.fits_at_all(b.state, b.state.nodes["n1"], "m1")


def test_evictable_excludes_busy_placements_and_loads_in_progress(b: FleetBuilder) -> None:
    """Only ready placements with no request in flight may be unloaded."""
    b.model("m2", 1_000).model("m3", 1_000).node("n1", loaded=["m1", "m2"])
    b.pending("n1", "m3", "downloading")
    busy = {("n1", "m2"): 1, ("n1", "m1"): 0}
    assert f.evictable(b.state.nodes["n1"], busy) == ["m1"]


def test_memory_disk_counts_weights_in_memory_not_the_cache(b: FleetBuilder) -> None:
    """Weights on disk but not in memory are the agent's LRU cache and do not count."""
    b.model("m2", 1_000, disk_mb=700).node("n1", loaded=["m1"], on_disk=["m2"])
    assert f.memory_disk_mb(b.state, b.state.nodes["n1"]) == 6_000


# --- back-off -----------------------------------------------------------------------------


def test_backoff_doubles_per_failure_and_is_capped() -> None:
    """The wait is base x 2^(n-1) seconds, never more than the cap, none without failures."""
    config = PlannerConfig(failure_backoff_s=30.0, failure_backoff_max_s=200.0)
    assert [f.backoff_s(n, config) for n in range(6)] == [0.0, 30.0, 60.0, 120.0, 200.0, 200.0]
    assert f.backoff_s(10_000, config) == 200.0


def test_a_failed_load_backs_off_for_exactly_the_window(b: FleetBuilder) -> None:
    """After one failure the node backs off for base seconds, then may try again."""
    b.node("n1").fail("n1", "m1")
    node, t = b.state.nodes["n1"], b.now
    assert f.in_backoff(node, "m1", t + 29.9, CONFIG)
    assert not f.in_backoff(node, "m1", t + 30.0, CONFIG)
    assert not f.in_backoff(node, "other", t, CONFIG)


def test_the_backoff_window_grows_with_consecutive_failures(b: FleetBuilder) -> None:
    """Three failures in a row wait four times as long as one, from the last failure."""
    b.node("n1").fail("n1", "m1", times=3, every_s=10.0)
    node, t = b.state.nodes["n1"], b.now
    assert f.backoff_ends_at(node, "m1", CONFIG) == t + 120.0
    assert f.in_backoff(node, "m1", t + 119.0, CONFIG)
    assert not f.in_backoff(node, "m1", t + 120.0, CONFIG)


def test_a_successful_load_ends_the_backoff(b: FleetBuilder) -> None:
    """ModelLoaded clears the failures, so the next failure starts from the base again."""
    b.node("n1").fail("n1", "m1", times=4).load("n1", "m1")
    assert not f.in_backoff(b.state.nodes["n1"], "m1", b.now, CONFIG)


# --- demand ----------------------------------------------------------------------------------


def test_demand_rate_is_served_plus_unmet_over_the_window(b: FleetBuilder) -> None:
    """Requests per second over the demand window count unmet requests like served ones."""
    b.demand("m1", served=300, unmet=60).advance(60.0).demand("m1", served=240)
    assert f.demand_rate(b.state, "m1", b.now, CONFIG) == pytest.approx(600 / 600.0)


def test_demand_outside_the_window_does_not_count(b: FleetBuilder) -> None:
    """A window that started before now - demand_window_s is forgotten; a future one too."""
    b.demand("m1", served=1_000).advance(700.0).demand("m1", served=60)
    now = b.now
    assert f.demand_rate(b.state, "m1", now, CONFIG) == pytest.approx(0.1)
    assert f.demand_rate(b.state, "m1", now - 700.0, CONFIG) == pytest.approx(1_000 / 600.0)
    assert f.demand_rate(b.state, "unknown", now, CONFIG) == 0.0


@pytest.mark.parametrize(
    ("rate", "eligible", "wanted"),
    [
        (0.0, 10, 0),
        (0.001, 10, 1),
        (2.0, 10, 1),
        (2.1, 10, 2),
        (5.0, 10, 3),
        (100.0, 10, 8),
        (100.0, 3, 3),
        (1.0, 0, 0),
    ],
)
def test_desired_replicas(rate: float, eligible: int, wanted: int) -> None:
    """One replica per replica_capacity_rps, at least one with any demand, capped twice."""
    assert f.desired_replicas(rate, CONFIG, eligible) == wanted


def test_replica_values_never_increase_and_the_first_carries_availability() -> None:
    """Replica k is worth the demand it serves; the first also what serving at all is worth."""
    values = f.replica_values(5.0, 3, CONFIG)
    per_rps = CONFIG.value_per_rps
    assert values == (f.availability_value(CONFIG) + 2 * per_rps, 2 * per_rps, 1 * per_rps)
    assert list(values) == sorted(values, reverse=True)


def test_a_first_replica_is_worth_more_than_a_download_an_eviction_and_a_full_replica() -> None:
    """So every wanted model gets a replica before any model gets a second one."""
    c = CONFIG
    first, second = f.replica_values(0.001, 1, c)[0], f.replica_values(100.0, 2, c)[1]
    assert first - c.load_cost_download - c.unload_cost > second


def test_victims_are_ordered_lowest_demand_first_then_largest() -> None:
    """Ties on demand evict the larger model first: fewer evictions make the room."""
    keys = [
        f.victim_key(0.5, 1_000, "a"),
        f.victim_key(0.1, 1_000, "b"),
        f.victim_key(0.1, 9_000, "c"),
    ]
    assert [k[2] for k in sorted(keys)] == ["c", "b", "a"]


# --- idle eviction ------------------------------------------------------------------------


def _idle_fleet() -> FleetBuilder:
    return FleetBuilder().model("m1", 1_000).model("m2", 1_000).node("n1", loaded=["m1", "m2"])


def test_idle_placements_go_after_exactly_one_window() -> None:
    """Unused for exactly demand_window_s with no demand: unloaded with reason "idle"."""
    b = _idle_fleet()
    loaded_at = b.now
    assert f.idle_unloads(b.state, loaded_at + 599.9, CONFIG, {}) == []
    unloads = f.idle_unloads(b.state, loaded_at + 600.0, CONFIG, {})
    assert [(u.node_id, u.model_id, u.reason) for u in unloads] == [
        ("n1", "m1", "idle"),
        ("n1", "m2", "idle"),
    ]
    assert "no request in the last 600 s" in unloads[0].detail


def test_a_request_served_restarts_the_idle_clock() -> None:
    """A placement that served a request is not idle until a window after that request."""
    b = _idle_fleet()
    b.advance(500.0).serve("n1", "m1")
    unloads = f.idle_unloads(b.state, b.now + 200.0, CONFIG, {})
    assert [u.model_id for u in unloads] == ["m2"]


def test_demand_in_the_window_keeps_a_model_loaded() -> None:
    """Unmet requests for a model (served elsewhere or not at all) keep its placements."""
    b = _idle_fleet()
    b.advance(600.0).demand("m1", served=0, unmet=1)
    assert [u.model_id for u in f.idle_unloads(b.state, b.now, CONFIG, {})] == ["m2"]


def test_busy_placements_and_loads_in_progress_are_never_idle() -> None:
    """Requests in flight or a load still running keep a placement."""
    b = _idle_fleet().model("m3", 1_000)
    b.pending("n1", "m3")
    later = b.now + 10_000.0
    unloads = f.idle_unloads(b.state, later, CONFIG, {("n1", "m1"): 2})
    assert [u.model_id for u in unloads] == ["m2"]


def test_fixed_set_and_offline_nodes_are_never_idle_evicted() -> None:
    """Only online provisionable nodes are idle-evicted; the others are their owners' business."""
    b = FleetBuilder().model("m1", 1_000)
    b.node("ollama", provisionable=False, loaded=["m1"]).node("gone", loaded=["m1"], online=False)
    assert f.idle_unloads(b.state, b.now + 10_000.0, CONFIG, {}) == []
