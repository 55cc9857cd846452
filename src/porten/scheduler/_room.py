"""Making room for a just-requested model: which copies may go, and which go first.

Urgent placement's second and third resorts after free room. Each ready
copy is costed by the demand it would leave unserved
(:func:`~porten.scheduler.filters.copy_loss`), and only admissible copies
are candidates (:func:`~porten.scheduler.filters.may_evict_for`: less demand
than the requested model, or the long tail).

* **Evict**: on each node the idle admissible copies go cheapest first until
  the model fits; the node losing the least demand wins.
* **Drain**: where only copies serving requests stand in the way, they are
  drained instead — no new requests reach them, and they are unloaded when
  those in flight finish — so a request in flight is never cut off, and a
  busy tail model cannot hold its room against another for ever. Room that
  drains already under way will free counts first: a second request does not
  start a second drain.

Pure: the state, the time and what is busy come in; a node and its victims
come out, with no reason strings (``urgent`` words them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from porten.domain.state import FleetState, NodeState, model_disk_mb, vram_free_mb
from porten.domain.values import CatalogEntry
from porten.scheduler import filters as f
from porten.scheduler.plan import Busy, PlannerConfig


class Costs:
    """What each copy would lose if it went, and what the requested model is worth."""

    def __init__(
        self,
        state: FleetState,
        entry: CatalogEntry,
        now: float,
        config: PlannerConfig,
        busy: Busy,
    ) -> None:
        self.state, self.now, self.config, self.busy = state, now, config, busy
        self.copies = f.ready_copies(state)
        self._rates: dict[str, float] = {}
        self._losses: dict[tuple[str, str], float] = {}
        self.wanted = self.rate(entry.id)
        self._wanted = (self.wanted, entry.vram_mb)
        self.starved = f.starved_s(state, entry.id, now) >= config.starvation_s

    def rate(self, m: str) -> float:
        """The model's demand over the last window."""
        if m not in self._rates:
            self._rates[m] = f.demand_rate(self.state, m, self.now, self.config)
        return self._rates[m]

    def loss(self, node_id: str, m: str) -> float:
        """Demand left unserved if the copy of ``m`` on ``node_id`` goes.

        At least its requests in flight spread over a demand window: a backlog
        the windows have not recorded yet (they count a request when a node
        starts on it) is demand all the same.
        """
        key = (node_id, m)
        if key not in self._losses:
            in_flight = self.busy.get(key, 0) / max(self.config.demand_window_s, 1e-9)
            rate = f.copy_loss(self.rate(m), self.copies[m], self.config)
            self._losses[key] = max(rate, in_flight)
        return self._losses[key]

    def admissible(self, node: NodeState, m: str) -> bool:
        """Whether the copy of ``m`` on ``node`` may make room (drained if serving requests).

        Never a copy the hub loaded less than ``min_residency_s`` ago: the
        requests that waited for its load are being served now and no demand
        window shows them yet, so its demand cannot be judged. (A copy the node
        reported already loaded has no such backlog.)
        """
        if just_loaded(node, m, self.now, self.config):
            return False
        return f.may_evict_for(
            self.loss(node.node_id, m),
            vram_of(self.state, m),
            self._wanted,
            self.config,
            serving=f.is_busy(self.busy, node.node_id, m),
            starved=self.starved,
        )


class Room(NamedTuple):
    """A node and the copies that must go for the model to fit there."""

    node_id: str
    victims: tuple[str, ...]
    #: Demand those copies leave unserved, summed.
    loss: float


def fits_once_gone(
    state: FleetState, node: NodeState, entry: CatalogEntry, gone: Sequence[str]
) -> bool:
    """Whether ``entry`` fits ``node``'s VRAM and disk once ``gone`` are unloaded.

    Disk counts the weights of every model in memory plus the new one: files
    not in memory are the agent's LRU cache, removed when room is needed.
    """
    vram = vram_free_mb(state, node) + f.memory_vram_mb(state, node, gone)
    disk_used = f.memory_disk_mb(state, node) - sum(
        c.entry.disk_mb for m in gone if (c := state.catalog.get(m)) is not None
    )
    return entry.vram_mb <= vram and disk_used + entry.disk_mb <= node.disk_budget_mb


