"""The scheduling core's promises, over random fleets, catalogs, demand, busy sets and keys.

A scenario is built through the real fold (``FleetBuilder``): up to six nodes of
mixed budgets (zero included), provisionable or fixed-set, online or not, in
regions and trust classes, holding random loaded and cached models — even more
than their budget, as an agent may report after its owner lowers it — with
loads in flight, failed loads in back-off, demand from none to many replicas'
worth, idle time, and requests in flight on random placements.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from porten.domain import events as ev
from porten.domain.codec import encode_event
from porten.domain.state import FleetState, NodeState
from porten.domain.values import TRUST_ORDER, KeyPolicy
from porten.scheduler import _neighbourhood
from porten.scheduler import filters as f
from porten.scheduler._fleet import SCALE, Changes, advance, build_fleet, objective
from porten.scheduler.apply import apply_plan
from porten.scheduler.eligibility import Requester
from porten.scheduler.ffd import first_fit_decreasing
from porten.scheduler.plan import (
    Busy,
    Plan,
    PlannerConfig,
)
from porten.scheduler.planner import plan
from porten.scheduler.testing import FleetBuilder

CONFIG = PlannerConfig()
#: Each example runs the solver once or twice: keep the count moderate. Every sampled
#: tuple starts with its most common value: Hypothesis favours the first element.
PLANS = settings(max_examples=80, deadline=None)

_VRAM = (24_000, 8_000, 12_000, 16_000, 48_000, 0)
_DISK = (200_000, 20_000, 8_000, 60_000, 0)
_MODEL_VRAM = (10_000, 2_000, 4_000, 8_000, 20_000, 30_000, 52_000)
_RATES = (1.5, 0.0, 0.4, 3.0, 0.002, 9.0, 0.0)


@dataclass(frozen=True)
class Scenario:
    """A fleet, the moment to plan at and what is serving requests."""

    state: FleetState
    now: float
    busy: Busy
    events: tuple[Any, ...]


def _mostly(draw: st.DrawFn, label: str) -> bool:
    """True four times in five (sampled, so it does not shrink towards the rare case)."""
    return draw(st.sampled_from((True, True, True, True, False)), label=label)


def _node(draw: st.DrawFn, b: FleetBuilder, node_id: str, models: list[str], crowded: bool) -> None:
    vram = draw(st.sampled_from(_VRAM[:-1] if crowded else _VRAM))
    loaded = sorted(draw(st.sets(st.sampled_from(models), max_size=3)))
    if crowded or _mostly(draw, "loaded fits"):  # otherwise the owner lowered the budget
        sizes = {m: b.state.catalog[m].entry.vram_mb for m in loaded}
        loaded = [m for k, m in enumerate(loaded) if sum(sizes[x] for x in loaded[: k + 1]) <= vram]
    b.node(
        node_id,
        vram_mb=vram,
        disk_mb=draw(st.sampled_from(_DISK)),
        provisionable=crowded or _mostly(draw, "provisionable"),
        online=crowded or _mostly(draw, "online"),
        loaded=loaded,
        on_disk=draw(st.sets(st.sampled_from(models), max_size=3)),
        owner_id=draw(st.sampled_from(("u1", "u2"))),
        region=draw(st.sampled_from(("", "eu", "us"))),
        trust_class=draw(st.sampled_from(TRUST_ORDER)),
    )


def _activity(draw: st.DrawFn, b: FleetBuilder, nodes: list[str], models: list[str]) -> None:
    """Loads in flight, failures, demand, idle time and requests served."""
    pairs = st.tuples(st.sampled_from(nodes), st.sampled_from(models))
    for n, m in draw(st.lists(pairs, max_size=3)):
        node = b.state.nodes[n]
        if node.online and m not in node.placements:
            b.pending(n, m, draw(st.sampled_from(("requested", "downloading", "loading"))))
    for n, m in draw(st.lists(pairs, max_size=3)):
        b.fail(n, m, times=draw(st.integers(1, 4)), every_s=5.0)
    b.advance(draw(st.sampled_from((0.0, 300.0, 600.0, 900.0))))
    for m in models:
        rate = draw(st.sampled_from(_RATES))
        if rate:
            unmet = draw(st.sampled_from((0, 0, 5)))
            b.demand(m, served=round(rate * CONFIG.demand_window_s), unmet=unmet)
    for n, m in draw(st.lists(pairs, max_size=3)):
        if m in b.state.nodes[n].placements:
            b.serve(n, m)
    for n, m in draw(st.lists(pairs, max_size=1)):
        p = b.state.nodes[n].placements.get(m)
        if p is not None and p.phase == "ready":  # a drain under way for some other model
            b.emit(ev.ModelDraining, node_id=n, model_id=m, evicted_for="")


@st.composite
def scenarios(draw: st.DrawFn, crowded: bool = False) -> Scenario:
    """A random fleet in a plausible state (see the module docstring).

    ``crowded``: every node online and provisionable with a VRAM budget, its
    loaded models fitting it — where urgent placement has to evict.
    """
    b = FleetBuilder()
    models = [f"m{i}" for i in range(draw(st.sampled_from((1, 2, 3, 4, 5)), label="models"))]
    for m in models:
        vram = draw(st.sampled_from(_MODEL_VRAM))
        disk = draw(st.sampled_from((vram // 2, vram, vram * 2)))
        b.model(m, vram_mb=vram, disk_mb=disk, offered=_mostly(draw, "offered"))
    nodes = [f"n{i}" for i in range(draw(st.sampled_from((1, 2, 3, 4, 5, 6)), label="nodes"))]
    for n in nodes:
        _node(draw, b, n, models, crowded)
    _activity(draw, b, nodes, models)
    placed = sorted((n.node_id, m) for n in b.state.nodes.values() for m in n.placements)
    busy_pairs = draw(st.sets(st.sampled_from(placed), max_size=3)) if placed else set()
    busy = {p: draw(st.integers(0, 3)) for p in sorted(busy_pairs)}
    now = b.now + draw(st.sampled_from((10.0, 0.0, 59.0, 120.0, 700.0)))
    return Scenario(state=b.state, now=now, busy=busy, events=tuple(b.events))


@st.composite
def requesters(draw: st.DrawFn) -> Requester:
    """A key's owner and node constraints: regions, minimum trust, own nodes only."""
    regions = st.frozensets(st.sampled_from(("", "eu", "us")), min_size=1, max_size=2)
    policy = KeyPolicy(
        regions=draw(st.just(frozenset()) | regions),
        min_trust=draw(st.sampled_from(("community", "community", *TRUST_ORDER[1:]))),
        fleet=draw(st.sampled_from(("all", "all", "own"))),
    )
    return Requester(owner_id=draw(st.sampled_from(("u1", "u2"))), policy=policy)


