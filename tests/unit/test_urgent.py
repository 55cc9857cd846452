"""Urgent placement of a just-requested cold model, one behaviour at a time."""

from __future__ import annotations

import pytest

from porten.domain import events as ev
from porten.domain.values import KeyPolicy
from porten.scheduler.eligibility import Requester
from porten.scheduler.plan import (
    DrainPlacement,
    PlannerConfig,
    Unplaceable,
    UrgentDecision,
    UrgentPlacement,
)
from porten.scheduler.routing import NodeLoad, candidates
from porten.scheduler.testing import FleetBuilder
from porten.scheduler.urgent import place_urgently

CONFIG = PlannerConfig()
ANYONE = Requester(owner_id="u1")


def place(
    b: FleetBuilder,
    model_id: str = "cold",
    requester: Requester = ANYONE,
    busy: dict[tuple[str, str], int] | None = None,
    now: float | None = None,
) -> UrgentDecision:
    return place_urgently(
        b.state, model_id, requester, b.now if now is None else now, CONFIG, busy or {}
    )


def placed(b: FleetBuilder, **kw: object) -> UrgentPlacement:
    out = place(b, **kw)  # type: ignore[arg-type]
    assert isinstance(out, UrgentPlacement), out
    return out


def refused(b: FleetBuilder, **kw: object) -> str:
    out = place(b, **kw)  # type: ignore[arg-type]
    assert isinstance(out, Unplaceable), out
    return out.reason


@pytest.fixture
def b() -> FleetBuilder:
    """A catalog with a 10 GB cold model and a few 8 GB models to evict."""
    b = FleetBuilder().model("cold", vram_mb=10_000, disk_mb=8_000)
    for m in ("a", "b", "c"):
        b.model(m, vram_mb=8_000, disk_mb=5_000)
    return b


# --- free room --------------------------------------------------------------------------------


def test_a_node_with_room_is_used_without_eviction(b: FleetBuilder) -> None:
    """Where the model fits alongside what is loaded, nothing is evicted."""
    b.node("n1", vram_mb=24_000, loaded=["a"])
    out = placed(b)
    assert (out.load.node_id, out.evictions) == ("n1", ())
    assert "fits in free VRAM on n1 (16000 MB free)" in out.load.reason


def test_weights_on_disk_win_over_more_free_vram(b: FleetBuilder) -> None:
    """A node that already has the weights loads in seconds; it beats a roomier one."""
    b.node("n1", vram_mb=48_000).node("n2", vram_mb=24_000, on_disk=["cold"])
    out = placed(b)
    assert out.load.node_id == "n2"
    assert "weights already on disk" in out.load.reason


def test_then_the_tightest_fit_then_the_node_id(b: FleetBuilder) -> None:
    """Among nodes without the weights, the least VRAM left over wins (a big node's room stays
    whole for a big model); ties go to the lower id."""
    b.node("n3", vram_mb=16_000).node("n2", vram_mb=16_000).node("n1", vram_mb=48_000)
    out = placed(b)
    assert out.load.node_id == "n2"
    assert "fits in free VRAM on n2 (16000 MB free)" in out.load.reason


def test_a_node_with_less_left_to_download_wins_over_a_tighter_fit(b: FleetBuilder) -> None:
    """Downloads on one node share its link: a node already downloading makes the model wait."""
    b.node("n1", vram_mb=24_000).node("n2", vram_mb=48_000)
    b.pending("n1", "a", "downloading")
    out = placed(b)
    assert out.load.node_id == "n2"
    b.pending("n2", "b")  # requested, weights not on disk: a download about to start
    out = placed(b)
    assert out.load.node_id == "n1"  # 5000 MB ahead on each: the tighter fit again
    assert "behind 5000 MB of other downloads" in out.load.reason


def test_a_node_with_a_budget_of_zero_is_never_used(b: FleetBuilder) -> None:
    """A node reporting a VRAM budget of 0 is switched off for placement."""
    b.node("n1", vram_mb=0)
    assert refused(b) == "no online provisionable node satisfies this key's policy"


