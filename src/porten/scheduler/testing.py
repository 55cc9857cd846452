"""Fleets for tests, simulations and benchmarks, built from the real events.

:class:`FleetBuilder` writes a log the way the hub would — enrolment,
connection, capability reports, loads, failures, demand windows, served
requests — and folds it, so every scheduler test starts from a state the
product could actually be in. Time only moves when the caller says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from porten.domain import events as ev
from porten.domain.fold import evolve
from porten.domain.state import EMPTY, FleetState
from porten.domain.values import CatalogEntry, TrustClass

#: Where a builder's clock starts (any value works; the fold never reads a clock).
T0 = 1_000_000.0


class FleetBuilder:
    """A log under construction and its fold, kept in step event by event."""

    def __init__(self, start: float = T0) -> None:
        self.now = start
        self.events: list[ev.AnyEvent] = []
        self.state: FleetState = EMPTY
        self._loads = 0

    def emit(self, cls: type[Any], **fields: Any) -> Any:
        """Append a ``cls`` event at the current time and fold it."""
        event = cls(at=self.now, actor="test", **fields)
        self.events.append(event)
        self.state = evolve(self.state, event)
        return event

    def advance(self, seconds: float) -> FleetBuilder:
        """Move the clock forward."""
        self.now += seconds
        return self

    # --- catalog and nodes ----------------------------------------------------------------

    def model(
        self, model_id: str, vram_mb: int, disk_mb: int | None = None, offered: bool = True
    ) -> FleetBuilder:
        """Put a model in the catalog (offered unless told otherwise)."""
        entry = CatalogEntry(id=model_id, vram_mb=vram_mb, disk_mb=disk_mb or vram_mb)
        self.emit(ev.ModelOffered, model=entry)
        if not offered:
            self.emit(ev.ModelWithdrawn, model_id=model_id)
        return self

    def node(
        self,
        node_id: str,
        *,
        vram_mb: int = 24_000,
        disk_mb: int = 200_000,
        provisionable: bool = True,
        loaded: Iterable[str] = (),
        on_disk: Iterable[str] = (),
        online: bool = True,
        owner_id: str = "u1",
        region: str = "",
        trust_class: TrustClass = "community",
    ) -> FleetBuilder:
        """Enrol a node, connect it and have it report its budgets and models."""
        self.emit(
            ev.NodeEnrolled,
            node_id=node_id,
            owner_id=owner_id,
            region=region,
            trust_class=trust_class,
        )
        self.emit(ev.NodeConnected, node_id=node_id, session_id=f"s-{node_id}")
        self.emit(
            ev.NodeCapabilitiesReported,
            node_id=node_id,
            engine="builtin" if provisionable else "ollama",
            provisionable=provisionable,
            vram_total_mb=vram_mb,
            vram_budget_mb=vram_mb,
            disk_budget_mb=disk_mb,
            models_on_disk=tuple(sorted(on_disk)),
            models_loaded=tuple(sorted(loaded)),
        )
        if not online:
            self.emit(ev.NodeDisconnected, node_id=node_id, session_id=f"s-{node_id}")
        return self

    # --- loads ----------------------------------------------------------------------------

    def pending(self, node_id: str, model_id: str, phase: str = "requested") -> str:
        """Start a load that has not finished; its load id."""
        self._loads += 1
        load_id = f"l{self._loads}"
        self.emit(
            ev.LoadRequested, node_id=node_id, model_id=model_id, load_id=load_id, reason="test"
        )
        if phase != "requested":
            self.emit(
                ev.LoadProgressed, node_id=node_id, model_id=model_id, load_id=load_id, phase=phase
            )
        return load_id

    def load(self, node_id: str, model_id: str) -> FleetBuilder:
        """Load a model on a node, completely."""
        load_id = self.pending(node_id, model_id)
        self.emit(ev.ModelLoaded, node_id=node_id, model_id=model_id, load_id=load_id)
        return self

    def fail(
        self, node_id: str, model_id: str, times: int = 1, every_s: float = 0.0
    ) -> FleetBuilder:
        """Have ``times`` loads of a model fail on a node, ``every_s`` apart."""
        for k in range(times):
            if k:
                self.advance(every_s)
            load_id = self.pending(node_id, model_id)
            self.emit(
                ev.LoadFailed,
                node_id=node_id,
                model_id=model_id,
                load_id=load_id,
                error="out of memory",
            )
        return self

    def unload(self, node_id: str, model_id: str) -> FleetBuilder:
        """Unload a model (an operator did it)."""
        self.emit(ev.ModelUnloaded, node_id=node_id, model_id=model_id, reason="operator")
        return self

    # --- demand -----------------------------------------------------------------------------

    def demand(
        self, model_id: str, served: int, unmet: int = 0, window_s: float = 60.0
    ) -> FleetBuilder:
        """Record one demand window for a model, ending now."""
        self.emit(
            ev.DemandObserved,
            model_id=model_id,
            window_start=self.now - window_s,
            window_s=window_s,
            served=served,
            unmet=unmet,
        )
        return self

    def rate(self, model_id: str, rps: float, demand_window_s: float = 600.0) -> FleetBuilder:
        """Record demand so that :func:`~porten.scheduler.filters.demand_rate` reads ``rps``."""
        return self.demand(model_id, served=round(rps * demand_window_s))

    def serve(self, node_id: str, model_id: str) -> FleetBuilder:
        """A request for a model answered by a node now (it is used, so not idle)."""
        self.emit(
            ev.RequestServed,
            request_id=f"r{len(self.events)}",
            model_id=model_id,
            node_id=node_id,
            key_id="k1",
            prompt_tokens=1,
            completion_tokens=1,
        )
        return self
