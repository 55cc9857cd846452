"""The trace simulator: tiny hand-built traces with known answers, and its promises on a real one.

Tiny fleets use round numbers so every time is easy to check by hand: a
10,000 MiB model loads in 10,000/1024 s at 1 s/GiB, and with ``ttft_ms=0``
and 1 token/s a request with ``c`` completion tokens holds a slot ``c - 1`` s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from porten.domain import events as ev
from porten.domain.fold import evolve, fold
from porten.domain.state import EMPTY, vram_used_mb
from porten.simulator import (
    DEFAULT_FLEET,
    FleetSpec,
    ModelSize,
    NodeDefaults,
    NodeSpec,
    Replay,
    SimOptions,
    cut,
    encode,
    fleet_from_log,
    from_rows,
    load_fleet,
    merge,
    read_event_log,
    read_replay_csv,
    read_trace,
    replay,
    resolve_nodes,
    static_bound,
    summary_table,
)
from porten.simulator._fleet import resolve_models
from porten.simulator._report import fits_at_once

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "simulations" / "traces"
FLEETS = ROOT / "simulations" / "fleets"
SERVEGEN = TRACES / "servegen_synth_day1_20h_1h_scale0.005.csv"
LOAD_S = 10_000 / 1024  # a 10,000 MiB model at 1 s/GiB

Row = tuple[float, str, int, int]


def sim_replay(
    *args: str | Path, check: bool = True, **env: str
) -> subprocess.CompletedProcess[bytes]:
    """Run ``porten sim replay ARGS`` in a fresh interpreter (``env`` added to the environment)."""
    argv = [sys.executable, "-m", "porten", "sim", "replay", *map(str, args)]
    return subprocess.run(
        argv, capture_output=True, check=check, timeout=120, env={**os.environ, **env}
    )


def tiny_fleet(*budgets: int, on_disk: tuple[str, ...] = ("a", "b", "c")) -> FleetSpec:
    """Nodes n1, n2… with the given VRAM budgets; models a, b, c of 10,000 MiB already on disk."""
    return FleetSpec(
        name="tiny",
        defaults=NodeDefaults(
            slots=4, ttft_ms=0.0, tokens_per_s=1.0, load_s_per_gb=1.0, download_mb_per_s=1000.0
        ),
        nodes=tuple(
            NodeSpec(id=f"n{i}", vram_budget_mb=b, models_on_disk=on_disk)
            for i, b in enumerate(budgets, start=1)
        ),
        models={m: ModelSize(vram_mb=10_000, disk_mb=10_000) for m in ("a", "b", "c")},
    )


def run(rows: list[Row], fleet: FleetSpec, policy: str, **options: float) -> Replay:
    """Replay ``rows`` under one policy, recording its events."""
    return replay(
        from_rows(rows),
        fleet,
        policies=(policy,),  # type: ignore[arg-type]
        options=SimOptions(**options),
        record=True,
    )


def unloads(result: Replay, policy: str) -> list[tuple[str, str, str, str]]:
    """(node, model, reason, evicted_for) of every unload, in order."""
    events = result.runs[policy].events or []
    return [
        (e.node_id, e.model_id, e.reason, e.evicted_for)
        for e in events
        if isinstance(e, ev.ModelUnloaded)
    ]


def loads_of(result: Replay, policy: str) -> list[tuple[str, str]]:
    """(node, model) of every load requested, in order."""
    events = result.runs[policy].events or []
    return [(e.node_id, e.model_id) for e in events if isinstance(e, ev.LoadRequested)]


# --- the LRU baseline, by hand ----------------------------------------------------------------


def test_lru_evicts_the_least_recently_used_idle_model() -> None:
    """With room for two models, a third evicts whichever was used longest ago."""
    rows: list[Row] = [
        (0, "a", 10, 1),
        (100, "b", 10, 1),
        (200, "a", 10, 1),
        (300, "c", 10, 1),
        (400, "b", 10, 1),
    ]
    result = run(rows, tiny_fleet(24_000), "lru", keep_alive_s=10_000)
    assert unloads(result, "lru") == [("n1", "b", "evicted", "c"), ("n1", "a", "evicted", "b")]
    report = result.report.policies[0]
    assert (report.cold_starts, report.loads, report.evictions) == (4, 4, 2)


def test_lru_unloads_after_keep_alive_and_not_before() -> None:
    """A model idle longer than the keep-alive is unloaded, so its next request is cold."""
    rows: list[Row] = [(0, "a", 10, 1), (400, "a", 10, 1)]
    short = run(rows, tiny_fleet(24_000), "lru", keep_alive_s=300).report.policies[0]
    long = run(rows, tiny_fleet(24_000), "lru", keep_alive_s=500).report.policies[0]
    assert (short.loads, short.idle_unloads, short.cold_starts) == (2, 1, 2)
    assert (long.loads, long.idle_unloads, long.cold_starts) == (1, 0, 1)


def test_lru_never_evicts_a_busy_model() -> None:
    """A cold model waits for the only node's busy model to finish, then evicts it."""
    rows: list[Row] = [(0, "a", 10, 101), (20, "b", 10, 1)]
    result = run(rows, tiny_fleet(12_000), "lru")
    report = result.report.policies[0]
    assert unloads(result, "lru") == [("n1", "a", "evicted", "b")]
    a_done = LOAD_S + 100
    assert report.cold_wait.max_s == pytest.approx(a_done + LOAD_S - 20, abs=1e-5)
    assert (report.served, report.unserved, report.parked) == (2, 0, 1)