# --- helpers --------------------------------------------------------------------------------


def _pinned(s: Scenario, node: NodeState) -> list[str]:
    """Placements the planner may not touch: loads in progress, busy ones, and draining ones
    (the drain, not the planner, unloads those as their last request ends)."""
    return [
        m
        for m, p in node.placements.items()
        if p.phase != "ready" or p.draining or f.is_busy(s.busy, node.node_id, m)
    ]


def _sizes(state: FleetState, models: list[str]) -> tuple[int, int]:
    entries = [state.catalog[m].entry for m in models if m in state.catalog]
    return sum(e.vram_mb for e in entries), sum(e.disk_mb for e in entries)


def _cold_model(s: Scenario, data: Any) -> str:
    """A model to request: offered and held by no online node, when there is such a model."""
    held = {m for n in s.state.nodes.values() if n.online for m in n.placements}
    offered = {m for m, c in s.state.catalog.items() if c.offered}
    cold = sorted(offered - held) or sorted(offered) or sorted(s.state.catalog)
    return str(data.draw(st.sampled_from(cold), label="model"))


def _pairs(decisions: Any) -> set[tuple[str, str]]:
    return {(d.node_id, d.model_id) for d in decisions}


def _plan(s: Scenario) -> Plan:
    return plan(s.state, s.now, CONFIG, s.busy)


# --- the planner's safety promises (checked on whole problems and on neighbourhoods) ---------


def assert_within_budgets(s: Scenario, p: Plan) -> None:
    """After the plan each node's VRAM and memory-disk fit its budget, or what it must keep."""
    after = apply_plan(s.state, p, s.now)
    loaded_on = {d.node_id for d in p.loads}
    for node in f.provisionable_nodes(s.state):
        pinned_vram, pinned_disk = _sizes(s.state, _pinned(s, node))
        vram, disk = _sizes(after, list(after.nodes[node.node_id].placements))
        assert vram <= max(node.vram_budget_mb, pinned_vram), node.node_id
        assert disk <= max(node.disk_budget_mb, pinned_disk), node.node_id
        if node.node_id in loaded_on:  # a node taking a load is within its budgets proper
            assert vram <= node.vram_budget_mb
            assert disk <= node.disk_budget_mb


def assert_loads_eligible(s: Scenario, p: Plan) -> None:
    """Loads go once each to online provisionable nodes that fit and do not back off."""
    provisionable = {n.node_id for n in f.provisionable_nodes(s.state)}
    pairs = [(d.node_id, d.model_id) for d in p.loads]
    assert len(pairs) == len(set(pairs))
    for node_id, m in pairs:
        node = s.state.nodes[node_id]
        assert node_id in provisionable
        assert f.fits_at_all(s.state, node, m)
        assert not f.in_backoff(node, m, s.now, CONFIG)
        assert m not in node.placements
        assert s.state.catalog[m].offered
        assert f.demand_rate(s.state, m, s.now, CONFIG) > 0


