"""A yardstick for cold-start rates: the best fixed placement, chosen with hindsight.

A cold start is a request that finds no ready copy of its model on arrival.
Two kinds are forced on any policy:

* **First loads.** Nothing is loaded when a replay starts, so a model's
  requests are cold until a copy could be ready at the earliest: its first
  request, plus downloading (unless some fitting node has the weights) and
  loading on the fastest fitting node, with that node's link to itself.
* **Capacity.** Where the trace's models do not all fit the fleet at once,
  some are out at every instant, and their requests are cold.

:func:`static_bound` is the fewest cold starts any *fixed* placement could
have: over every set of models that packs into the fleet (an exact
bin-packing check), those outside it are cold for the whole trace and those
inside it only until their first load could finish. It is a lower bound for
policies that never move a model; a policy that changes placement over time
can beat it only where the demand mix itself changes (a model busy by day
and idle by night), and pays a load for each change. On the shipped one-hour
traces the mix is nearly steady, which makes it a fair reference there: if
it is above half of LRU's rate, no fixed placement reaches the goal of
halving LRU's cold starts.

Pure arithmetic over the trace's columns and the resolved fleet; exponential
in the number of models, so it is skipped (``None``) beyond :data:`MAX_MODELS`.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import Final, NamedTuple

from porten.agent.engines.sim import download_time_s, load_time_s
from porten.simulator._fleet import (
    FleetSpec,
    ResolvedModel,
    SimNode,
    resolve_models,
    resolve_nodes,
)
from porten.simulator._report import fits_at_once
from porten.simulator._trace import Trace

#: Above this many models, 2^models subsets is too many to check.
MAX_MODELS: Final = 12


class Bound(NamedTuple):
    """The best fixed placement's cold starts, and which models it leaves out."""

    cold_starts: int
    cold_start_rate: float
    #: Requests before each model could first be ready, summed (every policy pays these).
    first_load_cold_starts: int
    left_out: tuple[str, ...]


def first_ready_at(model: ResolvedModel, nodes: Sequence[SimNode]) -> float | None:
    """Seconds from a model's first request until a copy could be ready (None: fits nowhere)."""
    best = None
    for n in nodes:
        if model.entry.vram_mb > n.vram_budget_mb or model.entry.disk_mb > n.disk_budget_mb:
            continue
        took = load_time_s(n.profile, model.entry.vram_mb)
        if model.entry.id not in n.models_on_disk:
            took += download_time_s(n.profile, model.entry.disk_mb)
        best = took if best is None else min(best, took)
    return best


def static_bound(
    trace: Trace, models: Sequence[ResolvedModel], nodes: Sequence[SimNode]
) -> Bound | None:
    """The fewest cold starts of any fixed placement (see the module docstring)."""
    if not len(trace) or len(models) > MAX_MODELS:
        return None
    arrivals: dict[str, list[float]] = {m.entry.id: [] for m in models}
    for i in range(len(trace)):
        arrivals[trace.models[trace.model[i]]].append(trace.t[i])
    forced: dict[str, int] = {}
    for m in models:
        times = arrivals[m.entry.id]
        wait = first_ready_at(m, nodes)
        if not times:
            forced[m.entry.id] = 0
        elif wait is None:
            forced[m.entry.id] = len(times)
        else:
            forced[m.entry.id] = bisect.bisect_left(times, times[0] + wait)
    capacities = [n.vram_budget_mb for n in nodes]
    best: tuple[int, tuple[str, ...]] | None = None
    ids = [m.entry.id for m in models]
    size = {m.entry.id: m.entry.vram_mb for m in models}
    for k in range(len(ids), -1, -1):
        for kept in itertools.combinations(ids, k):
            cold = sum(forced[m] for m in kept)
            cold += sum(len(arrivals[m]) for m in ids if m not in kept)
            if best is not None and cold >= best[0]:
                continue
            if fits_at_once([size[m] for m in kept], capacities):
                best = (cold, tuple(m for m in ids if m not in kept))
    assert best is not None  # keeping nothing always fits
    cold, left_out = best
    first = sum(v for m, v in forced.items() if m not in left_out)
    return Bound(cold, round(cold / len(trace), 6), first, left_out)


def bound_for(trace: Trace, spec: FleetSpec) -> Bound | None:
    """:func:`static_bound` for ``trace`` on ``spec``, with the sizes a replay would use."""
    used = sorted({trace.models[i] for i in set(trace.model)})
    return static_bound(trace, resolve_models(used, spec), resolve_nodes(spec))
