"""VRAM detection: nvidia-smi, Apple unified memory, or none — and the budget override."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from stand_ins import executable

from porten.agent.resources import (
    apple_working_set_mb,
    detect,
    parse_nvidia_smi,
    run_command,
)

GIB = 1024**3


def no_command(argv: Sequence[str]) -> str:
    raise AssertionError(f"nothing should run: {argv}")


def test_nvidia_smi_output_is_summed_over_gpus() -> None:
    """One line per GPU in MiB; blank lines ignored."""
    assert parse_nvidia_smi("24576\n 8192 \n\n") == [24576, 8192]


def test_a_real_nvidia_smi_on_path_is_run_and_read(tmp_path: Path) -> None:
    """The probe runs the nvidia-smi found on PATH with the CSV query, and budgets 90 %."""
    smi = executable(tmp_path / "nvidia-smi", 'echo "$@" > "$0.args"\nprintf "24576\\n24576\\n"\n')
    found = detect(which=lambda name: str(smi) if name == "nvidia-smi" else None)
    assert (found.accelerator, found.vram_total_mb, found.default_budget_mb) == (
        "nvidia", 49152, 44236,
    )
    assert found.detail == "2 NVIDIA GPU(s), 49152 MiB (nvidia-smi)"
    args = (tmp_path / "nvidia-smi.args").read_text().split()
    assert args == ["--query-gpu=memory.total", "--format=csv,noheader,nounits"]


def test_a_failing_nvidia_smi_falls_back_to_the_cpu(tmp_path: Path) -> None:
    """A driver that errors is reported as such; the node runs on the CPU with half its RAM."""
    smi = executable(tmp_path / "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    found = detect(
        which=lambda name: str(smi) if name == "nvidia-smi" else None,
        system="Linux", machine="x86_64", ram_mb=16000,
    )
    assert (found.accelerator, found.vram_total_mb, found.default_budget_mb) == ("none", 0, 8000)
    assert found.detail.startswith("no GPU found (nvidia-smi failed (Command ")
    assert found.detail.endswith("; models run on the CPU in 16000 MiB of RAM")


def test_apple_silicon_reports_unified_memory() -> None:
    """On an arm64 Mac the unified memory is the VRAM, with Metal's working-set share."""

    def sysctl(argv: Sequence[str]) -> str:
        assert list(argv) == ["sysctl", "-n", "hw.memsize"]
        return f"{64 * GIB}\n"

    found = detect(run=sysctl, which=lambda _: None, system="Darwin", machine="arm64")
    assert (found.accelerator, found.vram_total_mb, found.default_budget_mb) == (
        "apple", 65536, 49152,
    )
    assert apple_working_set_mb(16 * GIB) == 10922  # 2/3 on smaller machines


def test_no_accelerator_budgets_half_the_ram() -> None:
    """An Intel Mac or a plain Linux box: no VRAM, CPU inference in half the RAM."""
    found = detect(run=no_command, which=lambda _: None, system="Darwin", machine="x86_64",
                   ram_mb=32000)
    assert (found.accelerator, found.vram_total_mb, found.default_budget_mb) == ("none", 0, 16000)
    assert found.detail == (
        "no GPU found (nvidia-smi is not on PATH); models run on the CPU in 32000 MiB of RAM"
    )


@pytest.mark.parametrize(("override", "expected"), [(0, 16000), (70000, 70000)])
def test_the_budget_override_wins(override: int, expected: int) -> None:
    """PORTEN_VRAM_BUDGET_MB replaces the detected budget (a cluster behind one endpoint)."""
    found = detect(run=no_command, which=lambda _: None, system="Linux", machine="x86_64",
                   ram_mb=32000)
    assert found.budget_mb(override) == expected


def test_run_command_raises_for_a_failing_command(tmp_path: Path) -> None:
    """A probe that exits non-zero is an error, not empty output."""
    failing = executable(tmp_path / "fails", "exit 3\n")
    with pytest.raises(subprocess.CalledProcessError):
        run_command([str(failing)])