def test_fixed_set_and_offline_nodes_are_never_loaded(b: FleetBuilder) -> None:
    """Only online provisionable nodes take loads."""
    b.node("ollama", vram_mb=96_000, provisionable=False).node("off", online=False)
    assert refused(b) == "no online provisionable node satisfies this key's policy"


# --- size ------------------------------------------------------------------------------------


def test_a_model_larger_than_any_node_is_unplaceable_with_the_numbers(b: FleetBuilder) -> None:
    """The reason names the model's size and the largest budget it could have used."""
    b.model("qwen3-coder-next", vram_mb=52_000).node("n1", vram_mb=24_000)
    b.node("n2", vram_mb=16_000)
    assert refused(b, model_id="qwen3-coder-next") == (
        "qwen3-coder-next needs 52000 MB of VRAM; the largest eligible node budget is 24000 MB"
    )


def test_weights_larger_than_any_disk_budget_are_unplaceable(b: FleetBuilder) -> None:
    """The disk budget bounds what can be downloaded at all."""
    b.node("n1", vram_mb=24_000, disk_mb=7_000)
    assert "cold needs 8000 MB of disk" in refused(b)


def test_disk_counts_weights_in_memory_but_not_the_cache(b: FleetBuilder) -> None:
    """Cached weights can be dropped by the agent's LRU; weights in memory cannot."""
    b.node("full", vram_mb=48_000, disk_mb=12_000, loaded=["a"])
    b.node("cache", vram_mb=24_000, disk_mb=12_000, on_disk=["b", "c"])
    assert placed(b).load.node_id == "cache"


# --- eviction --------------------------------------------------------------------------------


def test_evicts_the_lowest_demand_model_at_once(b: FleetBuilder) -> None:
    """No anti-thrash wait: the least-demanded ready model goes even if it was just used."""
    b.node("n1", vram_mb=18_000, loaded=["a", "b"]).rate("a", 0.5).rate("b", 0.1)
    b.serve("n1", "b")
    out = placed(b)
    assert [(u.node_id, u.model_id, u.reason, u.evicted_for) for u in out.evictions] == [
        ("n1", "b", "evicted", "cold")
    ]
    assert out.load.node_id == "n1"
    assert "evicting b on n1" in out.load.reason


def test_picks_the_node_where_the_evicted_demand_is_smallest(b: FleetBuilder) -> None:
    """Across nodes, the one losing the least demand wins, however many nodes there are."""
    b.node("n1", vram_mb=16_000, loaded=["a", "b"]).node("n2", vram_mb=16_000, loaded=["c"])
    b.rate("a", 0.1).rate("b", 0.2).rate("c", 0.05)
    out = placed(b)
    assert (out.load.node_id, [u.model_id for u in out.evictions]) == ("n2", ["c"])


def test_ties_in_evicted_demand_go_to_fewer_evictions_then_node_id(b: FleetBuilder) -> None:
    """Equal demand lost: fewer evictions win; then the lower node id."""
    b.node("n1", vram_mb=16_000, loaded=["a", "b"]).node("n2", vram_mb=16_000, loaded=["c"])
    b.node("n3", vram_mb=16_000, loaded=["a"])
    out = placed(b)
    assert (out.load.node_id, [u.model_id for u in out.evictions]) == ("n2", ["c"])


def test_never_evicts_a_model_serving_requests(b: FleetBuilder) -> None:
    """A busy placement stays even when it has the least demand."""
    b.node("n1", vram_mb=18_000, loaded=["a", "b"]).rate("a", 5.0).rate("cold", 20.0)
    out = placed(b, busy={("n1", "b"): 1})
    assert [u.model_id for u in out.evictions] == ["a"]


def test_unplaceable_when_only_copies_with_more_demand_could_make_room(
    b: FleetBuilder,
) -> None:
    """A cold model with little demand never pushes out ones serving more; the reason says so."""
    b.node("n1", vram_mb=16_000, loaded=["a", "b"]).rate("a", 1.0).rate("b", 3.0)
    b.rate("cold", 0.2)
    reason = refused(b)
    assert reason.startswith(
        "making room would take copies with more demand than its own 0.2 req/s"
    )
    assert "a on n1: 1.0 req/s; b on n1: 3.0 req/s" in reason
