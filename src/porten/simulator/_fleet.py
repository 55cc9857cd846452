"""The simulated fleet: nodes with budgets and speeds, and a size for every trace model.

A fleet file is JSON decoded into :class:`FleetSpec` (unknown fields are an
error, so a typo never silently means "default"). Node entries may carry a
``count`` and expand into ``<id>-1`` … ``<id>-<count>``; per-node speeds fall
back to the fleet's ``defaults``. The same resolved fleet is handed to every
policy, so a comparison never differs in hardware.

Public traces carry anonymous model names (``azure2023-code``, ``m-large``…)
with no size. :data:`TRACE_MODEL_SIZES` gives each a footprint borrowed from
the catalog (or from the hardware guide's Q4 memory math where the catalog
has no such class); a fleet file's ``models`` map overrides it, and a model
nobody knows gets :data:`FALLBACK_SIZE`, flagged as such in the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Final, TypeVar

import msgspec

from porten.agent.engines.sim import SimProfile
from porten.domain.catalog import DEFAULT_CATALOG
from porten.domain.values import CatalogEntry, TrustClass

_Pos = Annotated[float, msgspec.Meta(gt=0)]
_NonNeg = Annotated[float, msgspec.Meta(ge=0)]
_PosInt = Annotated[int, msgspec.Meta(gt=0)]
_T = TypeVar("_T")


class NodeDefaults(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Speeds every node has unless its own entry says otherwise.

    ``tokens_per_s`` is per request stream (a batching engine keeps it up for
    ``slots`` concurrent streams); ``prefill_tokens_per_s`` adds
    ``prompt_tokens / prefill_tokens_per_s`` to each request when non-zero.
    """

    slots: _PosInt = 8
    ttft_ms: _NonNeg = 50.0
    tokens_per_s: _Pos = 200.0
    prefill_tokens_per_s: _NonNeg = 0.0
    load_s_per_gb: _NonNeg = 2.0
    download_mb_per_s: _Pos = 500.0
    disk_budget_mb: _PosInt = 1_000_000


class NodeSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One node (or ``count`` identical ones) as a fleet file describes it."""

    id: str
    count: _PosInt = 1
    vram_budget_mb: _PosInt
    vram_total_mb: int = 0
    disk_budget_mb: int | None = None
    region: str = ""
    trust_class: TrustClass = "community"
    #: Weights already on the node's disk when the replay starts (nothing is loaded).
    models_on_disk: tuple[str, ...] = ()
    slots: _PosInt | None = None
    ttft_ms: _NonNeg | None = None
    tokens_per_s: _Pos | None = None
    prefill_tokens_per_s: _NonNeg | None = None
    load_s_per_gb: _NonNeg | None = None
    download_mb_per_s: _Pos | None = None


class ModelSize(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A trace model's footprint; ``like`` names the class of model it stands for."""

    vram_mb: _PosInt
    disk_mb: _PosInt
    like: str = ""


class FleetSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A fleet file: nodes, their default speeds, and optional model sizes."""

    name: str = ""
    description: str = ""
    defaults: NodeDefaults = NodeDefaults()
    nodes: tuple[NodeSpec, ...]
    models: dict[str, ModelSize] = {}


class SimNode(msgspec.Struct, frozen=True, kw_only=True):
    """A resolved node: every field set, speeds as the engine's :class:`SimProfile`."""

    node_id: str
    vram_budget_mb: int
    vram_total_mb: int
    disk_budget_mb: int
    region: str
    trust_class: TrustClass
    models_on_disk: tuple[str, ...]
    slots: int
    prefill_tokens_per_s: float
    profile: SimProfile


def _size_like(catalog_id: str) -> ModelSize:
    for entry in DEFAULT_CATALOG:
        if entry.id == catalog_id:
            return ModelSize(vram_mb=entry.vram_mb, disk_mb=entry.disk_mb, like=catalog_id)
    raise KeyError(catalog_id)  # pragma: no cover - the table below names catalog ids


#: 70B dense at Q4_K_M (~40 GB of weights, hardware guide) plus a few GB of KV cache.
_DENSE_70B: Final = ModelSize(vram_mb=43_000, disk_mb=40_000, like="70b-dense-q4 (not in catalog)")

#: Sizes for the public traces' anonymous models (see simulations/README.md for the why).
TRACE_MODEL_SIZES: Final[Mapping[str, ModelSize]] = {
    "azure2023-code": _size_like("qwen2.5-coder-32b"),
    "azure2023-conv": _size_like("qwen2.5-14b-instruct"),
    "mooncake-conv": _DENSE_70B,
    "m-large": _DENSE_70B,
    "m-mid": _size_like("qwen2.5-coder-32b"),
    "m-small": _size_like("qwen2.5-7b-instruct"),
    "deepseek-r1": _size_like("deepseek-r1-distill-qwen-14b"),
    "mm-image": _size_like("qwen2.5-vl-7b-instruct"),
}
#: For a model no table knows: a 14B-class footprint.
FALLBACK_SIZE: Final = ModelSize(vram_mb=10_500, disk_mb=8_990, like="fallback (14b-class)")