def test_lru_prefers_a_node_that_needs_no_eviction_then_the_least_loaded() -> None:
    """A second model goes to the idle empty node rather than beside a busy one."""
    rows: list[Row] = [(0, "a", 10, 1000), (50, "b", 10, 1)]
    result = run(rows, tiny_fleet(24_000, 24_000), "lru")
    assert loads_of(result, "lru") == [("n1", "a"), ("n2", "b")]


def test_a_request_that_no_load_can_start_for_is_dropped_after_the_wait_budget() -> None:
    """When every node is busy for longer than ``max_wait_s``, the waiting request is unserved."""
    rows: list[Row] = [(0, "a", 10, 2001), (1, "b", 10, 1)]
    report = run(rows, tiny_fleet(12_000), "lru", max_wait_s=600).report.policies[0]
    assert (report.requests, report.served, report.unserved) == (2, 1, 1)
    assert report.per_model["b"].unserved == 1


# --- shared loads and the fold ------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["porten", "lru"])
def test_concurrent_cold_requests_share_one_load(policy: str) -> None:
    """Five requests for a cold model in its load time cause one load, and all wait for it."""
    rows: list[Row] = [(i / 10, "a", 10, 1) for i in range(5)]
    result = run(rows, tiny_fleet(24_000), policy)
    report = result.report.policies[0]
    assert loads_of(result, policy) == [("n1", "a")]
    assert (report.cold_starts, report.cold_starts_sharing_a_load) == (5, 4)
    assert report.cold_starts_first_load == 5
    assert report.wait.max_s == pytest.approx(LOAD_S, abs=1e-5)


def test_weights_not_on_disk_are_downloaded_once_at_the_nodes_bandwidth() -> None:
    """A first load downloads (disk_mb / bandwidth), a reload after eviction does not."""
    rows: list[Row] = [(0, "a", 10, 1), (100, "b", 10, 1), (200, "a", 10, 1)]
    result = run(rows, tiny_fleet(12_000, on_disk=()), "lru")
    report = result.report.policies[0]
    assert (report.loads, report.downloads) == (3, 2)
    assert report.bytes_downloaded == 2 * 10_000 * 2**20
    assert report.cold_wait.max_s == pytest.approx(10.0 + LOAD_S, abs=1e-5)


@pytest.fixture(scope="module")
def servegen_10min() -> Replay:
    """Ten minutes of the committed ServeGen trace on the tight fleet, both policies, recorded."""
    return replay(
        read_replay_csv(SERVEGEN), load_fleet(FLEETS / "tight.json"), duration_s=600, record=True
    )


@pytest.mark.parametrize("policy", ["porten", "lru"])
def test_the_state_is_exactly_the_fold_of_the_emitted_events(
    servegen_10min: Replay, policy: str
) -> None:
    """What the policy read is the real fold of the log the run wrote, nothing else."""
    sim = servegen_10min.runs[policy]
    assert sim.events is not None
    assert fold(sim.events) == sim.state
    assert sim.state.events_folded == len(sim.events) == sim.emitted


@pytest.mark.parametrize("policy", ["porten", "lru"])
def test_no_node_is_ever_over_its_vram_budget(servegen_10min: Replay, policy: str) -> None:
    """Replaying the log event by event, every node's claimed VRAM stays within its budget."""
    state = EMPTY
    for e in servegen_10min.runs[policy].events or []:
        state = evolve(state, e)
        if isinstance(e, ev.LoadRequested):
            node = state.nodes[e.node_id]
            assert vram_used_mb(state, node) <= node.vram_budget_mb
    report = next(p for p in servegen_10min.report.policies if p.policy == policy)
    assert report.vram_violations == 0
    assert report.decisions_rejected == 0
    budgets = {n.node_id: n.vram_budget_mb for n in servegen_10min.report.fleet.nodes}
    assert all(peak <= budgets[n] for n, peak in report.peak_vram_mb.items())


