"""The global planner on small fleets, one behaviour at a time (a harness per test)."""

from __future__ import annotations

import msgspec
import pytest

from porten.scheduler import _cpsat, _neighbourhood, planner
from porten.scheduler._fleet import (
    SCALE,
    Changes,
    advance,
    build_fleet,
    compose,
    feasible,
    objective,
)
from porten.scheduler.apply import apply_plan
from porten.scheduler.ffd import first_fit_decreasing
from porten.scheduler.plan import Busy, Plan, PlannerConfig
from porten.scheduler.testing import FleetBuilder

CONFIG = PlannerConfig()


def plan(b: FleetBuilder, busy: Busy | None = None, now: float | None = None) -> Plan:
    return planner.plan(b.state, b.now if now is None else now, CONFIG, busy or {})


def loads(p: Plan) -> list[tuple[str, str]]:
    return [(d.node_id, d.model_id) for d in p.loads]


def unloads(p: Plan) -> list[tuple[str, str, str]]:
    return [(u.node_id, u.model_id, u.reason) for u in p.unloads]


@pytest.fixture
def b() -> FleetBuilder:
    """Three 10 GB models and a 52 GB one in the catalog."""
    b = FleetBuilder()
    for m in ("a", "b", "c"):
        b.model(m, vram_mb=10_000, disk_mb=6_000)
    return b.model("big", vram_mb=52_000, disk_mb=45_000)


def test_an_empty_fleet_gets_an_empty_plan() -> None:
    """Nothing to place, nowhere to place it: nothing changes and the solver is not run."""
    p = planner.plan(FleetBuilder().state, 0.0, CONFIG, {})
    assert p.empty
    assert p.solver.startswith("none")


def test_a_model_with_demand_is_loaded_and_the_reason_says_why(b: FleetBuilder) -> None:
    """Demand pulls a model in; the reason gives the demand, replicas wanted and running."""
    b.node("n1", on_disk=["a"]).rate("a", 0.5)
    p = plan(b)
    assert loads(p) == [("n1", "a")]
    assert p.loads[0].reason == (
        "demand 0.5 req/s wants 1 replica; 0 running; weights already on disk"
    )
    assert p.solver == "cp-sat optimal"


def test_models_without_demand_are_never_loaded(b: FleetBuilder) -> None:
    """An empty fleet with an offered catalog stays empty until someone asks."""
    b.node("n1").node("n2")
    assert plan(b).empty


def test_withdrawn_models_are_never_loaded_even_with_demand(b: FleetBuilder) -> None:
    """Demand recorded for a model no longer offered does not load it."""
    b.model("old", 1_000, offered=False).node("n1").rate("old", 3.0)
    assert plan(b).empty


def test_high_demand_gets_replicas(b: FleetBuilder) -> None:
    """5 req/s at 2 req/s per replica wants three replicas, on three nodes."""
    b.node("n1").node("n2").node("n3").node("n4").rate("a", 5.0)
    p = plan(b)
    assert loads(p) == [("n1", "a"), ("n2", "a"), ("n3", "a")]
    assert "demand 5.0 req/s wants 3 replicas; 0 running" in p.loads[0].reason


def test_replicas_are_capped_by_the_nodes_that_can_hold_them(b: FleetBuilder) -> None:
    """Two replicas never share a node, so two nodes give at most two."""
    b.node("n1").node("n2").rate("a", 50.0)
    assert loads(plan(b)) == [("n1", "a"), ("n2", "a")]


def test_every_wanted_model_gets_a_replica_before_any_gets_a_second(b: FleetBuilder) -> None:
    """Room for two: the hot model gets one replica and the cold one its first."""
    b.node("n1", vram_mb=10_000).node("n2", vram_mb=10_000).rate("a", 20.0).rate("b", 0.01)
    assert sorted(m for _, m in loads(plan(b))) == ["a", "b"]


def test_churn_a_loaded_model_is_not_swapped_for_a_marginally_better_one(
    b: FleetBuilder,
) -> None:
    """A loaded model at 1.0 req/s stays when one at 1.2 req/s wants its room."""
    b.node("n1", vram_mb=10_000, loaded=["a"]).rate("a", 1.0).rate("b", 1.2)
    p = plan(b)
    assert p.empty
    assert [u.model_id for u in p.unplaceable] == ["b"]
    assert "without evicting models worth more to keep" in p.unplaceable[0].reason


