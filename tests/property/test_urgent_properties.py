"""Urgent placement's promises, over random fleets and over fleets contested for room.

``scenarios`` (shared with the planner's properties) covers every kind of node
and key; ``contested`` packs a few nodes full of copies with demand — idle,
busy, draining, just loaded — and asks for a model that needs room, so every
path (free room, eviction, drain, refusal) is exercised often.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_planner_properties import CONFIG, Scenario, _cold_model, _sizes, requesters, scenarios

from porten.domain import events as ev
from porten.domain.state import NodeState
from porten.scheduler import filters as f
from porten.scheduler.apply import apply_urgent
from porten.scheduler.eligibility import Requester, node_admits
from porten.scheduler.plan import DrainPlacement, Unplaceable, UrgentPlacement
from porten.scheduler.testing import FleetBuilder
from porten.scheduler.urgent import place_urgently

#: Urgent placement is a greedy scan: cheap, so many examples.
URGENT = settings(max_examples=300, deadline=None)
ANYONE = Requester(owner_id="u1")
_SIZES = (2_000, 5_000, 8_000, 10_000, 20_000)
_CONTESTED_RATES = (0.0, 0.01, 0.05, 0.2, 0.5, 1.5, 4.0)


@st.composite
def contested(draw: st.DrawFn) -> Scenario:
    """One to three 24 GB nodes packed with copies, and a cold model that needs room.

    Every model gets a demand rate (the cold one too, sometimes a starved
    history); copies are loaded by the node (reported) or by the hub (a load
    id, maybe just now), some serve requests, one may be draining.
    """
    b = FleetBuilder()
    models = [f"m{i}" for i in range(6)]
    for m in models:
        b.model(m, vram_mb=draw(st.sampled_from(_SIZES)))
    b.model("cold", vram_mb=draw(st.sampled_from(_SIZES[1:])))
    for k in range(draw(st.integers(1, 3))):
        node, room, reported = f"n{k}", 24_000, []
        for m in draw(st.permutations(models)):
            size = b.state.catalog[m].entry.vram_mb
            if size <= room and _mostly_true(draw):
                room -= size
                reported.append(m)
        hub_loaded = reported[len(reported) // 2 :] if draw(st.booleans()) else []
        b.node(node, vram_mb=24_000, loaded=[m for m in reported if m not in hub_loaded])
        for m in hub_loaded:
            b.load(node, m)
    b.advance(draw(st.sampled_from((0.0, 30.0, 120.0))))
    for m in [*models, "cold"]:
        rate = draw(st.sampled_from(_CONTESTED_RATES))
        if rate:
            b.demand(m, served=round(rate * CONFIG.demand_window_s))
    if draw(st.booleans()):  # the cold model's requests have gone unmet a while
        for _ in range(draw(st.integers(1, 4))):
            b.advance(60.0).demand("cold", served=0, unmet=draw(st.integers(1, 5)))
    placed = sorted((n.node_id, m) for n in b.state.nodes.values() for m in n.placements)
    serving = draw(st.sets(st.sampled_from(placed))) if placed else set()  # none may be placed
    busy = {p: draw(st.integers(1, 700)) for p in serving}
    if placed and draw(st.booleans()):
        n, m = draw(st.sampled_from(placed))
        b.emit(ev.ModelDraining, node_id=n, model_id=m, evicted_for="")
    now = b.now + draw(st.sampled_from((1.0, 30.0, 61.0)))
    return Scenario(state=b.state, now=now, busy=busy, events=tuple(b.events))


def _mostly_true(draw: st.DrawFn) -> bool:
    return draw(st.sampled_from((True, True, True, False)))


#: Every kind of fleet, and keys with policies or none.
FLEETS = scenarios() | scenarios(crowded=True) | contested()
KEYS = requesters() | st.just(ANYONE)




@URGENT
@given(FLEETS, KEYS, st.data())
def test_urgent_placement_keeps_every_promise(s: Scenario, who: Requester, data: Any) -> None:
    """The chosen node admits the key, fits, is not backing off, and only idle-ready models go.

    Checked: the node admits the requester and is online; for a new load it is
    provisionable, fits the model at all and is not in back-off; evictions are
    on that node, of ready placements with no request in flight, and lowest
    demand first — no evictable model left on the node has less demand than an
    evicted one; after the evictions and the load the node is within budgets.
    """
    model_id = _cold_model(s, data)
    out = place_urgently(s.state, model_id, who, s.now, CONFIG, s.busy)
    if isinstance(out, Unplaceable):
        return
    node_id = out.node_id if isinstance(out, DrainPlacement) else out.load.node_id
    node = s.state.nodes[node_id]
    assert node.online
    assert node_admits(who, node)
    if isinstance(out, UrgentPlacement) and out.load.reason.startswith("already"):
        assert not node.placements[model_id].draining
        assert not out.evictions
        return
    assert node in f.provisionable_nodes(s.state)
    assert model_id not in node.placements
    assert f.fits_at_all(s.state, node, model_id)
    assert not f.in_backoff(node, model_id, s.now, CONFIG)
    if isinstance(out, DrainPlacement):
        _assert_drains_make_room(s, node, out)
        return
    _assert_lowest_demand_evicted(s, node, out)
    after = apply_urgent(s.state, out, s.now).nodes[node.node_id]
    vram, disk = _sizes(s.state, list(after.placements))
    assert vram <= node.vram_budget_mb
    assert disk <= node.disk_budget_mb


def _loss(s: Scenario, node_id: str, m: str) -> float:
    """Demand a copy leaves unserved: beyond its other ready copies, at least its backlog."""
    rate = f.demand_rate(s.state, m, s.now, CONFIG)
    copies = f.ready_copies(s.state)[m]
    backlog = s.busy.get((node_id, m), 0) / CONFIG.demand_window_s
    return max(f.copy_loss(rate, copies, CONFIG), backlog)


def _tail(s: Scenario, node_id: str, m: str) -> bool:
    vram = s.state.catalog[m].entry.vram_mb
    return f.reload_requests(_loss(s, node_id, m), vram, CONFIG) < CONFIG.tail_requests


def _may_go(s: Scenario, node: NodeState, m: str, wanted: str) -> bool:
    """The admission rule, restated: an idle copy for twice its demand or when it is the
    tail; a busy one for twice its demand when the model is not the tail, or when it is the
    tail and the model is starved; never a copy the hub loaded within ``min_residency_s``."""
    p = node.placements[m]
    if p.load_id and s.now - p.since < CONFIG.min_residency_s:
        return False
    rate = f.demand_rate(s.state, wanted, s.now, CONFIG)
    more = _loss(s, node.node_id, m) * CONFIG.displace_ratio < rate
    tail = _tail(s, node.node_id, m)
    if not f.is_busy(s.busy, node.node_id, m):
        return more or tail
    size = s.state.catalog[wanted].entry.vram_mb
    wanted_tail = f.reload_requests(rate, size, CONFIG) < CONFIG.tail_requests
    starved = f.starved_s(s.state, wanted, s.now) >= CONFIG.starvation_s
    return (more and not wanted_tail) or (starved and tail)


def _assert_lowest_demand_evicted(s: Scenario, node: NodeState, out: UrgentPlacement) -> None:
    """Evictions are idle ready copies on that node that may go, least demand lost first."""
    evicted = [u.model_id for u in out.evictions]
    for u in out.evictions:
        assert (u.node_id, u.reason, u.evicted_for) == (node.node_id, "evicted", out.load.model_id)
    evictable = f.evictable(node, s.busy)
    assert set(evicted) <= set(evictable)
    allowed = [m for m in evictable if _may_go(s, node, m, out.load.model_id)]
    assert set(evicted) <= set(allowed)
    kept = [m for m in allowed if m not in evicted]
    if evicted and kept:
        loss = max(_loss(s, node.node_id, m) for m in evicted)
        assert loss <= min(_loss(s, node.node_id, m) for m in kept)


def _assert_drains_make_room(s: Scenario, node: NodeState, out: DrainPlacement) -> None:
    """Drains are serving copies on that node that may go; with the drains under way they
    make room for the model."""
    drained = [u.model_id for u in out.drains]
    for u in out.drains:
        assert (u.node_id, u.reason, u.evicted_for) == (node.node_id, "evicted", out.model_id)
        p = node.placements[u.model_id]
        assert p.phase == "ready"
        assert not p.draining
        assert _may_go(s, node, u.model_id, out.model_id)
    going = [m for m, p in node.placements.items() if p.draining] + drained
    entry = s.state.catalog[out.model_id].entry
    vram, disk = _sizes(s.state, [m for m in node.placements if m not in going])
    assert vram + entry.vram_mb <= node.vram_budget_mb
    assert disk + entry.disk_mb <= node.disk_budget_mb


@URGENT
@given(FLEETS, KEYS, st.data())
def test_urgent_placement_never_takes_more_demand_than_it_places(
    s: Scenario, who: Requester, data: Any
) -> None:
    """Every copy evicted or drained has less than half the placed model's demand, or is the
    long tail (fewer than ``tail_requests`` requests expected while it reloads)."""
    model_id = _cold_model(s, data)
    out = place_urgently(s.state, model_id, who, s.now, CONFIG, s.busy)
    if isinstance(out, Unplaceable):
        return
    victims = out.drains if isinstance(out, DrainPlacement) else out.evictions
    rate = f.demand_rate(s.state, model_id, s.now, CONFIG)
    for u in victims:
        loss = _loss(s, u.node_id, u.model_id)
        assert loss * CONFIG.displace_ratio < rate or _tail(s, u.node_id, u.model_id), u


@URGENT
@given(FLEETS, KEYS, st.data())
def test_urgent_unplaceable_means_no_admissible_node_could_hold_it(
    s: Scenario, who: Requester, data: Any
) -> None:
    """If it refuses an offered model, no admissible node could take it even evicting or
    draining every copy the admission rule lets go (and the drains under way)."""
    model_id = _cold_model(s, data)
    out = place_urgently(s.state, model_id, who, s.now, CONFIG, s.busy)
    if not isinstance(out, Unplaceable) or not s.state.catalog[model_id].offered:
        return
    assert out.reason
    entry = s.state.catalog[model_id].entry
    for node in s.state.nodes.values():
        if not (node.online and node_admits(who, node)):
            continue
        assert model_id not in node.placements or node.placements[model_id].draining, (
            "an admissible node already has it"
        )
        usable = node.provisionable and node.vram_budget_mb > 0 and node.disk_budget_mb > 0
        if not usable or model_id in node.placements or f.in_backoff(node, model_id, s.now, CONFIG):
            continue
        going = [
            m
            for m, p in node.placements.items()
            if p.draining or (p.phase == "ready" and _may_go(s, node, m, model_id))
        ]
        vram, disk = _sizes(s.state, [m for m in node.placements if m not in going])
        assert (
            vram + entry.vram_mb > node.vram_budget_mb or disk + entry.disk_mb > node.disk_budget_mb
        ), f"{node.node_id} could hold {model_id}: {out.reason}"