def test_unplaceable_when_only_copies_serving_requests_could_make_room(
    b: FleetBuilder,
) -> None:
    """Busy copies with more demand than the cold model's are neither evicted nor drained."""
    b.node("n1", vram_mb=16_000, loaded=["a", "b"])
    reason = refused(b, busy={("n1", "a"): 1, ("n1", "b"): 3})
    assert reason == (
        "making room would take copies with more demand than its own 0 req/s, serving "
        "requests or loaded too recently to judge (a on n1: 0.0017 req/s, serving requests; "
        "b on n1: 0.005 req/s, serving requests); it is retried as demand or room changes"
    )


def test_never_evicts_a_load_in_progress(b: FleetBuilder) -> None:
    """A pending load is not a victim; with nothing else to evict the model is unplaceable."""
    b.node("n1", vram_mb=16_000)
    b.pending("n1", "a", "downloading")
    b.pending("n1", "b")
    assert refused(b) == "every node that could hold it is busy loading other models"


# --- policy ----------------------------------------------------------------------------------


def test_only_nodes_the_key_admits_are_candidates_even_for_loading(b: FleetBuilder) -> None:
    """Fail-closed: a roomy node outside the key's regions is never chosen; a full one inside is."""
    b.node("us", vram_mb=96_000, region="us").node("eu", vram_mb=16_000, region="eu", loaded=["a"])
    eu_only = Requester(owner_id="u1", policy=KeyPolicy(regions=frozenset({"eu"})))
    out = placed(b, requester=eu_only)
    assert (out.load.node_id, [u.model_id for u in out.evictions]) == ("eu", ["a"])


def test_no_compliant_node_is_a_clear_refusal(b: FleetBuilder) -> None:
    """With no node satisfying the policy there is no fall-back to everyone."""
    b.node("n1", vram_mb=96_000, trust_class="community", owner_id="u2")
    trusted = Requester(owner_id="u1", policy=KeyPolicy(min_trust="trusted"))
    own = Requester(owner_id="u1", policy=KeyPolicy(fleet="own"))
    for requester in (trusted, own):
        assert refused(b, requester=requester) == (
            "no online provisionable node satisfies this key's policy"
        )


def test_a_model_the_key_may_not_use_is_refused(b: FleetBuilder) -> None:
    """The key's allowed-models list is checked here too."""
    b.node("n1")
    only_a = Requester(owner_id="u1", policy=KeyPolicy(models=frozenset({"a"})))
    assert refused(b, requester=only_a) == "this key may not use cold"


def test_a_model_not_offered_is_refused(b: FleetBuilder) -> None:
    """Withdrawn or unknown models are never loaded."""
    b.node("n1").model("old", 1_000, offered=False)
    assert refused(b, model_id="old") == "old is not offered"
    assert refused(b, model_id="nope") == "nope is not offered"


# --- back-off --------------------------------------------------------------------------------


def test_a_node_backing_off_is_skipped_until_the_window_passes(b: FleetBuilder) -> None:
    """After failures on n1 the model goes to n2; with n1 the only node, it waits it out."""
    b.node("n1", vram_mb=48_000).node("n2", vram_mb=16_000).fail("n1", "cold", times=2)
    assert placed(b).load.node_id == "n2"
    alone = FleetBuilder().model("cold", 10_000).node("n1").fail("n1", "cold", times=3)
    assert refused(alone) == "backing off after 3 failed loads on n1 (next try in 120 s)"
    assert placed(alone, now=alone.now + 120.0).load.node_id == "n1"


def test_a_back_off_refusal_says_when_to_retry(b: FleetBuilder) -> None:
    """The retry delay is what is left of the earliest back-off, by the schedule: 30 s after
    one failure, 60 s after two, 120 s after three (then capped)."""
    b.node("n1").node("n2").fail("n1", "cold", times=3).fail("n2", "cold", times=2)
    out = place(b, now=b.now + 10.0)
    assert isinstance(out, Unplaceable)
    assert out.retry_after_s == 50.0  # n2: 60 s after its second failure, 10 s ago
    assert placed(b, now=b.now + 60.0).load.node_id == "n2"  # open again, as promised
    clear = FleetBuilder().model("cold", 10_000).node("n1", vram_mb=8_000)
    too_big = place(clear)
    assert isinstance(too_big, Unplaceable)
    assert too_big.retry_after_s == 0.0  # no back-off: no schedule to tell


