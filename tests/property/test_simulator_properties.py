"""The simulator's promises for any small trace, fleet and timing: both policies, every run.

These are the product's promises seen through a replay: no node is ever
over its VRAM budget, a request is served only by a node that has its model
ready, every request ends served or counted unserved, the state is the
fold of the log, and the report is a pure function of the inputs.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from porten.domain import events as ev
from porten.domain.fold import evolve, fold
from porten.domain.state import EMPTY, vram_used_mb
from porten.simulator import (
    FleetSpec,
    ModelSize,
    NodeDefaults,
    NodeSpec,
    Replay,
    SimOptions,
    encode,
    from_rows,
    replay,
)

#: Each example replays twice under both policies (the planner runs CP-SAT): keep them few.
RUNS = settings(max_examples=50, deadline=None)
MODELS = ("a", "b", "c", "d")


@st.composite
def scenarios(draw: Any) -> tuple[list[tuple[float, str, int, int]], FleetSpec, SimOptions]:
    """A trace of up to 40 requests over 5 minutes, 1-3 nodes, 1-4 models, random speeds."""
    models = draw(st.lists(st.sampled_from(MODELS), min_size=1, max_size=4, unique=True))
    sizes = {m: draw(st.integers(2, 30).map(lambda g: g * 1_000)) for m in models}
    nodes = tuple(
        NodeSpec(
            id=f"n{i}",
            vram_budget_mb=draw(st.integers(8, 48).map(lambda g: g * 1_000)),
            slots=draw(st.integers(1, 4)),
            models_on_disk=tuple(draw(st.lists(st.sampled_from(models), unique=True))),
        )
        for i in range(draw(st.integers(1, 3)))
    )
    defaults = NodeDefaults(
        ttft_ms=draw(st.sampled_from([0.0, 50.0, 500.0])),
        tokens_per_s=draw(st.sampled_from([1.0, 10.0, 100.0])),
        load_s_per_gb=draw(st.sampled_from([0.0, 0.5, 3.0])),
        download_mb_per_s=draw(st.sampled_from([100.0, 1_000.0])),
    )
    fleet = FleetSpec(
        defaults=defaults,
        nodes=nodes,
        models={m: ModelSize(vram_mb=v, disk_mb=v) for m, v in sizes.items()},
    )
    row = st.tuples(
        st.integers(0, 300_000).map(lambda ms: ms / 1000.0),
        st.sampled_from(models),
        st.integers(1, 100),
        st.integers(1, 200),
    )
    rows = draw(st.lists(row, min_size=1, max_size=40))
    options = SimOptions(
        window_s=draw(st.sampled_from([30.0, 60.0])),
        keep_alive_s=draw(st.sampled_from([10.0, 60.0, 300.0])),
        max_wait_s=draw(st.sampled_from([30.0, 600.0])),
    )
    return rows, fleet, options


def _run(rows: list[tuple[float, str, int, int]], fleet: FleetSpec, options: SimOptions) -> Replay:
    return replay(from_rows(rows), fleet, options=options, record=True)


@RUNS
@given(scenarios())
def test_every_replay_keeps_the_products_promises(
    scenario: tuple[list[tuple[float, str, int, int]], FleetSpec, SimOptions],
) -> None:
    """Budgets hold, service is only from ready replicas, every request is accounted for."""
    rows, fleet, options = scenario
    result = _run(rows, fleet, options)
    for report in result.report.policies:
        sim = result.runs[report.policy]
        events = sim.events or []
        assert fold(events) == sim.state
        state, served = EMPTY, []
        for e in events:
            if isinstance(e, ev.RequestServed):
                p = state.nodes[e.node_id].placements.get(e.model_id)
                assert p is not None, f"{report.policy}: served from a node without the model"
                assert p.phase == "ready", f"{report.policy}: served from a {p.phase} placement"
                served.append(e.request_id)
            state = evolve(state, e)
            if isinstance(e, ev.LoadRequested):
                node = state.nodes[e.node_id]
                assert vram_used_mb(state, node) <= node.vram_budget_mb
        assert len(served) == len(set(served)) == report.served
        assert report.served + report.unserved == report.requests == len(rows)
        assert report.vram_violations == 0
        assert report.decisions_rejected == 0
        assert report.cold_starts_first_load <= report.cold_starts <= report.requests
        assert report.wait.count == report.served
        assert min(sim.metrics.waits, default=0.0) >= 0.0


@RUNS
@given(scenarios())
def test_a_replay_is_a_pure_function_of_its_inputs(
    scenario: tuple[list[tuple[float, str, int, int]], FleetSpec, SimOptions],
) -> None:
    """Replaying the same scenario again gives the same report bytes and the same events."""
    rows, fleet, options = scenario
    first, second = _run(rows, fleet, options), _run(rows, fleet, options)
    assert encode(first.report) == encode(second.report)
    for name, sim in first.runs.items():
        assert sim.events == second.runs[name].events


@RUNS
@given(scenarios())
def test_a_trace_given_in_any_order_replays_the_same(
    scenario: tuple[list[tuple[float, str, int, int]], FleetSpec, SimOptions],
) -> None:
    """Rows are sorted by time on the way in, so reversed input (distinct times) is the same run."""
    rows, fleet, options = scenario
    distinct = list({r[0]: r for r in rows}.values())
    assert encode(_run(distinct, fleet, options).report) == encode(
        _run(distinct[::-1], fleet, options).report
    )