@pytest.mark.parametrize("policy", ["porten", "lru"])
def test_every_request_is_accounted_for(servegen_10min: Replay, policy: str) -> None:
    """Served plus unserved is every request of the trace, and each served one is logged once."""
    report = next(p for p in servegen_10min.report.policies if p.policy == policy)
    assert report.served + report.unserved == report.requests
    assert report.requests == servegen_10min.report.trace.requests
    served = [
        e.request_id
        for e in servegen_10min.runs[policy].events or []
        if isinstance(e, ev.RequestServed)
    ]
    assert len(served) == len(set(served)) == report.served
    assert sum(m.requests for m in report.per_model.values()) == report.requests


# --- determinism ----------------------------------------------------------------------------------


def test_the_same_inputs_give_a_byte_identical_report() -> None:
    """Two replays in one process encode to the same bytes."""
    trace, fleet = read_replay_csv(SERVEGEN), load_fleet(FLEETS / "tight.json")
    first = encode(replay(trace, fleet, duration_s=300).report)
    second = encode(replay(trace, fleet, duration_s=300).report)
    assert first == second


def test_a_subprocess_with_another_hash_seed_gives_the_same_report() -> None:
    """`porten sim replay --json` under a different PYTHONHASHSEED prints the same bytes."""
    fleet = FLEETS / "tight.json"
    here = encode(replay(read_replay_csv(SERVEGEN), load_fleet(fleet), duration_s=300).report)
    out = sim_replay(
        SERVEGEN, "--fleet", fleet, "--duration-s", "300", "--json", PYTHONHASHSEED="12345"
    )
    assert out.stdout == here


# --- the command ---------------------------------------------------------------------------


def test_cli_replay_prints_a_json_report_for_a_committed_trace(tmp_path: Path) -> None:
    """`porten sim replay TRACE --json` prints both policies and their ratios, and writes --out."""
    out = tmp_path / "report.json"
    proc = sim_replay(
        TRACES / "mooncake_conversation.csv", "--duration-s", "120", "--json", "--out", out
    )
    report = json.loads(proc.stdout)
    assert report["schema"] == "porten.sim.report/1"
    assert [p["policy"] for p in report["policies"]] == ["porten", "lru"]
    assert report["porten_vs_lru"] is not None
    assert out.read_bytes() == proc.stdout
    assert b"replayed" in proc.stderr


