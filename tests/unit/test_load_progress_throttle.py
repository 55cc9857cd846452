"""Which load-progress observations become events: few per second, every phase change, the end."""

from __future__ import annotations

from porten.adapters.agent_gateway._observe import ProgressThrottle
from porten.agent.engines.base import LoadPhase
from porten.protocol import AgentLoadProgress

TOTAL = 1_000_000


def progress(
    done: int, *, phase: LoadPhase = "downloading", load_id: str = "l1"
) -> AgentLoadProgress:
    """A progress report of ``done`` bytes out of ``TOTAL``."""
    return AgentLoadProgress(
        load_id=load_id, model_id="m", phase=phase, done_bytes=done, total_bytes=TOTAL
    )


def test_the_first_report_and_each_phase_change_pass() -> None:
    """A load's first report, and its first report in a new phase, are always recorded."""
    throttle = ProgressThrottle()
    assert throttle.admit(progress(0), now=0.0)
    assert throttle.admit(progress(0, phase="loading"), now=0.001)


def test_reports_pass_at_most_every_quarter_second_and_percent() -> None:
    """Between phase changes a report needs 250 ms and 1 % of the total since the last one."""
    throttle = ProgressThrottle()
    assert throttle.admit(progress(0), now=0.0)
    assert not throttle.admit(progress(500_000), now=0.1)  # too soon
    assert not throttle.admit(progress(5_000), now=1.0)  # too little
    assert throttle.admit(progress(20_000), now=1.0)
    assert not throttle.admit(progress(900_000), now=1.2)
    assert throttle.admit(progress(900_000), now=1.25)


def test_a_flood_is_bounded_and_the_end_always_passes() -> None:
    """A report per kilobyte over one second gives a handful of events, the last one included."""
    throttle = ProgressThrottle()
    steps = 1000
    passed = [throttle.admit(progress(TOTAL * i // steps), now=i / steps) for i in range(steps + 1)]
    assert passed[0]
    assert passed[-1]
    assert sum(passed) <= 1 + 4 + 1


def test_loads_are_throttled_independently_and_forgotten() -> None:
    """Each load has its own budget; a finished load's state is dropped."""
    throttle = ProgressThrottle()
    assert throttle.admit(progress(0, load_id="a"), now=0.0)
    assert throttle.admit(progress(0, load_id="b"), now=0.0)
    throttle.forget("a")
    assert throttle.admit(progress(10, load_id="a"), now=0.01)
    assert not throttle.admit(progress(10, load_id="b"), now=0.01)
