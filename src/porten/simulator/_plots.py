"""Plots of a replay, written only where matplotlib is installed (it is not a dependency).

Three PNGs, each with one line per policy: cold starts per minute over the
trace, the CDF of request waits (log-scaled: most waits are ~0 and the tail
is what differs), and claimed VRAM as a share of the fleet's budget.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from porten.simulator._replay import Replay


def available() -> bool:
    """Whether matplotlib can be imported here."""
    return importlib.util.find_spec("matplotlib") is not None


def write_plots(result: Replay, out_dir: Path) -> list[Path]:
    """Write the plots under ``out_dir``; return their paths ([] without matplotlib)."""
    if not available():
        return []
    # Imported by name: matplotlib is optional and has no stubs here.
    importlib.import_module("matplotlib").use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    out_dir.mkdir(parents=True, exist_ok=True)
    report = result.report
    title = f"{report.trace.name} on {report.fleet.name or 'fleet'}"
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / name
        fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(9, 3.5))
    for p in report.policies:
        minutes = [i * p.timeline.bucket_s / 60.0 for i in range(len(p.timeline.cold_starts))]
        ax.step(minutes, p.timeline.cold_starts, where="post", label=p.policy)
    ax.set(
        xlabel="minutes from the first request",
        ylabel="cold starts per bucket",
        title=f"Cold starts over time: {title}",
    )
    ax.legend()
    save(fig, "cold_starts.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, sim in result.runs.items():
        waits = sorted(max(w, 1e-3) for w in sim.metrics.waits)
        if waits:  # at most ~2,000 points: the curve looks the same, the file stays small
            step = max(1, len(waits) // 2000)
            idx = [*range(0, len(waits), step), len(waits) - 1]
            ax.step(
                [waits[i] for i in idx],
                [(i + 1) / len(waits) for i in idx],
                where="post",
                label=name,
            )
    ax.set_xscale("log")
    ax.set(
        xlabel="wait before a slot, s (queue + load; 1 ms floor)",
        ylabel="share of requests",
        title=f"Wait CDF: {title}",
    )
    ax.legend()
    save(fig, "wait_cdf.png")

    fig, ax = plt.subplots(figsize=(9, 3.5))
    for p in report.policies:
        minutes = [i * p.timeline.bucket_s / 60.0 for i in range(len(p.timeline.vram_utilisation))]
        ax.step(
            minutes, [100.0 * v for v in p.timeline.vram_utilisation], where="post", label=p.policy
        )
    ax.set(
        xlabel="minutes from the first request",
        ylabel="VRAM claimed, % of budget",
        title=f"VRAM utilisation: {title}",
        ylim=(0, 105),
    )
    ax.legend()
    save(fig, "vram_utilisation.png")
    return written