def cheapest_eviction(
    state: FleetState,
    entry: CatalogEntry,
    candidates: Sequence[NodeState],
    costs: Costs,
    busy: Busy,
) -> Room | None:
    """The node where evicting idle admissible copies, cheapest first, loses least.

    Ties: weights on disk, fewer evictions, node id.
    """
    best: tuple[tuple[float, bool, int, str], Room] | None = None
    for node in candidates:
        order = _by_loss(costs, node, f.evictable(node, busy))
        allowed = [m for m in order if costs.admissible(node, m)]
        # Copies draining still hold their memory: only a drain may count on it.
        victims = _shortest(state, node, entry, allowed, ())
        if victims is None:
            continue
        loss = sum(costs.loss(node.node_id, m) for m in victims)
        key = (loss, entry.id not in node.on_disk, len(victims), node.node_id)
        if best is None or key < best[0]:
            best = (key, Room(node.node_id, tuple(victims), loss))
    return best[1] if best else None


def cheapest_drain(
    state: FleetState,
    entry: CatalogEntry,
    candidates: Sequence[NodeState],
    costs: Costs,
    busy: Busy,
) -> Room | None:
    """The node where draining admissible copies (busy or idle) makes room losing least.

    Copies already draining count as gone; a node they alone make room on
    needs no new drain (an empty ``victims``) and wins. Otherwise: least
    demand lost, then fewest copies serving requests (the wait), weights on
    disk, fewer victims, node id.
    """
    best: tuple[tuple[float, int, bool, int, str], Room] | None = None
    for node in candidates:
        order = _by_loss(costs, node, _serving(node))
        allowed = [m for m in order if costs.admissible(node, m)]
        victims = _shortest(state, node, entry, allowed, _draining(node), empty_ok=True)
        if victims is None:
            continue
        loss = sum(costs.loss(node.node_id, m) for m in victims)
        serving = sum(f.is_busy(busy, node.node_id, m) for m in victims)
        key = (loss, serving, entry.id not in node.on_disk, len(victims), node.node_id)
        if best is None or key < best[0]:
            best = (key, Room(node.node_id, tuple(victims), loss))
    return best[1] if best else None


def protected(
    state: FleetState, entry: CatalogEntry, candidates: Sequence[NodeState], costs: Costs
) -> list[tuple[str, str]]:
    """(node, model) of copies the admission rule alone keeps, on nodes where taking every
    ready copy would make room: why neither search found room there."""
    out: list[tuple[str, str]] = []
    for node in candidates:
        ready = _serving(node)
        if _shortest(state, node, entry, ready, _draining(node), empty_ok=True) is not None:
            out.extend((node.node_id, m) for m in sorted(ready) if not costs.admissible(node, m))
    return out


def _serving(node: NodeState) -> list[str]:
    return [m for m, p in node.placements.items() if p.serving]


def _draining(node: NodeState) -> list[str]:
    return sorted(m for m, p in node.placements.items() if p.draining)


def _by_loss(costs: Costs, node: NodeState, models: Sequence[str]) -> list[str]:
    """Cheapest to lose first; then idle before busy (no wait), the largest, model id."""

    def key(m: str) -> tuple[float, bool, int, str]:
        serving = f.is_busy(costs.busy, node.node_id, m)
        return (costs.loss(node.node_id, m), serving, -vram_of(costs.state, m), m)

    return sorted(models, key=key)


def _shortest(
    state: FleetState,
    node: NodeState,
    entry: CatalogEntry,
    order: Sequence[str],
    already_going: Sequence[str],
    *,
    empty_ok: bool = False,
) -> list[str] | None:
    """The shortest prefix of ``order`` that, with ``already_going``, makes room; or None.

    The same sums as :func:`fits_once_gone`, kept as the prefix grows.
    """
    vram = vram_free_mb(state, node) + f.memory_vram_mb(state, node, already_going)
    disk = f.memory_disk_mb(state, node) + entry.disk_mb
    disk -= sum(model_disk_mb(state, m) for m in already_going)
    if empty_ok and entry.vram_mb <= vram and disk <= node.disk_budget_mb:
        return []
    for k, m in enumerate(order, start=1):
        vram += vram_of(state, m)
        disk -= model_disk_mb(state, m)
        if entry.vram_mb <= vram and disk <= node.disk_budget_mb:
            return list(order[:k])
    return None


def just_loaded(node: NodeState, m: str, now: float, config: PlannerConfig) -> bool:
    """Whether the copy of ``m`` on ``node`` finished a hub load less than
    ``min_residency_s`` ago."""
    p = node.placements[m]
    return bool(p.load_id) and p.phase == "ready" and now - p.since < config.min_residency_s


def vram_of(state: FleetState, model_id: str) -> int:
    """The catalog's VRAM footprint (0 for a model it does not know)."""
    c = state.catalog.get(model_id)
    return c.entry.vram_mb if c is not None else 0
