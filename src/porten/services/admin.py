"""Operator actions on nodes and the catalog, each an audited event.

Region and trust class are operator-authoritative: they change only here
(and at enrolment, from the owning account's settings), never from what an
agent reports. Every action appends an ``admin_action_taken`` naming the
actor together with the change itself, in one transaction — the audit trail
``porten events list --type admin`` shows. The admin HTTP API and the
``porten admin`` CLI both call this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import msgspec

from porten.domain import events as ev
from porten.domain.state import CatalogModel, NodeState
from porten.domain.values import TRUST_ORDER, CatalogEntry, TrustClass
from porten.services.control import Log, audited

MAX_REGION_LENGTH = 64


class AdminProblem(Exception):
    """An operator request that cannot be done; the message says why."""


class NotFound(AdminProblem):
    """The node or model named does not exist."""


def region_problem(region: str) -> str:
    """What is wrong with a region name ("" if nothing; the empty region means "none")."""
    if len(region) > MAX_REGION_LENGTH or not region.isprintable() or " " in region:
        return f"a region is a name of at most {MAX_REGION_LENGTH} characters without spaces"
    return ""


@attrs.define
class Admin:
    """Node and catalog administration over the log."""

    log: Log
    clock: Callable[[], float]

    # --- nodes -----------------------------------------------------------------------------

    def nodes(self) -> list[NodeState]:
        """Every enrolled node, by id."""
        return sorted(self.log.state.nodes.values(), key=lambda n: n.node_id)

    async def set_node(
        self, node_id: str, *, region: str | None = None, trust_class: TrustClass | None = None,
        actor: str,
    ) -> NodeState:
        """Place the node in ``region`` and/or give it ``trust_class`` (None: unchanged)."""
        if node_id not in self.log.state.nodes:
            raise NotFound(f"no node with id {node_id!r}")
        if region is None and trust_class is None:
            raise AdminProblem("give a region, a trust class or both")
        now = self.clock()
        events: list[ev.AnyEvent] = []
        detail: dict[str, str] = {}
        if region is not None:
            problem = region_problem(region)
            if problem:
                raise AdminProblem(problem)
            events.append(ev.NodeRegionSet(at=now, actor=actor, node_id=node_id, region=region))
            detail["region"] = region
        if trust_class is not None:
            if trust_class not in TRUST_ORDER:
                raise AdminProblem(f"trust class must be one of {', '.join(TRUST_ORDER)}")
            events.append(ev.NodeTrustClassSet(at=now, actor=actor, node_id=node_id,
                                               trust_class=trust_class))
            detail["trust_class"] = trust_class
        state = await self.log.commit(
            audited(events, at=now, actor=actor, action="node.set", target=node_id, **detail)
        )
        return state.nodes[node_id]

    # --- catalog ---------------------------------------------------------------------------

    def catalog(self) -> list[CatalogModel]:
        """Every model the catalog knows, offered or not, by id."""
        return [c for _, c in sorted(self.log.state.catalog.items())]

    def _model(self, model_id: str) -> CatalogModel:
        c = self.log.state.catalog.get(model_id)
        if c is None:
            raise NotFound(f"no model {model_id!r} in the catalog")
        return c

    async def enable_model(self, model_id: str, *, actor: str) -> CatalogModel:
        """Offer a model the catalog knows."""
        entry = self._model(model_id).entry
        now = self.clock()
        state = await self.log.commit(audited(
            [ev.ModelOffered(at=now, actor=actor, model=entry)],
            at=now, actor=actor, action="catalog.enable", target=model_id,
        ))
        return state.catalog[model_id]

    async def disable_model(self, model_id: str, *, reason: str = "", actor: str) -> CatalogModel:
        """Withdraw a model: new requests for it get ``model_not_found``."""
        self._model(model_id)
        now = self.clock()
        state = await self.log.commit(audited(
            [ev.ModelWithdrawn(at=now, actor=actor, model_id=model_id, reason=reason)],
            at=now, actor=actor, action="catalog.disable", target=model_id, reason=reason,
        ))
        return state.catalog[model_id]

    async def set_prices(
        self, model_id: str, *, price_in_per_m: float | None = None,
        price_out_per_m: float | None = None, actor: str,
    ) -> CatalogModel:
        """Change a model's prices (USD per million input/output tokens); new requests pay them."""
        entry = self._model(model_id).entry
        changes: dict[str, float] = {}
        for name, value in (("price_in_per_m", price_in_per_m),
                            ("price_out_per_m", price_out_per_m)):
            if value is None:
                continue
            if not math.isfinite(value) or value < 0:
                raise AdminProblem(f"{name} must be a finite price of at least 0")
            changes[name] = value
        if not changes:
            raise AdminProblem("give price_in_per_m, price_out_per_m or both")
        new: CatalogEntry = msgspec.structs.replace(entry, **changes)
        now = self.clock()
        state = await self.log.commit(audited(
            [ev.ModelUpdated(at=now, actor=actor, model=new)],
            at=now, actor=actor, action="catalog.price", target=model_id,
            **{k: f"{v:g}" for k, v in changes.items()},
        ))
        return state.catalog[model_id]