def test_backing_off_everywhere_names_every_node(b: FleetBuilder) -> None:
    """Failures on every candidate are listed with their counts."""
    b.node("n1").node("n2").fail("n1", "cold").fail("n2", "cold", times=2)
    assert refused(b) == (
        "backing off after failed loads on every node that could hold it: n1 (1), n2 (2)"
    )


# --- already placed ----------------------------------------------------------------------------


def test_a_model_already_ready_or_loading_is_returned_as_is(b: FleetBuilder) -> None:
    """Called anyway for a model already there, it names that node and evicts nothing."""
    b.node("n1").node("n2").pending("n2", "cold", "downloading")
    out = placed(b)
    assert (out.load.node_id, out.load.reason, out.evictions) == (
        "n2",
        "already downloading on n2",
        (),
    )
    b.load("n1", "cold")
    assert placed(b).load.reason == "already ready on n1"


# --- who may make room: demand, the long tail, replicas --------------------------------------


@pytest.fixture
def big() -> FleetBuilder:
    """A 20 GB cold model and 20 GB models to make room with, on one 24 GB node each."""
    b = FleetBuilder().model("cold", vram_mb=20_000, disk_mb=18_000)
    for m in ("x", "y"):
        b.model(m, vram_mb=20_000, disk_mb=18_000)
    return b


def test_a_copy_goes_only_for_twice_its_demand(big: FleetBuilder) -> None:
    """Hysteresis: 1.0 req/s does not displace 0.6 req/s, 1.3 req/s does; the reason says
    both rates."""
    big.node("n1", loaded=["x"]).rate("x", 0.6).rate("cold", 1.0)
    assert "x on n1: 0.6 req/s" in refused(big)
    big.rate("cold", 0.3)  # another window: 1.3 req/s in all
    out = placed(big)
    assert [u.model_id for u in out.evictions] == ["x"]
    assert "requested now (1.3 req/s); evicting x on n1 (x 0.6 req/s)" in out.load.reason


def test_an_idle_copy_of_the_long_tail_goes_for_anyone(big: FleetBuilder) -> None:
    """Fewer than ``tail_requests`` requests expected while it reloads: it takes turns."""
    # 0.05 req/s x 19.5 GiB x 2 s/GiB = 1.95 expected requests during a reload: the tail.
    big.node("n1", loaded=["x"]).rate("x", 0.05)
    out = placed(big)
    assert [u.model_id for u in out.evictions] == ["x"]
    assert "x 0.05 req/s, the long tail" in out.load.reason
    # 0.2 req/s: 7.8 requests while it reloads; not the tail, and the cold model has none.
    busier = FleetBuilder().model("cold", 20_000).model("x", 20_000)
    busier.node("n1", loaded=["x"]).rate("x", 0.2)
    assert "x on n1: 0.2 req/s" in refused(busier)


def test_a_replica_loses_only_what_the_others_cannot_absorb(big: FleetBuilder) -> None:
    """x at 3 req/s on two nodes: one copy loses 1 req/s (2 req/s per replica), so a model
    at 2.5 req/s may take its room; with one copy (3 req/s lost) it may not."""
    big.node("n1", loaded=["x"]).node("n2", loaded=["x"]).rate("x", 3.0).rate("cold", 2.5)
    out = placed(big)
    assert (out.load.node_id, [u.model_id for u in out.evictions]) == ("n1", ["x"])
    assert "x 1.0 req/s beyond its other 1 ready copies" in out.load.reason
    alone = FleetBuilder().model("cold", 20_000).model("x", 20_000)
    alone.node("n1", loaded=["x"]).rate("x", 3.0).rate("cold", 2.5)
    assert "x on n1: 3.0 req/s" in refused(alone)


