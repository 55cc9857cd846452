"""Urgent placement of a just-requested cold model, one behaviour at a time."""

from __future__ import annotations

import pytest

from porten.domain.values import KeyPolicy
from porten.scheduler.eligibility import Requester
from porten.scheduler.plan import PlannerConfig, Unplaceable, UrgentPlacement
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
) -> UrgentPlacement | Unplaceable:
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


def test_then_the_most_free_vram_then_the_node_id(b: FleetBuilder) -> None:
    """Among nodes without the weights, the most free VRAM wins; ties go to the lower id."""
    b.node("n3", vram_mb=48_000).node("n2", vram_mb=48_000).node("n1", vram_mb=24_000)
    assert placed(b).load.node_id == "n2"


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
    b.node("n1", vram_mb=18_000, loaded=["a", "b"]).rate("a", 5.0)
    out = placed(b, busy={("n1", "b"): 1})
    assert [u.model_id for u in out.evictions] == ["a"]


def test_unplaceable_when_every_candidate_is_serving_what_it_would_evict(
    b: FleetBuilder,
) -> None:
    """If only busy models could make room, the request is refused with that reason."""
    b.node("n1", vram_mb=16_000, loaded=["a", "b"])
    reason = refused(b, busy={("n1", "a"): 1, ("n1", "b"): 3})
    assert reason.startswith(
        "every node that could hold it is serving requests for the models it would evict"
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
