"""FFD's working state: free room per node, what stays, what was added, replica counts.

Shared by first-fit-decreasing (which mutates it as it goes) and the
neighbourhood selection (which only reads the starting point). Room is kept
in numpy arrays so "which nodes could take a model of this size" is one
vectorised comparison over the fleet, not a Python loop.
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt

from porten.scheduler._fleet import Changes, Fleet, ModelTerm, Pair

Ints = npt.NDArray[np.int64]


class Packing:
    """FFD's working state: free room per node, what stays, what was added."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.counts = {m: t.replicas for m, t in fleet.models.items()}
        self.kept: list[list[str]] = [list(n.evictable) for n in fleet.nodes]
        self.added: list[set[str]] = [set() for _ in fleet.nodes]
        models = fleet.models
        self.free_v: Ints = np.array(
            [n.vram_room - sum(models[m].vram for m in n.evictable) for n in fleet.nodes],
            dtype=np.int64,
        )
        self.free_d: Ints = np.array(
            [n.disk_room - sum(models[m].disk for m in n.evictable) for n in fleet.nodes],
            dtype=np.int64,
        )
        #: Room held by evictable placements still kept: what eviction could give back.
        self.kept_v: Ints = np.array(
            [sum(models[m].vram for m in n.evictable) for n in fleet.nodes], dtype=np.int64
        )
        self.kept_d: Ints = np.array(
            [sum(models[m].disk for m in n.evictable) for n in fleet.nodes], dtype=np.int64
        )
        self.budget_v: Ints = np.array([n.vram_budget for n in fleet.nodes], dtype=np.int64)
        self.budget_d: Ints = np.array([n.disk_budget for n in fleet.nodes], dtype=np.int64)
        self.unloads: set[Pair] = set()
        self.loads: set[Pair] = set()
        #: Per model, the nodes holding its weights on disk, by index.
        self.disk_nodes: dict[str, list[int]] = {}
        for i, n in enumerate(fleet.nodes):
            for m in sorted(n.on_disk):
                self.disk_nodes.setdefault(m, []).append(i)

    def loss(self, model_id: str) -> int:
        """Value lost by unloading one replica of ``model_id``, plus the unload itself."""
        return self.fleet.models[model_id].marginal(self.counts[model_id]) + self.fleet.unload_cost

    def victims(self, i: int) -> list[str]:
        """Evictable placements on node ``i``, cheapest to lose first."""
        models = self.fleet.models
        return sorted(self.kept[i], key=lambda m: (self.loss(m), -models[m].vram, m))

    def unload(self, i: int, model_id: str) -> None:
        """Unload ``model_id`` from node ``i`` (it must be evictable and still kept)."""
        t = self.fleet.models[model_id]
        self.kept[i].remove(model_id)
        self.free_v[i] += t.vram
        self.free_d[i] += t.disk
        self.kept_v[i] -= t.vram
        self.kept_d[i] -= t.disk
        self.counts[model_id] -= 1
        self.unloads.add((self.fleet.nodes[i].node_id, model_id))

    def load(self, i: int, model_id: str) -> None:
        """Load ``model_id`` on node ``i`` (the caller checked the room)."""
        t = self.fleet.models[model_id]
        self.added[i].add(model_id)
        self.free_v[i] -= t.vram
        self.free_d[i] -= t.disk
        self.counts[model_id] += 1
        self.loads.add((self.fleet.nodes[i].node_id, model_id))

    def allowed(self, i: int, t: ModelTerm) -> bool:
        """Whether ``t`` may be loaded on node ``i`` and was not loaded there already."""
        return self.fleet.may_load(self.fleet.nodes[i], t) and t.model_id not in self.added[i]

    def changes(self) -> Changes:
        """The decisions made so far."""
        return Changes(unloads=frozenset(self.unloads), loads=frozenset(self.loads))

    def greedy_victims(self, i: int, t: ModelTerm, gain: int) -> tuple[int, list[str]] | None:
        """Cheapest-first victims on node ``i`` that make room for ``t`` at a loss below ``gain``.

        (loss, victims), or None when room cannot be made that cheaply.
        """
        free_v, free_d = int(self.free_v[i]), int(self.free_d[i])
        lost, victims = 0, []
        for m in self.victims(i):
            if free_v >= t.vram and free_d >= t.disk:
                break
            lost += self.loss(m)
            if lost >= gain:
                return None
            victims.append(m)
            free_v += self.fleet.models[m].vram
            free_d += self.fleet.models[m].disk
        if free_v < t.vram or free_d < t.disk:
            return None
        return lost, victims

    def could_reclaim(self, t: ModelTerm) -> list[int]:
        """Nodes where ``t`` fits the budgets and the room, once every evictable one is gone."""
        mask = (
            (self.free_v + self.kept_v >= t.vram)
            & (self.free_d + self.kept_d >= t.disk)
            & (self.budget_v >= t.vram)
            & (self.budget_d >= t.disk)
        )
        found: list[int] = np.flatnonzero(mask).tolist()
        return found

    def fit_mask(self, t: ModelTerm) -> npt.NDArray[np.bool_]:
        """Per node, whether there is free room (and budget) for ``t`` as things stand."""
        return (
            (self.free_v >= t.vram)
            & (self.free_d >= t.disk)
            & (self.budget_v >= t.vram)
            & (self.budget_d >= t.disk)
        )

    def eviction_costs(self) -> EvictionCosts:
        """Every node's victims, cheapest first, as prefix sums: for ranking eviction nodes."""
        return EvictionCosts(self)