def test_a_copy_just_loaded_is_not_judged_until_its_demand_is_recorded(big: FleetBuilder) -> None:
    """The requests that waited for a load are served after it: for ``min_residency_s`` the
    copy is protected; a copy the node reported already loaded is not."""
    big.node("n1").load("n1", "x").rate("cold", 5.0)
    assert "x on n1: 0 req/s, just loaded" in refused(big)
    assert placed(big, now=big.now + CONFIG.min_residency_s).evictions
    reported = FleetBuilder().model("cold", 20_000).model("x", 20_000)
    reported.node("n1", loaded=["x"]).rate("cold", 5.0)
    assert placed(reported).evictions


def test_requests_in_flight_count_as_demand_the_windows_have_not_recorded(
    big: FleetBuilder,
) -> None:
    """A backlog of 600 requests on a copy with no recorded demand is 1 req/s of demand."""
    big.node("n1", loaded=["x"]).rate("cold", 1.5)
    assert "x on n1: 1.0 req/s, serving requests" in refused(big, busy={("n1", "x"): 600})


# --- drains --------------------------------------------------------------------------------------


def test_a_busy_copy_with_far_less_demand_is_drained_not_evicted(big: FleetBuilder) -> None:
    """Its requests in flight finish; it takes no new ones; then the model loads there."""
    big.node("n1", loaded=["x"]).rate("x", 0.5).rate("cold", 3.0)
    out = place(big, busy={("n1", "x"): 2})
    assert isinstance(out, DrainPlacement)
    assert (out.node_id, [(u.model_id, u.evicted_for) for u in out.drains]) == (
        "n1",
        [("x", "cold")],
    )
    assert out.reason.startswith("requested now (3.0 req/s); draining x on n1 (x 0.5 req/s)")
    assert out.drains[0].detail == (
        "drained to make room for cold, requested now; x had 0.5 req/s"
    )


def test_an_idle_victim_is_preferred_to_draining_a_busy_one(big: FleetBuilder) -> None:
    """Evicting at once beats waiting for requests in flight, wherever the demand lies."""
    big.node("n1", loaded=["x"]).node("n2", loaded=["y"]).rate("x", 0.1).rate("y", 0.5)
    big.rate("cold", 3.0)
    out = placed(big, busy={("n1", "x"): 1})
    assert (out.load.node_id, [u.model_id for u in out.evictions]) == ("n2", ["y"])


def test_a_drain_under_way_is_waited_for_not_repeated(big: FleetBuilder) -> None:
    """With room coming on n1, a second request starts no second drain anywhere."""
    big.node("n1", loaded=["x"]).node("n2", loaded=["y"]).rate("cold", 3.0)
    big.emit(ev.ModelDraining, node_id="n1", model_id="x", evicted_for="cold")
    out = place(big, busy={("n1", "x"): 1, ("n2", "y"): 1})
    assert isinstance(out, DrainPlacement)
    assert (out.node_id, out.drains) == ("n1", ())
    assert out.reason == "waiting for x to finish draining on n1"


def test_a_draining_copy_is_neither_serving_nor_already_placed(big: FleetBuilder) -> None:
    """Requests are not routed to a draining copy, and asking for its model places it anew."""
    big.node("n1", loaded=["x"]).node("n2")
    big.emit(ev.ModelDraining, node_id="n1", model_id="x", evicted_for="cold")
    loads = {"n1": NodeLoad(), "n2": NodeLoad()}
    assert candidates(big.state, "x", ANYONE, loads) == []
    out = placed(big, model_id="x")
    assert out.load.node_id == "n2"


def test_tail_models_wait_for_each_other_until_one_is_starved(big: FleetBuilder) -> None:
    """A busy tail copy is not drained for another tail model — until that one's requests
    have gone unmet, none served, for ``starvation_s``."""
    big.node("n1", loaded=["x"]).rate("x", 0.05)
    big.demand("cold", served=0, unmet=1)
    assert isinstance(place(big, busy={("n1", "x"): 1}), Unplaceable)
    for _ in range(3):
        big.advance(60.0).demand("cold", served=0, unmet=2)
    out = place(big, busy={("n1", "x"): 1})
    assert isinstance(out, DrainPlacement)
    assert [u.model_id for u in out.drains] == ["x"]
