"""The report: one msgspec value per replay, encoded to the same bytes for the same inputs.

Floats are rounded to 6 decimals when the report is built, the struct's
field order is fixed and maps are encoded with sorted keys, and nothing in
it comes from a wall clock (replay time is printed by the CLI, never
stored). So ``cmp`` on two reports is a valid determinism check, and a diff
between two reports shows exactly what a change did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import msgspec

from porten.simulator._fleet import FleetSpec, ResolvedModel, SimNode
from porten.simulator._metrics import Metrics, percentile
from porten.simulator._options import SimOptions
from porten.simulator._trace import Trace, fingerprint

SCHEMA: Final = "porten.sim.report/1"
_ENCODER: Final = msgspec.json.Encoder(order="deterministic")


def _r(x: float) -> float:
    return round(x, 6) + 0.0  # + 0.0 turns -0.0 into 0.0


class Waits(msgspec.Struct, frozen=True, kw_only=True):
    """Seconds from arrival to a slot (queue plus load wait), over the requests served."""

    count: int
    mean_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    max_s: float


class Timeline(msgspec.Struct, frozen=True, kw_only=True):
    """Per bucket of ``bucket_s`` from the first request: arrivals, cold starts, VRAM claimed."""

    bucket_s: float
    requests: list[int]
    cold_starts: list[int]
    vram_utilisation: list[float]


class ModelStats(msgspec.Struct, frozen=True, kw_only=True):
    """One model's share of a policy's run."""

    requests: int
    cold_starts: int
    unserved: int
    wait_p50_s: float
    wait_p99_s: float


class PolicyReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one policy did with the trace (see simulations/README.md for each field)."""

    policy: str
    params: dict[str, float | int | str]
    requests: int
    served: int
    unserved: int
    cold_starts: int
    cold_start_rate: float
    cold_starts_first_load: int
    cold_start_rate_excluding_first_loads: float
    cold_starts_sharing_a_load: int
    parked: int
    wait: Waits
    cold_wait: Waits
    loads: int
    downloads: int
    bytes_downloaded: int
    evictions: int
    idle_unloads: int
    other_unloads: int
    disk_cleanups: int
    vram_utilisation: float
    vram_ready_utilisation: float
    slot_utilisation: float
    peak_vram_mb: dict[str, int]
    vram_violations: int
    decisions_rejected: int
    events: int
    makespan_s: float
    per_model: dict[str, ModelStats]
    diagnostics: dict[str, int | str]
    timeline: Timeline


class Ratios(msgspec.Struct, frozen=True, kw_only=True):
    """Porten's figure divided by the LRU baseline's (``null`` when the baseline's is 0)."""

    cold_start_rate: float | None
    cold_start_rate_excluding_first_loads: float | None
    wait_p50: float | None
    wait_p99: float | None
    loads: float | None
    evictions: float | None
    bytes_downloaded: float | None
    vram_utilisation: float | None


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A trace model: its requests and the footprint the replay gave it (and from where)."""

    id: str
    requests: int
    vram_mb: int
    disk_mb: int
    like: str
    source: str


class TraceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Which requests were replayed (``fingerprint`` hashes every row)."""

    name: str
    fingerprint: str
    requests: int
    span_s: float
    start_s: float
    duration_s: float | None
    speedup: float


class FleetInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The fleet both policies ran on."""

    name: str
    description: str
    nodes: list[SimNode]
    vram_budget_mb: int
    slots: int
    models_vram_mb: int
    all_models_fit_at_once: bool


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """A replay's result: inputs, one entry per policy, and Porten / LRU ratios."""

    schema: str
    trace: TraceInfo
    fleet: FleetInfo
    models: list[ModelInfo]
    options: SimOptions
    policies: list[PolicyReport]
    porten_vs_lru: Ratios | None


def encode(report: Report) -> bytes:
    """The report as canonical JSON (a trailing newline included)."""
    return _ENCODER.encode(report) + b"\n"


