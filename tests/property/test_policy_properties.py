"""Fail-closed routing, as a property: no request ever touches a node its key does not admit.

A request's whole journey is replayed through the real pure core the hub
runs — :func:`~porten.scheduler.routing.candidates` for serving (with the
nodes already tried excluded, as the relay's retry loop does), and
:func:`~porten.scheduler.urgent.place_urgently` for a cold model (as the load
coordinator does, up to three loads, each of which may fail) — over random
fleets (regions, trust classes, owners, online or not, provisionable or
not, loads in flight), random key policies (regions, minimum trust, own
fleet, model lists) and random failures: nodes failing before their first
byte, loads failing, a node dying mid-stream. Every node picked to serve and
every node picked to load must satisfy every constraint of the key; when no
node does, the answer is 503 (or 403 for a model outside the key's list,
404 for one not offered) and no load was started anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from porten.domain import events as ev
from porten.domain.fold import evolve
from porten.domain.state import FleetState, NodeState, trust_admits
from porten.domain.values import TRUST_ORDER, KeyPolicy
from porten.scheduler.apply import apply_urgent
from porten.scheduler.eligibility import Requester, model_allowed, node_admits
from porten.scheduler.plan import PlannerConfig, Unplaceable
from porten.scheduler.routing import NodeLoad, candidates
from porten.scheduler.testing import FleetBuilder
from porten.scheduler.urgent import place_urgently

CONFIG = PlannerConfig()
MODELS = ("m1", "m2", "m3")
REGIONS = ("", "eu", "us")
OWNERS = ("u1", "u2")
#: As the load coordinator: loads one request may start before it gives up.
MAX_LOADS = 3

Outcome = Literal["ok", "403", "404", "502", "503"]


@dataclass
class Journey:
    """What one request did: the nodes it was served by or tried, and the loads it started."""

    outcome: Outcome = "503"
    tried: list[str] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    evicted_on: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Scenario:
    """A fleet, a request and what goes wrong during it."""

    state: FleetState
    now: float
    model: str
    requester: Requester
    fail_before_first_byte: frozenset[str]
    fail_loads: frozenset[str]
    dies_mid_stream: bool


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A random fleet (through the real fold), key, model and failures."""
    b = FleetBuilder()
    for m in MODELS:
        b.model(m, vram_mb=draw(st.sampled_from((4_000, 8_000, 20_000))),
                offered=draw(st.sampled_from((True, True, True, False))))
    nodes = [f"n{i}" for i in range(draw(st.integers(1, 6), label="nodes"))]
    for n in nodes:
        b.node(
            n,
            vram_mb=draw(st.sampled_from((24_000, 8_000, 0))),
            provisionable=draw(st.booleans()),
            online=draw(st.sampled_from((True, True, True, False))),
            loaded=draw(st.sets(st.sampled_from(MODELS), max_size=2)),
            owner_id=draw(st.sampled_from(OWNERS)),
            region=draw(st.sampled_from(REGIONS)),
            trust_class=draw(st.sampled_from(TRUST_ORDER)),
        )
    for n, m in draw(st.lists(st.tuples(st.sampled_from(nodes), st.sampled_from(MODELS)),
                              max_size=2)):
        if b.state.nodes[n].online and m not in b.state.nodes[n].placements:
            b.pending(n, m, draw(st.sampled_from(("requested", "downloading", "loading"))))
    policy = KeyPolicy(
        regions=draw(st.just(frozenset()) | st.frozensets(st.sampled_from(REGIONS), min_size=1,
                                                          max_size=2)),
        min_trust=draw(st.sampled_from(TRUST_ORDER)),
        fleet=draw(st.sampled_from(("all", "own"))),
        models=draw(st.just(frozenset()) | st.frozensets(st.sampled_from(MODELS), max_size=2)),
    )
    return Scenario(
        state=b.state, now=b.now + 1.0, model=draw(st.sampled_from(MODELS)),
        requester=Requester(owner_id=draw(st.sampled_from(OWNERS)), policy=policy),
        fail_before_first_byte=frozenset(draw(st.sets(st.sampled_from(nodes)))),
        fail_loads=frozenset(draw(st.sets(st.sampled_from(nodes)))),
        dies_mid_stream=draw(st.booleans()),
    )


def _links(state: FleetState) -> dict[str, NodeLoad]:
    """Every online node has a live link (the router's other input)."""
    return {n.node_id: NodeLoad() for n in state.nodes.values() if n.online}


