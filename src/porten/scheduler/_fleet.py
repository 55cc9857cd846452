"""The placement problem in integers: what each solver sees and what every answer is scored by.

:func:`build_fleet` reduces a :class:`FleetState` to the part the planner may
change: per provisionable node the room left once the placements it must not
touch (loads in progress, models serving requests) are counted, and the
placements it may evict; per model its size, its current replicas and the
marginal value of each wanted replica. Values and costs are scaled to
integers (:data:`SCALE` per churn unit) so CP-SAT, first-fit-decreasing and
the final comparison all compute the very same objective with exact
arithmetic — there is no float rounding to make two processes disagree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from porten.domain.state import FleetState, NodeState
from porten.scheduler import filters as f
from porten.scheduler.plan import Busy, PlannerConfig

#: Objective units per churn unit (``PlannerConfig.unload_cost`` = 5.0 is 5000).
SCALE = 1000

Pair = tuple[str, str]
"""(node id, model id)."""


def scaled(x: float) -> int:
    """``x`` churn units as an integer objective amount."""
    return round(x * SCALE)


@dataclass(frozen=True, slots=True)
class ModelTerm:
    """One model as the solvers see it."""

    model_id: str
    vram: int
    disk: int
    rate: float
    #: Scaled marginal value of the 1st … ``desired``-th replica (empty: no demand, never loaded).
    values: tuple[int, ...]
    #: Replicas now: placements in any phase on online nodes, evictable or not.
    replicas: int

    @property
    def desired(self) -> int:
        """Replicas the demand wants."""
        return len(self.values)

    def value_of(self, count: int) -> int:
        """Scaled value of holding ``count`` replicas."""
        return sum(self.values[: max(0, count)])

    def marginal(self, count: int) -> int:
        """Scaled value the ``count``-th replica adds (0 beyond what is wanted)."""
        return self.values[count - 1] if 0 < count <= len(self.values) else 0


@dataclass(frozen=True, slots=True)
class NodeTerm:
    """One provisionable node: its budgets, the room the planner controls, what it holds."""

    node_id: str
    vram_budget: int
    disk_budget: int
    #: Room for evictable and new placements: the budget less what must stay (never negative).
    vram_room: int
    disk_room: int
    #: Ready placements with no request in flight, sorted: the planner may unload these.
    evictable: tuple[str, ...]
    #: Every model in memory here, any phase: never loaded a second time.
    present: frozenset[str]
    on_disk: frozenset[str]
    #: Models in back-off after failed loads here.
    blocked: frozenset[str]


@dataclass(frozen=True, slots=True)
class Changes:
    """A candidate answer: which evictable placements go and which loads happen."""

    unloads: frozenset[Pair] = frozenset()
    loads: frozenset[Pair] = frozenset()

    @property
    def size(self) -> int:
        """How many decisions it takes."""
        return len(self.unloads) + len(self.loads)


@dataclass(frozen=True, slots=True)
class Fleet:
    """The whole placement problem; nodes sorted by id, models keyed by id."""

    nodes: tuple[NodeTerm, ...]
    models: Mapping[str, ModelTerm]
    unload_cost: int
    load_cost_on_disk: int
    load_cost_download: int
    #: Nodes by id, and the nodes whose evictable placements alone exceed their room.
    by_id: Mapping[str, NodeTerm] = field(init=False, repr=False, compare=False)
    over_room: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id = {n.node_id: n for n in self.nodes}
        object.__setattr__(self, "by_id", by_id)
        used = usage(self, Changes(), by_id)
        over = (n for n, (v, d) in used.items() if v > by_id[n].vram_room or d > by_id[n].disk_room)
        object.__setattr__(self, "over_room", frozenset(over))

    def load_cost(self, node: NodeTerm, model_id: str) -> int:
        """Loading from local disk is cheaper than downloading first."""
        return self.load_cost_on_disk if model_id in node.on_disk else self.load_cost_download

    def may_load(self, node: NodeTerm, m: ModelTerm) -> bool:
        """Whether a load of ``m`` on ``node`` is allowed and could ever fit the room."""
        return (
            bool(m.values)
            and m.model_id not in node.present
            and m.model_id not in node.blocked
            and m.vram <= min(node.vram_budget, node.vram_room)
            and m.disk <= min(node.disk_budget, node.disk_room)
        )


def build_fleet(
    state: FleetState,
    now: float,
    config: PlannerConfig,
    busy: Busy,
    gone: Iterable[Pair] = (),
) -> Fleet:
    """The placement problem on ``state`` as if the ``gone`` placements were already unloaded."""
    removed = frozenset(gone)
    nodes = tuple(
        _node_term(state, n, now=now, config=config, busy=busy, removed=removed)
        for n in f.provisionable_nodes(state)
    )
    return Fleet(
        nodes=nodes,
        models=_model_terms(state, nodes, now=now, config=config, removed=removed),
        unload_cost=scaled(config.unload_cost),
        load_cost_on_disk=scaled(config.load_cost_on_disk),
        load_cost_download=scaled(config.load_cost_download),
    )


def _model_terms(
    state: FleetState,
    nodes: tuple[NodeTerm, ...],
    *,
    now: float,
    config: PlannerConfig,
    removed: frozenset[Pair],
) -> dict[str, ModelTerm]:
    """Every offered model and every evictable one, by id: sizes, replicas, replica values."""
    replicas: Counter[str] = Counter()
    for n in state.nodes.values():
        if n.online:
            replicas.update(m for m in n.placements if (n.node_id, m) not in removed)
    wanted = sorted({m for m in state.catalog if _offered(state, m)} | _evictable_models(nodes))
    rates = {m: f.demand_rate(state, m, now, config) for m in wanted if _offered(state, m)}
    hosts = _eligible_counts(state, nodes, [m for m, r in rates.items() if r > 0], removed)
    models: dict[str, ModelTerm] = {}
    for m in wanted:
        rate = rates.get(m, 0.0)
        desired = f.desired_replicas(rate, config, hosts.get(m, 0))
        c = state.catalog.get(m)
        models[m] = ModelTerm(
            model_id=m,
            vram=c.entry.vram_mb if c is not None else 0,
            disk=c.entry.disk_mb if c is not None else 0,
            rate=rate,
            values=tuple(scaled(v) for v in f.replica_values(rate, desired, config)),
            replicas=replicas[m],
        )
    return models


def _offered(state: FleetState, model_id: str) -> bool:
    c = state.catalog.get(model_id)
    return c is not None and c.offered


def _evictable_models(nodes: Iterable[NodeTerm]) -> set[str]:
    return {m for n in nodes for m in n.evictable}


def _node_term(
    state: FleetState,
    node: NodeState,
    *,
    now: float,
    config: PlannerConfig,
    busy: Busy,
    removed: frozenset[Pair],
) -> NodeTerm:
    present = [m for m in node.placements if (node.node_id, m) not in removed]
    evictable = tuple(m for m in f.evictable(node, busy) if (node.node_id, m) not in removed)
    pinned = set(present) - set(evictable)
    pinned_vram = f.memory_vram_mb(state, node, pinned)
    pinned_disk = sum(_disk(state, m) for m in pinned)
    return NodeTerm(
        node_id=node.node_id,
        vram_budget=node.vram_budget_mb,
        disk_budget=node.disk_budget_mb,
        vram_room=max(0, node.vram_budget_mb - pinned_vram),
        disk_room=max(0, node.disk_budget_mb - pinned_disk),
        evictable=evictable,
        present=frozenset(present),
        on_disk=node.on_disk,
        blocked=frozenset(m for m in node.failures if f.in_backoff(node, m, now, config)),
    )


def _disk(state: FleetState, model_id: str) -> int:
    c = state.catalog.get(model_id)
    return c.entry.disk_mb if c is not None else 0


def _eligible_counts(
    state: FleetState, nodes: tuple[NodeTerm, ...], models: list[str], removed: frozenset[Pair]
) -> dict[str, int]:
    """Per model, the nodes that could ever serve it: the cap on its replicas.

    Those are provisionable nodes whose budgets fit it — back-off passes, so it
    does not lower the cap — and the other online nodes serving it (fixed-set
    nodes). Nothing here depends on what the planner may change, so applying a
    plan never moves the cap. Nodes are grouped by budgets first, so this
    costs models x budget classes, not models x nodes.
    """
    by_budget = Counter((n.vram_budget, n.disk_budget) for n in nodes)
    planner_ids = {n.node_id for n in nodes}
    counts: dict[str, int] = {}
    for m in models:
        e = state.catalog[m].entry
        counts[m] = sum(k for (v, d), k in by_budget.items() if e.vram_mb <= v and e.disk_mb <= d)
    for node in state.nodes.values():
        if node.online and node.node_id not in planner_ids:
            for m in node.placements:
                if m in counts and (node.node_id, m) not in removed:
                    counts[m] += 1
    return counts


# --- composing changes --------------------------------------------------------------------------


def compose(first: Changes, then: Changes) -> Changes:
    """The net changes of ``first`` followed by ``then`` (``then`` planned on the result).

    A placement loaded by ``first`` and unloaded by ``then`` was never needed,
    and one unloaded by ``first`` and loaded again by ``then`` never left.
    """
    return Changes(
        unloads=(first.unloads - then.loads) | (then.unloads - first.loads),
        loads=(first.loads - then.unloads) | (then.loads - first.unloads),
    )


def advance(fleet: Fleet, changes: Changes) -> Fleet:
    """The problem once ``changes`` have completed: what the fold of their events would give.

    New placements are ready and evictable, their weights on disk and their
    back-off cleared (as ``model_loaded`` does); the room each node must keep
    free for its pinned placements is unchanged.
    """
    gone: dict[str, set[str]] = {}
    new: dict[str, set[str]] = {}
    for node_id, m in changes.unloads:
        gone.setdefault(node_id, set()).add(m)
    for node_id, m in changes.loads:
        new.setdefault(node_id, set()).add(m)
    nodes = tuple(
        _advance_node(n, gone.get(n.node_id, set()), new.get(n.node_id, set()))
        if n.node_id in gone or n.node_id in new
        else n
        for n in fleet.nodes
    )
    counts = counts_after(fleet, changes)
    models = {m: replace(t, replicas=counts[m]) for m, t in fleet.models.items()}
    return replace(fleet, nodes=nodes, models=models)


def _advance_node(n: NodeTerm, gone: set[str], new: set[str]) -> NodeTerm:
    return replace(
        n,
        evictable=tuple(sorted((set(n.evictable) - gone) | new)),
        present=(n.present - gone) | new,
        on_disk=n.on_disk | new,
        blocked=n.blocked - new,
    )


# --- scoring -----------------------------------------------------------------------------------


def counts_after(fleet: Fleet, changes: Changes) -> dict[str, int]:
    """Replicas of every model once ``changes`` are applied."""
    counts = {m: t.replicas for m, t in fleet.models.items()}
    for _, m in changes.unloads:
        counts[m] -= 1
    for _, m in changes.loads:
        counts[m] += 1
    return counts


def objective(fleet: Fleet, changes: Changes) -> int:
    """Scaled value of the demand served after ``changes``, less what the churn costs."""
    counts = counts_after(fleet, changes)
    value = sum(t.value_of(counts[m]) for m, t in fleet.models.items())
    load = sum(fleet.load_cost(fleet.by_id[n], m) for n, m in changes.loads)
    return value - fleet.unload_cost * len(changes.unloads) - load


def usage(fleet: Fleet, changes: Changes, node_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Per node, the (VRAM, disk) its evictable and new placements take after ``changes``."""
    new: dict[str, list[str]] = {}
    for node_id, m in changes.loads:
        new.setdefault(node_id, []).append(m)
    out: dict[str, tuple[int, int]] = {}
    for node_id in node_ids:
        node = fleet.by_id[node_id]
        kept = [m for m in node.evictable if (node_id, m) not in changes.unloads]
        models = [fleet.models[m] for m in (*kept, *new.get(node_id, ()))]
        out[node_id] = (sum(t.vram for t in models), sum(t.disk for t in models))
    return out