def _waits(values: Sequence[float]) -> Waits:
    s = sorted(values)
    mean = sum(s) / len(s) if s else 0.0
    return Waits(
        count=len(s),
        mean_s=_r(mean),
        p50_s=_r(percentile(s, 0.5)),
        p90_s=_r(percentile(s, 0.9)),
        p99_s=_r(percentile(s, 0.99)),
        max_s=_r(s[-1] if s else 0.0),
    )


def _per_model(m: Metrics) -> dict[str, ModelStats]:
    out = {}
    for model, (requests, cold, unserved) in sorted(m.by_model.items()):
        waits = sorted(m.model_waits[model])
        out[model] = ModelStats(
            requests=requests,
            cold_starts=cold,
            unserved=unserved,
            wait_p50_s=_r(percentile(waits, 0.5)),
            wait_p99_s=_r(percentile(waits, 0.99)),
        )
    return out


def policy_report(
    name: str,
    params: dict[str, float | int | str],
    m: Metrics,
    *,
    diagnostics: dict[str, int | str],
    slots: int,
    events: int,
) -> PolicyReport:
    """Freeze one run's metrics into its report entry."""
    claimed, ready = m.utilisation()
    span = m.horizon - m.start
    return PolicyReport(
        policy=name,
        params=params,
        requests=m.requests,
        served=m.served,
        unserved=m.unserved,
        cold_starts=m.cold,
        cold_start_rate=_r(m.cold / m.requests if m.requests else 0.0),
        cold_starts_first_load=m.cold_first,
        cold_start_rate_excluding_first_loads=_r(
            (m.cold - m.cold_first) / m.requests if m.requests else 0.0
        ),
        cold_starts_sharing_a_load=m.cold_shared,
        parked=m.parked,
        wait=_waits(m.waits),
        cold_wait=_waits(m.cold_waits),
        loads=m.loads,
        downloads=m.downloads,
        bytes_downloaded=m.bytes_downloaded,
        evictions=m.evictions,
        idle_unloads=m.idle_unloads,
        other_unloads=m.other_unloads,
        disk_cleanups=m.disk_cleanups,
        vram_utilisation=_r(claimed),
        vram_ready_utilisation=_r(ready),
        slot_utilisation=_r(m.busy_slot_s / (slots * span) if span > 0 else 0.0),
        peak_vram_mb=dict(sorted(m.peak_mb.items())),
        vram_violations=m.vram_violations,
        decisions_rejected=m.rejected,
        events=events,
        makespan_s=_r(m.last_done - m.start),
        per_model=_per_model(m),
        diagnostics=diagnostics,
        timeline=Timeline(
            bucket_s=m.bucket_s,
            requests=m.bucket_requests,
            cold_starts=m.bucket_cold,
            vram_utilisation=[_r(x) for x in m.timeline_vram()],
        ),
    )


def _ratio(a: float, b: float) -> float | None:
    return _r(a / b) if b else None


def ratios(porten: PolicyReport, lru: PolicyReport) -> Ratios:
    """Porten / LRU for the headline figures."""
    return Ratios(
        cold_start_rate=_ratio(porten.cold_start_rate, lru.cold_start_rate),
        cold_start_rate_excluding_first_loads=_ratio(
            porten.cold_start_rate_excluding_first_loads, lru.cold_start_rate_excluding_first_loads
        ),
        wait_p50=_ratio(porten.wait.p50_s, lru.wait.p50_s),
        wait_p99=_ratio(porten.wait.p99_s, lru.wait.p99_s),
        loads=_ratio(porten.loads, lru.loads),
        evictions=_ratio(porten.evictions, lru.evictions),
        bytes_downloaded=_ratio(porten.bytes_downloaded, lru.bytes_downloaded),
        vram_utilisation=_ratio(porten.vram_utilisation, lru.vram_utilisation),
    )


def fits_at_once(sizes: Sequence[int], capacities: Sequence[int], budget: int = 200_000) -> bool:
    """Whether one replica of every model fits the fleet at the same time (exact bin packing).

    Depth-first over models, largest first, skipping nodes whose remaining
    room equals one already tried; past ``budget`` steps it gives up and says
    no (a fleet that large and that tight is "does not fit" for any purpose here).
    """
    items = sorted(sizes, reverse=True)
    room = sorted(capacities, reverse=True)
    steps = 0

    def place(k: int) -> bool:
        nonlocal steps
        if k == len(items):
            return True
        tried: set[int] = set()
        for j, r in enumerate(room):
            steps += 1
            if steps > budget:
                return False
            if r < items[k] or r in tried:
                continue
            tried.add(r)
            room[j] -= items[k]
            if place(k + 1):
                return True
            room[j] += items[k]
        return False

    return place(0)