class EvictionCosts:
    """Cheapest-first eviction on every node at once, as padded prefix-sum matrices.

    Row i, column k holds the VRAM, disk and value freed by evicting node i's
    k cheapest victims, so "the fewest, cheapest victims that make room for a
    model of this size, on every node" is a handful of array operations.
    """

    def __init__(self, p: Packing) -> None:
        self.p = p
        orders = [p.victims(i) for i in range(len(p.fleet.nodes))]
        self.width = 1 + max((len(o) for o in orders), default=0)
        rows = [self._row(o) for o in orders]
        self.vram: Ints = np.array([r[0] for r in rows], dtype=np.int64).reshape(-1, self.width)
        self.disk: Ints = np.array([r[1] for r in rows], dtype=np.int64).reshape(-1, self.width)
        self.loss: Ints = np.array([r[2] for r in rows], dtype=np.int64).reshape(-1, self.width)

    def _row(self, order: list[str]) -> tuple[list[int], list[int], list[int]]:
        """Prefix sums of one node's victims. Column 0 is "evict nothing"; padding adds
        nothing, so a padded column is never the first that makes room."""
        models, pad = self.p.fleet.models, [0] * (self.width - 1 - len(order))

        def sums(part: list[int]) -> list[int]:
            return list(itertools.accumulate([0, *part, *pad]))

        return (
            sums([models[m].vram for m in order]),
            sums([models[m].disk for m in order]),
            sums([self.p.loss(m) for m in order]),
        )

    def refresh(self, i: int) -> None:
        """Recompute node ``i``'s row after its placements changed.

        Other rows keep the losses of when they were computed: a model's
        marginal value moves as its replicas come and go elsewhere, so between
        refreshes the matrices rank nodes approximately, and callers check the
        best few exactly.
        """
        self.vram[i], self.disk[i], self.loss[i] = self._row(self.p.victims(i))

    def for_model(self, t: ModelTerm) -> tuple[Ints, Ints]:
        """(value lost, victims evicted) per node to make room for ``t``; huge where it can't."""
        ok = (self.p.free_v[:, None] + self.vram >= t.vram) & (
            self.p.free_d[:, None] + self.disk >= t.disk
        )
        first = np.argmax(ok, axis=1)
        rows = np.arange(len(first))
        loss = np.where(ok[rows, first], self.loss[rows, first], np.iinfo(np.int64).max)
        return loss.astype(np.int64), first.astype(np.int64)