def assert_unloads_safe(s: Scenario, p: Plan) -> None:
    """Unloads are of ready placements with no request in flight and not already draining,
    on online provisionable nodes."""
    for u in p.unloads:
        node = s.state.nodes[u.node_id]
        assert node.online
        assert node.provisionable
        assert node.placements[u.model_id].phase == "ready"
        assert not node.placements[u.model_id].draining
        assert not f.is_busy(s.busy, u.node_id, u.model_id)


def assert_last_copies_kept(s: Scenario, p: Plan) -> None:
    """A model with demand loses its last copy only to the first copy of a model with more
    demand loaded on the same node (nodes over their budget shed freely)."""
    after = apply_plan(s.state, p, s.now)
    online = [n for n in after.nodes.values() if n.online]
    loaded = {(d.node_id, d.model_id) for d in p.loads}
    for u in p.unloads:
        m = u.model_id
        rate = f.demand_rate(s.state, m, s.now, CONFIG)
        if u.reason != "evicted" or rate <= 0 or any(m in n.placements for n in online):
            continue
        node = s.state.nodes[u.node_id]
        pinned_vram, pinned_disk = _sizes(s.state, _pinned(s, node))
        kept_vram, kept_disk = _sizes(s.state, f.evictable(node, s.busy))
        if (
            pinned_vram + kept_vram > node.vram_budget_mb
            or pinned_disk + kept_disk > node.disk_budget_mb
        ):
            continue  # over its room (VRAM or disk): it sheds
        causes = [
            x
            for n, x in loaded
            if n == u.node_id
            and f.demand_rate(s.state, x, s.now, CONFIG) > rate
            and not any(x in q.placements for q in s.state.nodes.values() if q.online)
        ]
        assert causes, (u, p.loads)


def ffd_objective(s: Scenario) -> int:
    """First-fit-decreasing's objective on the instance the planner solves."""
    idle = f.idle_unloads(s.state, s.now, CONFIG, s.busy)
    gone = [(u.node_id, u.model_id) for u in idle]
    fleet = build_fleet(s.state, s.now, CONFIG, s.busy, gone=gone)
    return objective(fleet, first_fit_decreasing(fleet))


@PLANS
@given(scenarios())
def test_a_plan_never_exceeds_a_budget(s: Scenario) -> None:
    """After the plan, each node's VRAM and memory-disk fit its budget, or what it must keep."""
    assert_within_budgets(s, _plan(s))


@PLANS
@given(scenarios())
def test_a_plan_never_loads_on_an_ineligible_node(s: Scenario) -> None:
    """Loads go to online provisionable nodes that fit the model and are not backing off."""
    assert_loads_eligible(s, _plan(s))


@PLANS
@given(scenarios())
def test_a_plan_never_evicts_a_busy_placement_or_a_pending_load(s: Scenario) -> None:
    """Every unload is of a ready placement with no request in flight."""
    assert_unloads_safe(s, _plan(s))


@PLANS
@given(scenarios())
def test_a_plan_never_takes_the_last_copy_of_a_model_for_less(s: Scenario) -> None:
    """The last copy of a model with demand goes only for a model with more, loaded there."""
    assert_last_copies_kept(s, _plan(s))


@PLANS
@given(scenarios())
def test_a_plan_never_touches_a_fixed_set_or_offline_node(s: Scenario) -> None:
    """Decisions only name online provisionable nodes; fixed-set nodes keep what they hold."""
    p = _plan(s)
    for d in (*p.unloads, *p.loads):
        node = s.state.nodes[d.node_id]
        assert node.online
        assert node.provisionable


