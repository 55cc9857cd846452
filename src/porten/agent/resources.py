"""How much model memory this machine has: NVIDIA GPUs, Apple unified memory, or none.

The hub places models by the VRAM budget a node reports, so the agent
measures it once at start: ``nvidia-smi`` when it is on ``PATH`` (every
GPU's total, summed — llama.cpp splits a model across cards), the unified
memory of an Apple Silicon Mac (``sysctl hw.memsize``), or nothing. The
budget the hub may fill is a share of that — 90 % of NVIDIA memory (CUDA
contexts and the desktop need the rest), the Metal working-set share of
unified memory (about 2/3 up to 36 GB, 3/4 above), and on a machine with
no GPU half of the RAM, where the builtin engine runs models on the CPU.
``PORTEN_VRAM_BUDGET_MB`` overrides the budget whatever was detected.

Commands are run through ``run`` so a test can put a stand-in ``nvidia-smi``
on ``PATH``; nothing here is cached, callers keep the result.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import Final, Literal

import attrs

MIB: Final = 1024 * 1024
#: Seconds a probe command may take (a wedged driver must not hang the agent's start).
PROBE_TIMEOUT_S: Final = 10.0
NVIDIA_SHARE: Final = 0.9
CPU_SHARE: Final = 0.5

Accelerator = Literal["nvidia", "apple", "none"]
Run = Callable[[Sequence[str]], str]


@attrs.frozen
class Resources:
    """What the agent found: the kind of accelerator, its memory and the default budget."""

    accelerator: Accelerator
    #: Memory the accelerator has (0 with none: the CPU's RAM is not VRAM).
    vram_total_mb: int
    #: What the hub may fill unless ``PORTEN_VRAM_BUDGET_MB`` says otherwise.
    default_budget_mb: int
    #: A line for the owner: what was found, and how.
    detail: str

    def budget_mb(self, override_mb: int = 0) -> int:
        """The budget to report: ``override_mb`` when set (non-zero), else the default."""
        return override_mb or self.default_budget_mb


def run_command(argv: Sequence[str]) -> str:
    """Run ``argv`` and return its stdout; ``OSError``/``CalledProcessError`` on failure."""
    done = subprocess.run(  # noqa: S603 (argv is fixed by this module, never user input)
        list(argv), capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=True
    )
    return done.stdout


def parse_nvidia_smi(output: str) -> list[int]:
    """MiB per GPU from ``nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits``."""
    sizes: list[int] = []
    for line in output.splitlines():
        field = line.split(",")[0].strip()
        if field:
            sizes.append(int(float(field)))
    return sizes


def apple_working_set_mb(memsize_bytes: int) -> int:
    """Metal's default working-set share of unified memory: 2/3 up to 36 GB, 3/4 above."""
    total_mb = memsize_bytes // MIB
    share = 0.75 if total_mb > 36 * 1024 else 2 / 3
    return int(total_mb * share)


def physical_ram_mb() -> int:
    """The machine's RAM in MiB (0 where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB
    except (ValueError, OSError, AttributeError):
        return 0


def detect(
    *,
    run: Run = run_command,
    which: Callable[[str], str | None] = shutil.which,
    system: str | None = None,
    machine: str | None = None,
    ram_mb: int | None = None,
) -> Resources:
    """Probe NVIDIA first, then Apple Silicon, else report no accelerator."""
    system = platform.system() if system is None else system
    machine = platform.machine() if machine is None else machine
    ram = physical_ram_mb() if ram_mb is None else ram_mb
    smi = which("nvidia-smi")
    why_not = "nvidia-smi is not on PATH"
    if smi is not None:
        query = [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
        try:
            sizes = parse_nvidia_smi(run(query))
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            why_not = f"nvidia-smi failed ({exc})"
        else:
            if sizes:
                total = sum(sizes)
                return Resources(
                    "nvidia", total, int(total * NVIDIA_SHARE),
                    f"{len(sizes)} NVIDIA GPU(s), {total} MiB (nvidia-smi)",
                )
            why_not = "nvidia-smi lists no GPU"
    if system == "Darwin" and machine == "arm64":
        try:
            memsize = int(run(["sysctl", "-n", "hw.memsize"]).strip())
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            why_not = f"sysctl hw.memsize failed ({exc})"
        else:
            total = memsize // MIB
            return Resources(
                "apple", total, apple_working_set_mb(memsize),
                f"Apple Silicon, {total} MiB of unified memory",
            )
    return Resources(
        "none", 0, int(ram * CPU_SHARE),
        f"no GPU found ({why_not}); models run on the CPU in {ram} MiB of RAM",
    )
