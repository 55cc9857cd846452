"""One replay: a trace, a fleet, and each policy run on its own copy of the same start.

Each policy gets a fresh :class:`~._kernel.Simulation` over the same trace
columns, the same resolved nodes and the same model sizes; only the
policy object differs. The report is built from the runs' metrics alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from porten.domain.state import FleetState
from porten.simulator._fleet import (
    FleetSpec,
    NodeDefaults,
    NodeSpec,
    resolve_models,
    resolve_nodes,
)
from porten.simulator._kernel import Simulation
from porten.simulator._lru import LruPolicy
from porten.simulator._options import SimOptions
from porten.simulator._policy import Policy
from porten.simulator._report import (
    SCHEMA,
    ModelInfo,
    Report,
    fleet_info,
    policy_report,
    ratios,
    trace_info,
)
from porten.simulator._trace import EventLog, Trace, cut

PolicyName = Literal["porten", "lru"]


class Replay:
    """The report, and each policy's finished simulation (waits and events, for plots/tests)."""

    __slots__ = ("report", "runs")

    def __init__(self, report: Report, runs: dict[str, Simulation]) -> None:
        self.report = report
        self.runs = runs


def make_policy(name: PolicyName, options: SimOptions) -> Policy:
    """A fresh policy object (Porten's imports the planner only when asked for)."""
    if name == "lru":
        return LruPolicy(keep_alive_s=options.keep_alive_s)
    from porten.simulator._porten import PortenPolicy

    return PortenPolicy(options.planner)


def fleet_from_log(state: FleetState, defaults: NodeDefaults | None = None) -> FleetSpec:
    """The nodes an exported log enrolled, with their reported budgets, as a fleet spec.

    The log knows budgets, region and trust class but not speeds or slots:
    those come from ``defaults``. Nodes that never reported a VRAM budget are
    left out (they could hold nothing).
    """
    nodes = tuple(
        NodeSpec(
            id=n.node_id,
            vram_budget_mb=n.vram_budget_mb,
            vram_total_mb=n.vram_total_mb,
            disk_budget_mb=n.disk_budget_mb or None,
            region=n.region,
            trust_class=n.trust_class,
        )
        for _, n in sorted(state.nodes.items())
        if n.vram_budget_mb > 0
    )
    return FleetSpec(name="from event log", defaults=defaults or NodeDefaults(), nodes=nodes)


def replay(
    trace: Trace,
    spec: FleetSpec,
    *,
    policies: Sequence[PolicyName] = ("porten", "lru"),
    options: SimOptions | None = None,
    event_log: EventLog | None = None,
    start_s: float = 0.0,
    duration_s: float | None = None,
    speedup: float = 1.0,
    record: bool = False,
) -> Replay:
    """Replay ``trace`` (cut to the window, time-scaled) on ``spec`` under each policy."""
    options = options or SimOptions()
    trace = cut(trace, start_s, duration_s, speedup)
    counts = [0] * len(trace.models)
    for m in trace.model:
        counts[m] += 1
    used = [mid for mid, c in zip(trace.models, counts, strict=True) if c]
    models = resolve_models(used, spec, event_log.catalog if event_log else None)
    nodes = resolve_nodes(spec)
    by_id = dict(zip(trace.models, counts, strict=True))
    runs: dict[str, Simulation] = {}
    reports = []
    for name in dict.fromkeys(policies):
        policy = make_policy(name, options)
        sim = Simulation(trace, nodes, models, policy, options, record=record)
        sim.run()
        runs[name] = sim
        reports.append(
            policy_report(
                name,
                policy.params(),
                sim.metrics,
                diagnostics=policy.diagnostics(),
                slots=sum(n.slots for n in nodes),
                events=sim.emitted,
            )
        )
    by_policy = {r.policy: r for r in reports}
    report = Report(
        schema=SCHEMA,
        trace=trace_info(trace, start_s=start_s, duration_s=duration_s, speedup=speedup),
        fleet=fleet_info(spec, nodes, models),
        models=[
            ModelInfo(
                id=m.entry.id,
                requests=by_id[m.entry.id],
                vram_mb=m.entry.vram_mb,
                disk_mb=m.entry.disk_mb,
                like=m.like,
                source=m.source,
            )
            for m in models
        ],
        options=options,
        policies=reports,
        porten_vs_lru=ratios(by_policy["porten"], by_policy["lru"])
        if "porten" in by_policy and "lru" in by_policy
        else None,
    )
    return Replay(report, runs)