def test_cli_replay_prints_a_table_and_refuses_a_bad_fleet(tmp_path: Path) -> None:
    """Without --json the summary table is printed; a fleet file with a typo is one error line."""
    proc = sim_replay(SERVEGEN, "--policy", "lru", "--duration-s", "60")
    assert b"cold-start rate" in proc.stdout
    assert b"lru" in proc.stdout
    bad = tmp_path / "fleet.json"
    bad.write_text('{"nodes": [{"id": "n", "vram_budget_mb": 1, "vram": 2}]}')
    proc = sim_replay(SERVEGEN, "--fleet", bad, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(b"porten: error:")
    assert b"vram" in proc.stderr


def test_a_simulated_log_replays_as_an_event_log_trace(tmp_path: Path) -> None:
    """`--events-dir` writes export-format logs whose request_served events replay again."""
    sim_replay(SERVEGEN, "--policy", "lru", "--duration-s", "60", "--events-dir", tmp_path)
    trace, log = read_event_log(tmp_path / "lru.jsonl")
    original = cut(read_replay_csv(SERVEGEN), 0.0, 60.0)
    assert len(trace) == len(original)
    assert set(trace.models) == set(original.models)
    logged = resolve_nodes(fleet_from_log(log.fleet))
    assert [(n.node_id, n.vram_budget_mb) for n in logged] == [
        (n.node_id, n.vram_budget_mb) for n in resolve_nodes(DEFAULT_FLEET)
    ]


# --- inputs ------------------------------------------------------------------------------------


def _export_line(position: int, event: ev.AnyEvent) -> bytes:
    body = msgspec.json.encode(event)
    return b'{"position":%d,"stream":"s","version":0,"recorded_at":0.0,"event":%s}\n' % (
        position,
        body,
    )


def test_an_event_export_gives_requests_at_arrival_and_its_fleet(tmp_path: Path) -> None:
    """Requests arrive at ``at - duration``; nodes and catalog sizes come from the log."""
    from porten.domain.values import CatalogEntry

    events: list[ev.AnyEvent] = [
        ev.ModelOffered(
            at=1.0, actor="op", model=CatalogEntry(id="x", vram_mb=5_000, disk_mb=4_000)
        ),
        ev.NodeEnrolled(at=1.0, actor="op", node_id="n1", owner_id="o", region="eu"),
        ev.NodeCapabilitiesReported(
            at=2.0,
            actor="node:n1",
            node_id="n1",
            engine="sim",
            provisionable=True,
            vram_total_mb=8_000,
            vram_budget_mb=8_000,
            disk_budget_mb=50_000,
        ),
        ev.RequestServed(
            at=100.0,
            actor="hub",
            request_id="r1",
            model_id="x",
            node_id="n1",
            key_id="k",
            prompt_tokens=5,
            completion_tokens=7,
            duration_ms=2_000,
        ),
        ev.RequestServed(
            at=103.0,
            actor="hub",
            request_id="r2",
            model_id="x",
            node_id="n1",
            key_id="k",
            prompt_tokens=1,
            completion_tokens=2,
            duration_ms=500,
        ),
    ]
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"".join(_export_line(i, e) for i, e in enumerate(events, start=1)))
    trace, log = read_trace(path)
    assert log is not None
    assert (list(trace.t), trace.epoch, trace.models) == ([0.0, 4.5], 98.0, ("x",))
    [node] = resolve_nodes(fleet_from_log(log.fleet))
    assert (node.node_id, node.vram_budget_mb, node.region) == ("n1", 8_000, "eu")
    result = replay(trace, fleet_from_log(log.fleet), policies=("lru",), event_log=log)
    [model] = result.report.models
    assert (model.vram_mb, model.source) == (5_000, "event-log")


def test_a_csv_without_the_replay_header_is_refused(tmp_path: Path) -> None:
    """A CSV that is not in the replay format is an error naming the expected header."""
    bad = tmp_path / "t.csv"
    bad.write_text("time,model\n0,a\n")
    with pytest.raises(ValueError, match="ts_ms,model,prompt_tokens,completion_tokens"):
        read_replay_csv(bad)


def test_cut_keeps_a_window_shifts_it_to_zero_and_compresses_time() -> None:
    """``cut`` keeps [start, start + duration), starts it at 0 and divides times by speedup."""
    trace = from_rows([(0, "a", 1, 1), (10, "b", 1, 1), (20, "a", 1, 1), (30, "a", 1, 1)])
    part = cut(trace, start_s=10, duration_s=20, speedup=2.0)
    assert list(part.t) == [0.0, 5.0]
    assert [part.models[m] for m in part.model] == ["b", "a"]


def test_merge_aligns_each_trace_at_its_first_request() -> None:
    """Merged traces interleave by time, each starting at zero."""
    one = from_rows([(5, "a", 1, 1), (6, "a", 1, 1)])
    two = from_rows([(100, "b", 1, 1), (100.5, "b", 1, 1)])
    both = merge([one, two])
    assert list(both.t) == [0.0, 0.0, 0.5, 1.0]
    assert [both.models[m] for m in both.model] == ["a", "b", "b", "a"]


def test_fleet_entries_with_a_count_expand_into_numbered_nodes() -> None:
    """``count: 2`` gives ``<id>-1`` and ``<id>-2`` with the defaults filled in."""
    nodes = resolve_nodes(load_fleet(FLEETS / "tight.json"))
    assert [n.node_id for n in nodes] == ["gpu24-1", "gpu24-2", "gpu48-1", "gpu48-2"]
    assert all(n.slots == 32 for n in nodes)


def test_the_built_in_fleet_is_the_documented_homelab_file() -> None:
    """`porten sim replay` without --fleet runs exactly simulations/fleets/homelab.json."""
    assert load_fleet(FLEETS / "homelab.json") == DEFAULT_FLEET


def test_every_example_fleet_file_decodes() -> None:
    """Each shipped fleet file is valid and resolves to at least one node."""
    for path in sorted(FLEETS.glob("*.json")):
        assert resolve_nodes(load_fleet(path)), path.name


def test_fits_at_once_is_exact_where_first_fit_decreasing_is_not() -> None:
    """6, 5, 5 into bins of 10 and 6 fits (5+5, 6) although first-fit-decreasing fails."""
    assert fits_at_once([6, 5, 5], [10, 6])
    assert not fits_at_once([6, 6, 5], [10, 6])


