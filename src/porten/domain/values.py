"""Small value types shared by events and state.

They are frozen msgspec Structs (or Literals) so they encode the same way
inside events, snapshots and agent messages.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

TrustClass = Literal["community", "verified", "trusted", "confidential"]
#: Trust classes in increasing order; a key's minimum class admits every class at or after it.
TRUST_ORDER: Final[tuple[TrustClass, ...]] = ("community", "verified", "trusted", "confidential")

Capability = Literal["chat", "tools", "json", "vision", "reasoning", "embeddings"]
ModelType = Literal["chat", "embedding"]
EngineKind = str  # "builtin", "sim", "ollama", "openai" or a plugin's name
LoadPhase = Literal["requested", "downloading", "loading", "ready"]
UnloadReason = Literal["idle", "evicted", "operator", "node_lost", "engine_exited", "failed"]
Fleet = Literal["all", "own"]
#: An account's role: operators may use the admin API and CLI.
Role = Literal["user", "operator"]


def trust_rank(trust: TrustClass) -> int:
    """Position of ``trust`` in :data:`TRUST_ORDER` (community is 0)."""
    return TRUST_ORDER.index(trust)


class CatalogEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One model an operator can offer: what it can do and what it costs to hold.

    ``vram_mb`` is the resident footprint (weights plus a typical KV cache);
    ``disk_mb`` the size of its weights on disk. Prices are per million tokens.
    """

    id: str
    type: ModelType = "chat"
    ctx: int = 8192
    capabilities: frozenset[Capability] = frozenset({"chat"})
    vram_mb: int
    disk_mb: int
    download_ref: str = ""
    sha256: str = ""
    engine_hints: dict[str, str] = {}
    embedding_dim: int = 0
    price_in_per_m: float = 0.0
    price_out_per_m: float = 0.0


class KeyPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Where and how much a key may run; enforced together at routing time.

    Empty ``regions``/``models`` mean "any". ``None`` limits mean "unlimited".
    """

    regions: frozenset[str] = frozenset()
    min_trust: TrustClass = "community"
    fleet: Fleet = "all"
    models: frozenset[str] = frozenset()
    requests_per_min: int | None = None
    tokens_per_min: int | None = None
    budget_usd: float | None = None