def first_copy_for(fleet: Fleet, victim: str, loaded: str) -> bool:
    """Whether the last copy of ``victim`` may make room for a load of ``loaded``.

    Only for ``loaded``'s first copy, and only when ``loaded`` has more demand.
    This is the planner's half of the rule urgent placement keeps: a model
    with demand loses its last copy only to a model the fleet needs more, and
    never for another model's extra replica or for several smaller models
    whose demand adds up (the first-copy values include a flat availability
    bonus each, which a 0.02 req/s model earns as much as a 0.4 req/s one).
    """
    t, v = fleet.models[loaded], fleet.models[victim]
    return t.replicas == 0 and t.rate > v.rate


def unjustified(fleet: Fleet, changes: Changes) -> list[Pair]:
    """Unloads that leave a model with demand without any copy, for no first copy of a model
    with more demand loaded on the same node (nodes over their room are exempt: they shed)."""
    counts = counts_after(fleet, changes)
    loaded_on: dict[str, list[str]] = {}
    for node_id, m in changes.loads:
        loaded_on.setdefault(node_id, []).append(m)
    return sorted(
        (node_id, v)
        for node_id, v in changes.unloads
        if counts[v] <= 0
        and fleet.models[v].rate > 0
        and node_id not in fleet.over_room
        and not any(first_copy_for(fleet, v, m) for m in loaded_on.get(node_id, ()))
    )


def feasible(fleet: Fleet, changes: Changes) -> bool:
    """Whether ``changes`` keep every node within its room, load only where allowed and
    take no model's last copy without cause (:func:`unjustified`)."""
    by_id = fleet.by_id
    for n, m in changes.unloads:
        if n not in by_id or m not in by_id[n].evictable:
            return False
    for n, m in changes.loads:
        if n not in by_id or m not in fleet.models or not fleet.may_load(by_id[n], fleet.models[m]):
            return False
    touched = sorted({n for n, _ in changes.loads} | fleet.over_room)
    for node_id, (vram, disk) in usage(fleet, changes, touched).items():
        if vram > by_id[node_id].vram_room or disk > by_id[node_id].disk_room:
            return False
    return not (changes.unloads and unjustified(fleet, changes))