class ResolvedModel(msgspec.Struct, frozen=True, kw_only=True):
    """A trace model as the catalog will offer it, and where its size came from."""

    entry: CatalogEntry
    like: str
    source: str  # "catalog", "event-log", "fleet-file", "trace-table" or "fallback"


def resolve_models(
    model_ids: Iterable[str],
    spec: FleetSpec,
    known: Mapping[str, CatalogEntry] | None = None,
) -> tuple[ResolvedModel, ...]:
    """A catalog entry for each model, by id; the fleet file wins, then ``known``, then tables.

    ``known`` is a catalog read from an event log. ServeGen's replay names
    (``servegen-m-large``) resolve like the bare names (``m-large``).
    """
    catalog = {e.id: e for e in DEFAULT_CATALOG}
    out: list[ResolvedModel] = []
    for mid in sorted(set(model_ids)):
        bare = mid.removeprefix("servegen-")
        if (size := spec.models.get(mid)) is not None:
            source = "fleet-file"
        elif known is not None and mid in known:
            out.append(ResolvedModel(entry=known[mid], like=mid, source="event-log"))
            continue
        elif mid in catalog:
            out.append(ResolvedModel(entry=catalog[mid], like=mid, source="catalog"))
            continue
        elif (size := TRACE_MODEL_SIZES.get(bare)) is not None:
            source = "trace-table"
        else:
            size, source = FALLBACK_SIZE, "fallback"
        entry = CatalogEntry(id=mid, vram_mb=size.vram_mb, disk_mb=size.disk_mb)
        out.append(ResolvedModel(entry=entry, like=size.like, source=source))
    return tuple(out)


def resolve_nodes(spec: FleetSpec) -> tuple[SimNode, ...]:
    """Every node of the fleet with its defaults filled in, sorted by node id.

    Raises ``ValueError`` on duplicate node ids.
    """
    d = spec.defaults
    nodes: dict[str, SimNode] = {}
    for n in spec.nodes:
        ids = [n.id] if n.count == 1 else [f"{n.id}-{i}" for i in range(1, n.count + 1)]
        profile = SimProfile(
            ttft_ms=_pick(n.ttft_ms, d.ttft_ms),
            tokens_per_s=_pick(n.tokens_per_s, d.tokens_per_s),
            load_s_per_gb=_pick(n.load_s_per_gb, d.load_s_per_gb),
            download_mb_per_s=_pick(n.download_mb_per_s, d.download_mb_per_s),
        )
        for node_id in ids:
            if node_id in nodes:
                raise ValueError(f"fleet: node id {node_id!r} appears twice")
            nodes[node_id] = SimNode(
                node_id=node_id,
                vram_budget_mb=n.vram_budget_mb,
                vram_total_mb=max(n.vram_total_mb, n.vram_budget_mb),
                disk_budget_mb=n.disk_budget_mb
                if n.disk_budget_mb is not None
                else d.disk_budget_mb,
                region=n.region,
                trust_class=n.trust_class,
                models_on_disk=tuple(sorted(set(n.models_on_disk))),
                slots=_pick(n.slots, d.slots),
                prefill_tokens_per_s=_pick(n.prefill_tokens_per_s, d.prefill_tokens_per_s),
                profile=profile,
            )
    if not nodes:
        raise ValueError("fleet: no nodes")
    return tuple(nodes[k] for k in sorted(nodes))


def _pick(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def load_fleet(path: Path) -> FleetSpec:
    """Decode a fleet file; ``ValueError`` names the file and the problem."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=FleetSpec)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"{path}: not a fleet file: {exc}") from exc


#: The fleet ``porten sim replay`` uses without ``--fleet``; the same as
#: ``simulations/fleets/homelab.json`` (a test keeps them equal). Its batching engines run
#: 32 streams at 50 tok/s each (~1,600 tok/s a node; the Mac half that).
DEFAULT_FLEET: Final = FleetSpec(
    name="homelab",
    description="The built-in default fleet, as a file to copy: two 24 GB GPUs, one 48 GB GPU "
    "and one 96 GB Mac (184 GiB in all; the Mac runs half as fast per stream). Every shipped "
    "trace's models fit at once, even all three traces together.",
    defaults=NodeDefaults(slots=32, tokens_per_s=50.0, load_s_per_gb=2.0, download_mb_per_s=125.0),
    nodes=(
        NodeSpec(id="gpu24", count=2, vram_budget_mb=24_576),
        NodeSpec(id="gpu48", vram_budget_mb=49_152),
        NodeSpec(id="mac96", vram_budget_mb=90_112, vram_total_mb=98_304, tokens_per_s=25.0),
    ),
)
