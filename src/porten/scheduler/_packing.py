"""FFD's working state: free room per node, what stays, what was added, replica counts.

Shared by first-fit-decreasing (which mutates it as it goes) and the
neighbourhood selection (which only reads the starting point). Room is kept
in numpy arrays so "which nodes could take a model of this size" is one
vectorised comparison over the fleet, not a Python loop.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import numpy.typing as npt

from porten.scheduler._fleet import Changes, Fleet, ModelTerm, Pair, first_copy_for

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
        self.budget_v: Ints = np.array([n.vram_budget for n in fleet.nodes], dtype=np.int64)
        self.budget_d: Ints = np.array([n.disk_budget for n in fleet.nodes], dtype=np.int64)
        self.unloads: set[Pair] = set()
        self.loads: set[Pair] = set()
        #: Per model, the nodes holding its weights on disk, by index.
        self.disk_nodes: dict[str, list[int]] = {}
        for i, n in enumerate(fleet.nodes):
            for m in sorted(n.on_disk):
                self.disk_nodes.setdefault(m, []).append(i)

    def copy(self) -> Packing:
        """An independent copy to change (the fleet and the disk index are shared, read-only)."""
        other = copy.copy(self)
        other.counts = dict(self.counts)
        other.kept = [list(k) for k in self.kept]
        other.added = [set(a) for a in self.added]
        other.free_v, other.free_d = self.free_v.copy(), self.free_d.copy()
        other.unloads, other.loads = set(self.unloads), set(self.loads)
        return other

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
            if not self.may_evict_for(m, t):
                continue
            lost += self.loss(m)
            if lost >= gain:
                return None
            victims.append(m)
            free_v += self.fleet.models[m].vram
            free_d += self.fleet.models[m].disk
        if free_v < t.vram or free_d < t.disk:
            return None
        return lost, victims

    def may_evict_for(self, victim: str, t: ModelTerm) -> bool:
        """Whether a copy of ``victim`` may go to make room for a load of ``t``.

        Any copy but the last of a model with demand; that one only for the
        first copy of a model with more demand (``_fleet.first_copy_for``).
        """
        if self.counts[victim] > 1 or self.fleet.models[victim].rate <= 0:
            return True
        return self.counts[t.model_id] == 0 and first_copy_for(self.fleet, victim, t.model_id)

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
        models = sorted(p.fleet.models)  # so a model's rank orders like its id
        rank = {m: r for r, m in enumerate(models)}
        terms = [p.fleet.models[m] for m in models]
        vram = np.array([t.vram for t in terms], dtype=np.int64)
        disk = np.array([t.disk for t in terms], dtype=np.int64)
        loss = np.array([p.loss(m) for m in models], dtype=np.int64)
        node = np.array([i for i, kept in enumerate(p.kept) for _ in kept], dtype=np.int64)
        model = np.array([rank[m] for kept in p.kept for m in kept], dtype=np.int64)
        # Each node's victims cheapest first — (loss, larger first, id), as Packing.victims —
        # then their position in that order, and prefix sums along each row.
        order = np.lexsort((model, -vram[model], loss[model], node))
        node, model = node[order], model[order]
        per_node = np.bincount(node, minlength=len(p.kept))
        self.width = 1 + int(per_node.max(initial=0))
        column = np.arange(len(node)) - np.repeat(np.cumsum(per_node) - per_node, per_node) + 1
        shape = (len(p.kept), self.width)
        self.vram, self.disk, self.loss = (np.zeros(shape, dtype=np.int64) for _ in range(3))
        for matrix, values in ((self.vram, vram), (self.disk, disk), (self.loss, loss)):
            matrix[node, column] = values[model]
            np.cumsum(matrix, axis=1, out=matrix)

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

    def copy_for(self, p: Packing) -> EvictionCosts:
        """These costs, following ``p`` (a copy of the packing they were computed on)."""
        other = copy.copy(self)
        other.p = p
        other.vram, other.disk, other.loss = self.vram.copy(), self.disk.copy(), self.loss.copy()
        return other

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
