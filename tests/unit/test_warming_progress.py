"""Warm-up progress as the public endpoint reports it: one bar across both phases."""

from __future__ import annotations

import pytest

from porten.adapters.http.public import DOWNLOAD_SHARE, overall_pct, warming_status
from porten.domain import events as ev
from porten.scheduler.testing import FleetBuilder

MIB = 1 << 20


@pytest.fixture
def b() -> FleetBuilder:
    """A node loading a 4000 MiB model."""
    return FleetBuilder().model("m", vram_mb=5_000, disk_mb=4_000).node("n1")


def progress(b: FleetBuilder, load_id: str, phase: str, done_mb: int, total_mb: int) -> int:
    b.emit(ev.LoadProgressed, node_id="n1", model_id="m", load_id=load_id, phase=phase,
           done_bytes=done_mb * MIB, total_bytes=total_mb * MIB)
    return warming_status(b.state, "m").pct


def test_pct_never_goes_back_when_the_download_turns_into_loading(b: FleetBuilder) -> None:
    """Downloading fills 0-90 by bytes; loading starts at 90, not 0, and stays below 100."""
    load = b.pending("n1", "m")
    assert warming_status(b.state, "m").pct == 0
    seen = [progress(b, load, "downloading", mb, 4_000) for mb in (0, 1_000, 2_000, 4_000)]
    seen += [progress(b, load, "loading", mb, 5_000) for mb in (0, 2_500, 5_000)]
    assert seen == [0, 22, 45, 90, 90, 94, 99]
    b.emit(ev.ModelLoaded, node_id="n1", model_id="m", load_id=load)
    assert warming_status(b.state, "m").pct == 100


def test_a_load_from_disk_starts_at_the_loading_share(b: FleetBuilder) -> None:
    """No download: the bar jumps to the loading share and creeps from there."""
    load = b.pending("n1", "m")
    assert progress(b, load, "loading", 0, 5_000) == DOWNLOAD_SHARE


def test_the_most_advanced_of_several_loads_is_shown(b: FleetBuilder) -> None:
    """Two nodes loading the model: the one further along is reported."""
    b.node("n2")
    first = b.pending("n1", "m")
    progress(b, first, "downloading", 3_000, 4_000)
    second = b.pending("n2", "m")
    b.emit(ev.LoadProgressed, node_id="n2", model_id="m", load_id=second, phase="downloading",
           done_bytes=100 * MIB, total_bytes=4_000 * MIB)
    status = warming_status(b.state, "m")
    assert (status.phase, status.done_mb, status.pct) == ("downloading", 3_000, 67)


def test_overall_pct_is_monotone_in_phase_then_bytes() -> None:
    """Any step forward — more bytes, or the next phase — never lowers the percent."""
    done = [*range(0, 100, 7), 100]
    steps = [("requested", 0, 1)] + [("downloading", d, 100) for d in done]
    steps += [("loading", d, 100) for d in done]
    pcts = [overall_pct(phase, done, total) for phase, done, total in steps]
    assert pcts == sorted(pcts)
    assert max(pcts) == 99