def test_a_real_gain_evicts_the_loaded_model(b: FleetBuilder) -> None:
    """A model with far more demand takes the room; the eviction names it and why."""
    b.node("n1", vram_mb=10_000, loaded=["a"]).rate("a", 0.1).rate("b", 2.0)
    p = plan(b)
    assert unloads(p) == [("n1", "a", "evicted")]
    assert (p.unloads[0].evicted_for, p.unloads[0].detail) == (
        "b",
        "made room for b (2.0 req/s); a (0.1 req/s) has no other replica",
    )
    assert loads(p) == [("n1", "b")]
    assert [u.model_id for u in p.unplaceable] == ["a"]


def test_a_busy_placement_is_never_evicted(b: FleetBuilder) -> None:
    """However much better the challenger, a model serving requests keeps its place."""
    b.node("n1", vram_mb=10_000, loaded=["a"]).rate("b", 50.0)
    assert loads(plan(b)) == [("n1", "b")]  # idle `a` goes for it…
    assert plan(b, busy={("n1", "a"): 1}).empty  # …but not while it serves


def test_a_load_in_progress_is_never_evicted(b: FleetBuilder) -> None:
    """A pending load holds its room until it completes or fails."""
    b.node("n1", vram_mb=10_000).rate("b", 50.0)
    b.pending("n1", "a", "downloading")
    assert plan(b).empty


def test_fixed_set_nodes_are_never_touched(b: FleetBuilder) -> None:
    """No loads onto, no evictions from, a node serving its owner's fixed set."""
    b.node("ollama", vram_mb=96_000, provisionable=False, loaded=["a"])
    b.advance(10_000.0).rate("b", 3.0)  # `a` is long idle: fixed-set nodes are never idle-evicted
    p = plan(b)
    assert p.empty
    assert [u.model_id for u in p.unplaceable] == ["b"]
    assert p.unplaceable[0].reason == "no online provisionable node"


def test_replicas_on_fixed_set_nodes_count_towards_what_demand_wants(b: FleetBuilder) -> None:
    """A model an Ollama node serves needs no provisioned replica for modest demand."""
    b.node("ollama", provisionable=False, loaded=["a"]).node("n1").rate("a", 1.0)
    assert plan(b).empty


def test_a_node_with_a_budget_of_zero_is_never_used(b: FleetBuilder) -> None:
    """Budgets of 0 switch a node off for placement."""
    b.node("n1", vram_mb=0).node("n2", disk_mb=0).rate("a", 1.0)
    assert plan(b).empty


def test_a_model_larger_than_any_node_is_unplaceable_with_the_numbers(b: FleetBuilder) -> None:
    """The reason names the size and the largest budget."""
    b.node("n1", vram_mb=24_000).rate("big", 1.0)
    p = plan(b)
    assert [(u.model_id, u.reason) for u in p.unplaceable] == [
        ("big", "big needs 52000 MB of VRAM; the largest node budget is 24000 MB")
    ]


def test_idle_models_are_unloaded_after_exactly_the_window(b: FleetBuilder) -> None:
    """Unused for a whole demand window with no demand: the plan unloads it as idle."""
    b.node("n1", loaded=["a"])
    assert plan(b, now=b.now + 599.0).empty
    p = plan(b, now=b.now + 600.0)
    assert unloads(p) == [("n1", "a", "idle")]


def test_a_model_failing_repeatedly_backs_off_a_growing_window(b: FleetBuilder) -> None:
    """The planner skips the failing node until its back-off passes, and it grows."""
    b.node("n1").rate("a", 1.0).fail("n1", "a")
    failed_at = b.now
    assert plan(b, now=failed_at + 29.0).empty
    assert loads(plan(b, now=failed_at + 30.0)) == [("n1", "a")]
    b.fail("n1", "a")
    assert plan(b, now=b.now + 59.0).empty
    assert "backing off after 2 failed loads on n1" in plan(b).unplaceable[0].reason
    assert loads(plan(b, now=b.now + 60.0)) == [("n1", "a")]


