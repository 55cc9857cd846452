"""The knobs of a replay, shared by both policies; all of them are echoed in the report."""

from __future__ import annotations

from typing import Annotated

import msgspec

from porten.scheduler.plan import PlannerConfig

_Pos = Annotated[float, msgspec.Meta(gt=0)]


class SimOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the replay runs.

    ``window_s`` is the demand window the hub aggregates ``demand_observed``
    over; Porten's planner runs each time one closes. ``max_wait_s`` bounds
    how long a request waits when no load could even be started for it (every
    node full of busy models; the hub answers 503 there and the simulated
    client keeps retrying): past it the request counts as unserved.
    ``keep_alive_s`` is the LRU baseline's idle timeout (Ollama's default, 5
    minutes). ``bucket_s`` is the report timeline's resolution.
    """

    window_s: _Pos = 60.0
    bucket_s: _Pos = 60.0
    max_wait_s: _Pos = 600.0
    keep_alive_s: _Pos = 300.0
    planner: PlannerConfig = PlannerConfig()