def _finish_load(state: FleetState, s: Scenario, node_id: str, now: float) -> FleetState:
    """The node's load of the model completes, or fails if the scenario says so."""
    p = state.nodes[node_id].placements.get(s.model)
    if p is None or p.phase == "ready":
        return state
    if node_id in s.fail_loads:
        return evolve(state, ev.LoadFailed(at=now, actor="test", node_id=node_id,
                                           model_id=s.model, load_id=p.load_id, error="boom"))
    return evolve(state, ev.ModelLoaded(at=now, actor="test", node_id=node_id,
                                        model_id=s.model, load_id=p.load_id))


def _warm(s: Scenario, state: FleetState, j: Journey) -> tuple[FleetState, bool]:
    """The load coordinator: place urgently (bounded), follow loads to ready or failure."""
    now = s.now
    while len(j.loads) < MAX_LOADS:
        ready = [n for n in state.nodes.values() if n.online and node_admits(s.requester, n)
                 and (p := n.placements.get(s.model)) is not None and p.phase == "ready"]
        if ready:
            return state, True
        decision = place_urgently(state, s.model, s.requester, now, CONFIG, {})
        if isinstance(decision, Unplaceable):
            return state, False
        node_id = decision.load.node_id
        j.evicted_on += [u.node_id for u in decision.evictions]
        if decision.load.reason.startswith("already"):
            state = _finish_load(state, s, node_id, now)  # join the load in flight
        else:
            j.loads.append(node_id)
            state = apply_urgent(state, decision, now)
            if node_id in s.fail_loads:
                state = evolve(state, ev.ModelUnloaded(at=now, actor="test", node_id=node_id,
                                                       model_id=s.model, reason="failed"))
        now += 1.0
    return state, False


def journey(s: Scenario) -> Journey:
    """Replay one request through routing, retries and on-demand loading."""
    j = Journey()
    c = s.state.catalog.get(s.model)
    if c is None or not c.offered:
        j.outcome = "404"
        return j
    if not model_allowed(s.requester, s.model):
        j.outcome = "403"
        return j
    state, warmed, tried = s.state, False, set[str]()
    while True:
        ranked = candidates(state, s.model, s.requester, _links(state),
                            exclude=frozenset(tried))
        if not ranked:
            if tried:
                j.outcome = "502"
                return j
            if warmed:
                j.outcome = "503"
                return j
            state, ok = _warm(s, state, j)
            if not ok:
                j.outcome = "502" if j.loads else "503"
                return j
            warmed = True
            continue
        node = ranked[0]
        tried.add(node.node_id)
        j.tried.append(node.node_id)
        if node.node_id in s.fail_before_first_byte:
            continue  # retried on the next candidate, as the relay does
        j.outcome = "502" if s.dies_mid_stream else "ok"  # no retry after the first byte
        return j


def _admits(s: Scenario, node_id: str) -> bool:
    node: NodeState = s.state.nodes[node_id]
    policy = s.requester.policy
    return (
        (not policy.regions or node.region in policy.regions)
        and trust_admits(policy.min_trust, node.trust_class)
        and (policy.fleet == "all" or node.owner_id == s.requester.owner_id)
    )


@settings(max_examples=600, deadline=None)
@given(scenarios())
def test_every_node_a_request_touches_satisfies_its_key(s: Scenario) -> None:
    """Served, tried, loaded onto or evicted from: every node meets every constraint of the key.

    ``_admits`` restates the policy independently of ``node_admits``, so a bug
    in the shared filter cannot hide itself.
    """
    j = journey(s)
    for node_id in [*j.tried, *j.loads, *j.evicted_on]:
        assert _admits(s, node_id), (node_id, s.requester, j)


@settings(max_examples=600, deadline=None)
@given(scenarios())
def test_with_no_compliant_node_the_answer_is_a_refusal_and_nothing_loads(s: Scenario) -> None:
    """No online node admits the key: 503 (or 403/404), nothing tried, nothing loaded."""
    if any(n.online and _admits(s, n.node_id) for n in s.state.nodes.values()):
        return
    j = journey(s)
    assert j.outcome in {"403", "404", "503"}
    assert j.tried == []
    assert j.loads == []


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_a_compliant_ready_node_that_works_serves_the_request(s: Scenario) -> None:
    """Completeness: an admitted online node with the model ready that works is used."""
    good = [n for n in s.state.nodes.values() if n.online and _admits(s, n.node_id)
            and (p := n.placements.get(s.model)) is not None and p.phase == "ready"
            and n.node_id not in s.fail_before_first_byte]
    c = s.state.catalog.get(s.model)
    if not good or c is None or not c.offered or not model_allowed(s.requester, s.model):
        return
    j = journey(s)
    assert j.outcome == ("502" if s.dies_mid_stream else "ok")
    assert j.tried[-1] in {n.node_id for n in good}
    assert j.loads == []