def test_backing_off_on_one_node_loads_on_another(b: FleetBuilder) -> None:
    """Back-off is per node: the model goes where it has not failed."""
    b.node("n1").node("n2").rate("a", 1.0).fail("n1", "a", times=3)
    assert loads(plan(b)) == [("n2", "a")]


def test_a_node_over_its_budget_sheds_its_least_valuable_model(b: FleetBuilder) -> None:
    """A shrunken budget is honoured: the cheapest placement to lose goes, with that reason."""
    b.node("n1", vram_mb=20_000, loaded=["a", "b"]).rate("a", 1.0).rate("b", 0.5)
    b.node("n1", vram_mb=15_000, loaded=["a", "b"])  # the owner lowered the budget
    p = plan(b)
    assert unloads(p) == [("n1", "b", "evicted")]
    assert p.unloads[0].detail.startswith("the node is over its budget")


def test_disk_holds_weights_in_memory_and_the_new_one(b: FleetBuilder) -> None:
    """A node whose disk cannot hold its loaded weights plus the new ones is not used."""
    b.node("n1", vram_mb=48_000, disk_mb=10_000, loaded=["a"]).rate("b", 1.0)
    p = plan(b, busy={("n1", "a"): 1})
    assert [(u.model_id, u.reason) for u in p.unplaceable] == [
        (
            "b",
            "every node that could hold it is serving requests for the models it would evict (n1)",
        )
    ]
    b.node("n2", vram_mb=48_000, disk_mb=10_000, on_disk=["a", "c"])  # a cache, not memory
    assert loads(plan(b, busy={("n1", "a"): 1})) == [("n2", "b")]


def test_applying_a_plan_then_planning_again_changes_nothing(b: FleetBuilder) -> None:
    """Stability: once the fleet looks like the plan, the next plan is empty."""
    b.node("n1", loaded=["a"]).node("n2", vram_mb=16_000, loaded=["c"]).node("n3")
    b.rate("a", 0.1).rate("b", 3.0).rate("big", 1.0)
    b.advance(600.0)
    p = plan(b)
    assert not p.empty
    assert plan(b, now=b.now) == p
    after = apply_plan(b.state, p, b.now)
    assert planner.plan(after, b.now, CONFIG, {}).empty


def test_the_same_input_gives_the_same_plan_bytes(b: FleetBuilder) -> None:
    """Determinism: two plans of one state encode to identical bytes."""
    for i in range(6):
        b.node(f"n{i}", vram_mb=(i + 1) * 8_000, loaded=["a"] if i % 2 else [])
    b.rate("a", 7.0).rate("b", 4.0).rate("c", 0.3)
    first, second = plan(b), plan(b)
    assert msgspec.json.encode(first) == msgspec.json.encode(second)


def test_the_objective_is_never_worse_than_first_fit_decreasing(b: FleetBuilder) -> None:
    """The plan scores at least FFD's answer on the same fleet."""
    for i in range(5):
        b.node(f"n{i}", vram_mb=20_000, loaded=["a", "b"][: i % 3])
    b.rate("a", 0.3).rate("b", 6.0).rate("c", 9.0)
    fleet = build_fleet(b.state, b.now, CONFIG, {})
    assert plan(b).objective >= objective(fleet, first_fit_decreasing(fleet)) / SCALE