def test_unknown_trace_models_get_the_fallback_size_and_say_so() -> None:
    """A model no table knows is sized as a 14B-class model, flagged ``fallback``."""
    result = replay(from_rows([(0, "mystery", 1, 1)]), tiny_fleet(24_000), policies=("lru",))
    [model] = result.report.models
    assert (model.vram_mb, model.source) == (10_500, "fallback")


def test_plots_are_skipped_silently_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without matplotlib, write_plots writes nothing and returns no paths."""
    from porten.simulator import _plots

    monkeypatch.setattr(_plots, "available", lambda: False)
    result = run([(0, "a", 1, 1)], tiny_fleet(24_000), "lru")
    assert _plots.write_plots(result, tmp_path / "plots") == []
    assert not (tmp_path / "plots").exists()


def test_the_summary_table_names_both_policies_and_the_ratio() -> None:
    """The human summary has a column per policy and one for Porten / LRU."""
    result = replay(from_rows([(0, "a", 1, 1), (1, "b", 1, 1)]), tiny_fleet(24_000))
    table = summary_table(result.report)
    assert "porten" in table
    assert "lru" in table
    assert "porten/lru" in table


# --- Porten's drains and the static bound -----------------------------------------------------


def drain_trace() -> list[Row]:
    """``a``: one request holding its slot 199 s from t=0; ``b``: 300 requests at 61-91 s."""
    return [(0, "a", 10, 200), *((61 + i / 10, "b", 10, 1) for i in range(300))]


def test_porten_drains_a_busy_copy_for_a_model_with_far_more_demand() -> None:
    """One node, room for one model: once b's unmet demand is recorded (the 120 s window), a
    is drained — its request runs to the end, untouched — then b loads in its room."""
    result = run(drain_trace(), tiny_fleet(12_000), "porten")
    events = result.runs["porten"].events or []
    epoch = result.runs["porten"].epoch
    drains = [(e.at - epoch, e.model_id, e.evicted_for) for e in events
              if isinstance(e, ev.ModelDraining)]
    assert drains == [(120.0, "a", "b")]
    [served_a] = [e for e in events if isinstance(e, ev.RequestServed) and e.model_id == "a"]
    assert served_a.at - epoch == pytest.approx(LOAD_S + 199)  # never cut short
    [gone] = [e for e in events if isinstance(e, ev.ModelUnloaded)]
    assert (gone.model_id, gone.reason, gone.evicted_for) == ("a", "evicted", "b")
    assert gone.at == served_a.at  # unloaded the moment its last request ended
    assert loads_of(result, "porten") == [("n1", "a"), ("n1", "b")]
    report = result.report.policies[0]
    assert (report.served, report.unserved, report.decisions_rejected) == (301, 0, 0)
    assert report.diagnostics["urgent_drains"] == 1


def test_lru_never_drains_it_waits_for_the_copy_to_go_idle() -> None:
    """The baseline has no drains: b waits until a's request ends, then evicts it."""
    result = run(drain_trace(), tiny_fleet(12_000), "lru")
    events = result.runs["lru"].events or []
    assert not [e for e in events if isinstance(e, ev.ModelDraining)]
    assert unloads(result, "lru") == [("n1", "a", "evicted", "b")]
    assert result.report.policies[0].unserved == 0


def test_the_static_bound_leaves_out_the_least_requested_model_and_counts_first_loads() -> None:
    """Two 10,000 MiB models, room for one: the bound keeps the busier one, cold only for
    its load time (weights on disk: 10,000/1024 s), and leaves the other out entirely."""
    rows: list[Row] = [(float(t), "a", 10, 1) for t in range(20)] + [(5.0, "b", 10, 1)]
    bound = static_bound(
        from_rows(rows), resolve_models(["a", "b"], tiny_fleet()), resolve_nodes(tiny_fleet(12_000))
    )
    assert bound is not None
    assert bound.left_out == ("b",)
    first_loads = sum(1 for t in range(20) if t < LOAD_S)  # a's requests before t=9.77 s
    assert (bound.first_load_cold_starts, bound.cold_starts) == (first_loads, first_loads + 1)
    assert bound.cold_start_rate == round((first_loads + 1) / 21, 6)
    both = static_bound(
        from_rows(rows), resolve_models(["a", "b"], tiny_fleet()), resolve_nodes(tiny_fleet(24_000))
    )
    assert both is not None
    assert both.left_out == ()