def fleet_info(
    spec: FleetSpec, nodes: tuple[SimNode, ...], models: Sequence[ResolvedModel]
) -> FleetInfo:
    """The fleet as the report states it."""
    sizes = [m.entry.vram_mb for m in models]
    return FleetInfo(
        name=spec.name,
        description=spec.description,
        nodes=list(nodes),
        vram_budget_mb=sum(n.vram_budget_mb for n in nodes),
        slots=sum(n.slots for n in nodes),
        models_vram_mb=sum(sizes),
        all_models_fit_at_once=fits_at_once(sizes, [n.vram_budget_mb for n in nodes]),
    )


def trace_info(
    trace: Trace, *, start_s: float, duration_s: float | None, speedup: float
) -> TraceInfo:
    """The trace as the report states it."""
    return TraceInfo(
        name=trace.name,
        fingerprint=fingerprint(trace),
        requests=len(trace),
        span_s=_r(trace.span_s),
        start_s=float(start_s),
        duration_s=None if duration_s is None else float(duration_s),
        speedup=float(speedup),
    )


_Row = tuple[str, Callable[[PolicyReport], str], Callable[[Ratios], float | None] | None]
_ROWS: Final[tuple[_Row, ...]] = (
    ("requests", lambda p: f"{p.requests}", None),
    ("served", lambda p: f"{p.served}", None),
    ("unserved", lambda p: f"{p.unserved}", None),
    ("cold starts", lambda p: f"{p.cold_starts}", None),
    ("cold-start rate", lambda p: f"{p.cold_start_rate:.4%}", lambda r: r.cold_start_rate),
    (
        "  excl. first loads",
        lambda p: f"{p.cold_start_rate_excluding_first_loads:.4%}",
        lambda r: r.cold_start_rate_excluding_first_loads,
    ),
    ("wait p50 (s)", lambda p: f"{p.wait.p50_s:.3f}", lambda r: r.wait_p50),
    ("wait p99 (s)", lambda p: f"{p.wait.p99_s:.3f}", lambda r: r.wait_p99),
    ("loads", lambda p: f"{p.loads}", lambda r: r.loads),
    ("evictions", lambda p: f"{p.evictions}", lambda r: r.evictions),
    ("GiB downloaded", lambda p: f"{p.bytes_downloaded / 2**30:.1f}", lambda r: r.bytes_downloaded),
    ("VRAM utilisation", lambda p: f"{p.vram_utilisation:.1%}", lambda r: r.vram_utilisation),
)


def summary_table(report: Report) -> str:
    """A human summary: one column per policy, plus Porten / LRU where both ran."""
    ratios_ = report.porten_vs_lru
    head = ["", *(p.policy for p in report.policies), *(["porten/lru"] if ratios_ else [])]
    table = [head]
    for label, cell, ratio in _ROWS:
        cells = [label, *(cell(p) for p in report.policies)]
        if ratios_ is not None:
            value = ratio(ratios_) if ratio is not None else None
            cells.append("" if value is None else f"{value:.3f}")
        table.append(cells)
    width = [max(len(r[i]) for r in table) for i in range(len(head))]
    fleet, trace = report.fleet, report.trace
    lines = [
        f"trace {trace.name}: {trace.requests} requests over {trace.span_s:.0f} s; "
        f"fleet {fleet.name or '-'}: {len(fleet.nodes)} nodes, {fleet.vram_budget_mb} MiB VRAM "
        f"for models of {fleet.models_vram_mb} MiB "
        f"({'all fit' if fleet.all_models_fit_at_once else 'not all fit'} at once)",
    ]
    lines.extend(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, width, strict=True))
        )
        for r in table
    )
    return "\n".join(lines) + "\n"