def test_when_cp_sat_finds_nothing_the_plan_falls_back_to_ffd(
    b: FleetBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An UNKNOWN from the solver still gives a plan: first-fit-decreasing's, labelled so."""
    monkeypatch.setattr(_cpsat, "solve", lambda *a, **kw: _cpsat.Solved("unknown", None, 0.0))
    b.node("n1").rate("a", 1.0)
    p = plan(b)
    assert (loads(p), p.solver) == ([("n1", "a")], "first-fit-decreasing (cp-sat unknown)")


def test_a_large_fleet_is_solved_over_a_neighbourhood(
    b: FleetBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the whole-problem size the solver sees a neighbourhood, and the plan stays valid."""
    monkeypatch.setattr(_neighbourhood, "WHOLE_PROBLEM_PAIRS", 0)
    for i in range(8):
        b.node(f"n{i}", vram_mb=20_000, loaded=["a", "c"] if i < 6 else [])
    b.rate("a", 9.0).rate("b", 5.0).rate("c", 0.01)
    p = plan(b)
    assert p.solver == "cp-sat optimal (neighbourhood)"
    assert ("n6", "b") in loads(p) or ("n7", "b") in loads(p)
    fleet = build_fleet(b.state, b.now, CONFIG, {})
    after = apply_plan(b.state, p, b.now)
    assert planner.plan(after, b.now, CONFIG, {}).empty
    assert p.objective >= objective(fleet, first_fit_decreasing(fleet)) / SCALE


def test_tidy_drops_worthless_loads_and_restores_unloads_that_fit(b: FleetBuilder) -> None:
    """A solver stopped early may leave slack; tidying removes it and never scores lower."""
    b.node("n1", loaded=["a"]).node("n2").rate("a", 0.5)
    fleet = build_fleet(b.state, b.now, CONFIG, {})
    sloppy = Changes(unloads=frozenset({("n1", "a")}), loads=frozenset({("n2", "a")}))
    assert feasible(fleet, sloppy)
    tidied = planner.tidy(fleet, sloppy)
    assert tidied == Changes()
    assert objective(fleet, tidied) > objective(fleet, sloppy)


def test_composing_rounds_cancels_what_a_later_round_undoes() -> None:
    """A load undone later was never needed; an unload undone later never happened."""
    first = Changes(unloads=frozenset({("n2", "b")}), loads=frozenset({("n1", "a")}))
    then = Changes(
        unloads=frozenset({("n1", "a"), ("n4", "d")}), loads=frozenset({("n2", "b"), ("n3", "c")})
    )
    assert compose(first, then) == Changes(
        unloads=frozenset({("n4", "d")}), loads=frozenset({("n3", "c")})
    )


def test_advancing_the_problem_makes_new_placements_ready_and_evictable(b: FleetBuilder) -> None:
    """After a round, its loads are evictable, on disk and counted; its unloads are gone."""
    b.node("n1", loaded=["a"]).node("n2").rate("a", 0.3).rate("b", 0.3)
    b.fail("n2", "b")
    fleet = build_fleet(b.state, b.now + 60.0, CONFIG, {})
    after = advance(
        fleet, Changes(unloads=frozenset({("n1", "a")}), loads=frozenset({("n2", "b")}))
    )
    n1, n2 = after.nodes
    assert (n1.evictable, n2.evictable, n2.blocked) == ((), ("b",), frozenset())
    assert "b" in n2.on_disk
    assert (after.models["a"].replicas, after.models["b"].replicas) == (0, 1)


def test_a_neighbourhood_too_narrow_for_one_round_takes_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rounds repeat from the improved placement until one gains nothing; then it rests.

    With one candidate per short model and no moves, the first round can only
    shed the 20 GB model from the node that shrank to 10 GB; the second sees it
    short and swaps it with the small model on the 20 GB node.
    """
    monkeypatch.setattr(_neighbourhood, "WHOLE_PROBLEM_PAIRS", 0)
    monkeypatch.setattr(_neighbourhood, "MAX_CANDIDATES", 1)
    monkeypatch.setattr(_neighbourhood, "MOVER_CANDIDATES", 0)
    b = FleetBuilder().model("big", vram_mb=20_000).model("small", vram_mb=5_000)
    b.node("n0", vram_mb=20_000, loaded=["small"]).node("n1", vram_mb=10_000, loaded=["big"])
    b.rate("big", 3.0).rate("small", 7.0)
    p = plan(b)
    assert p.solver == "cp-sat optimal (neighbourhood, 2 rounds)"
    assert (loads(p), unloads(p)) == (
        [("n0", "big"), ("n1", "small")],
        [("n0", "small", "evicted"), ("n1", "big", "evicted")],
    )
    assert planner.plan(apply_plan(b.state, p, b.now), b.now, CONFIG, {}).empty