@PLANS
@given(scenarios())
def test_on_a_neighbourhood_the_promises_hold_too(s: Scenario) -> None:
    """Forced onto the large-fleet path (narrow neighbourhoods, several rounds), plans stay safe.

    Budgets, eligibility, busy and pending placements, and the objective
    against FFD, exactly as on the whole problem.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_neighbourhood, "WHOLE_PROBLEM_PAIRS", 0)
        mp.setattr(_neighbourhood, "MAX_CANDIDATES", 1)
        p = _plan(s)
    assert_within_budgets(s, p)
    assert_loads_eligible(s, p)
    assert_unloads_safe(s, p)
    assert_last_copies_kept(s, p)
    assert round(p.objective * SCALE) >= ffd_objective(s)


@PLANS
@given(scenarios())
def test_unload_reasons_are_true(s: Scenario) -> None:
    """ "idle" only after a whole unused window with no demand; "operator" only for a model
    the catalog withdrew; otherwise "evicted"."""
    for u in _plan(s).unloads:
        assert u.reason in ("idle", "evicted", "operator")
        if u.reason == "operator":
            assert not s.state.catalog[u.model_id].offered
            assert u.detail == f"{u.model_id} was withdrawn from the catalog"
        if u.reason == "idle":
            p = s.state.nodes[u.node_id].placements[u.model_id]
            assert s.now - p.last_used_at >= CONFIG.demand_window_s
            assert f.demand_rate(s.state, u.model_id, s.now, CONFIG) == 0


@PLANS
@given(scenarios())
def test_applying_a_plan_and_planning_again_gives_an_empty_plan(s: Scenario) -> None:
    """Stability: once every decision has completed, the next plan at the same time is empty."""
    after = apply_plan(s.state, _plan(s), s.now)
    again = plan(after, s.now, CONFIG, s.busy)
    assert again.empty, (again.unloads, again.loads)


@PLANS
@given(scenarios())
def test_the_solvers_view_of_an_applied_plan_is_the_folded_one(s: Scenario) -> None:
    """Advancing the integer problem by a plan equals rebuilding it from the folded events.

    This is what lets one plan take several solver rounds: each round starts from
    the problem the fold of the previous round's events would give.
    """
    p = _plan(s)
    idle = [(u.node_id, u.model_id) for u in p.unloads if u.reason in ("idle", "operator")]
    evicted = {(u.node_id, u.model_id) for u in p.unloads if u.reason == "evicted"}
    changes = Changes(unloads=frozenset(evicted), loads=frozenset(_pairs(p.loads)))
    advanced = advance(build_fleet(s.state, s.now, CONFIG, s.busy, gone=idle), changes)
    rebuilt = build_fleet(apply_plan(s.state, p, s.now), s.now, CONFIG, s.busy)
    assert advanced.nodes == rebuilt.nodes
    for m, t in advanced.models.items():
        if m in rebuilt.models:
            assert rebuilt.models[m] == t
        else:  # a model with no value leaves the problem with its last placement
            assert not t.values


@PLANS
@given(scenarios())
def test_the_same_input_gives_the_same_plan_bytes(s: Scenario) -> None:
    """Determinism within a process: two plans encode to identical bytes."""
    assert msgspec.json.encode(_plan(s)) == msgspec.json.encode(_plan(s))


@PLANS
@given(scenarios())
def test_the_objective_is_never_worse_than_first_fit_decreasing(s: Scenario) -> None:
    """The plan scores at least the greedy FFD answer on the same instance."""
    assert round(_plan(s).objective * SCALE) >= ffd_objective(s)


_PLAN_IN_SUBPROCESS = """
import sys
from porten.domain.codec import decode_event
from porten.domain.fold import fold
from porten.scheduler.plan import PlannerConfig
from porten.scheduler.planner import plan
import msgspec
for block in sys.stdin.read().split("\\n\\n"):
    head, *lines = block.splitlines()
    now, busy = msgspec.json.decode(head)
    state = fold(decode_event(line.encode()) for line in lines)
    busy = {(n, m): k for n, m, k in busy}
    print(msgspec.json.encode(plan(state, now, PlannerConfig(), busy)).hex())
"""


def _seeded_scenarios(count: int) -> list[Scenario]:
    """Scenarios drawn with a seeded RNG instead of Hypothesis, for the subprocess test."""
    out = []
    for seed in range(count):
        rng = random.Random(seed)
        b = FleetBuilder()
        models = [f"m{i}" for i in range(rng.randint(2, 5))]
        for m in models:
            b.model(m, vram_mb=rng.choice(_MODEL_VRAM))
        for i in range(rng.randint(2, 6)):
            b.node(f"n{i}", vram_mb=rng.choice(_VRAM[1:]), loaded=rng.sample(models, 1))
        for m in models:
            b.rate(m, rng.choice(_RATES))
        placed = sorted((n.node_id, m) for n in b.state.nodes.values() for m in n.placements)
        busy = {placed[0]: 1}
        out.append(Scenario(b.state, b.now, busy, tuple(b.events)))
    return out


def test_plans_do_not_depend_on_the_hash_seed() -> None:
    """Processes with different string-hash seeds make byte-identical plans."""
    scenarios_ = _seeded_scenarios(6)
    here = "".join(msgspec.json.encode(_plan(s)).hex() + "\n" for s in scenarios_)
    blocks = []
    for s in scenarios_:
        head = msgspec.json.encode([s.now, [[n, m, k] for (n, m), k in s.busy.items()]])
        blocks.append("\n".join([head.decode(), *(encode_event(e).decode() for e in s.events)]))
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", _PLAN_IN_SUBPROCESS],
            input="\n\n".join(blocks),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert out.stdout == here, f"plans differ under PYTHONHASHSEED={seed}"
