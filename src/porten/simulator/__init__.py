"""Trace replay: real request traces through Porten's own fold, router and scheduler.

A discrete-event simulation with a simulated clock — no asyncio, network or
database. The fleet's state is the fold of the domain events the simulator
appends, the router is :func:`porten.scheduler.routing.candidates`, and
Porten's decisions come from the hub's urgent placer and planner. A per-node
LRU baseline with a keep-alive runs on the same trace, fleet and timing
model, so every result is a ratio. ``porten sim replay`` is the command;
``simulations/README.md`` is the guide.
"""

from porten.simulator._bound import Bound, bound_for, static_bound
from porten.simulator._fleet import (
    DEFAULT_FLEET,
    FALLBACK_SIZE,
    TRACE_MODEL_SIZES,
    FleetSpec,
    ModelSize,
    NodeDefaults,
    NodeSpec,
    SimNode,
    load_fleet,
    resolve_nodes,
)
from porten.simulator._options import SimOptions
from porten.simulator._replay import PolicyName, Replay, fleet_from_log, replay
from porten.simulator._report import Report, encode, summary_table
from porten.simulator._trace import (
    EventLog,
    Trace,
    cut,
    from_rows,
    merge,
    read_event_log,
    read_replay_csv,
    read_trace,
)

__all__ = [
    "DEFAULT_FLEET",
    "FALLBACK_SIZE",
    "TRACE_MODEL_SIZES",
    "Bound",
    "EventLog",
    "FleetSpec",
    "ModelSize",
    "NodeDefaults",
    "NodeSpec",
    "PolicyName",
    "Replay",
    "Report",
    "SimNode",
    "SimOptions",
    "Trace",
    "bound_for",
    "cut",
    "encode",
    "fleet_from_log",
    "from_rows",
    "load_fleet",
    "merge",
    "read_event_log",
    "read_replay_csv",
    "read_trace",
    "replay",
    "resolve_nodes",
    "static_bound",
    "summary_table",
]
