"""Request traces: the replay CSV, a ``porten events export`` log, and cuts of either.

A trace is held as columns (``array`` of doubles and ints), not as a list of
row objects: a day of trace is around a million rows, and columns keep that
at ~20 MB and make slicing and time-scaling one pass each. Times are seconds
from the trace's first request; ``epoch`` is the wall-clock time that zero
stands for (a fixed date for CSV traces, the log's own time for an export),
so the events the simulator writes look like a real log.
"""

from __future__ import annotations

import csv
import hashlib
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import msgspec

from porten.domain import events as ev
from porten.domain.codec import decode_event
from porten.domain.fold import fold
from porten.domain.state import FleetState
from porten.domain.values import CatalogEntry

#: 2026-01-01T00:00:00Z: the simulated wall clock at a CSV trace's first request.
CSV_EPOCH: Final = 1_767_225_600.0
_HEADER: Final = ("ts_ms", "model", "prompt_tokens", "completion_tokens")


class Trace:
    """Requests sorted by time: ``t[i]`` seconds, ``model[i]`` an index into ``models``."""

    __slots__ = ("completion", "epoch", "model", "models", "name", "prompt", "t")

    def __init__(
        self,
        name: str,
        models: Sequence[str],
        *,
        t: array[float],
        model: array[int],
        prompt: array[int],
        completion: array[int],
        epoch: float = CSV_EPOCH,
    ) -> None:
        self.name = name
        self.models = tuple(models)
        self.t, self.model, self.prompt, self.completion = t, model, prompt, completion
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.t)

    @property
    def span_s(self) -> float:
        """Seconds from the first request to the last."""
        return self.t[-1] - self.t[0] if len(self.t) else 0.0


class _Columns:
    """Rows accumulated during a read, then sorted by time (stable) into a :class:`Trace`."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.t: array[float] = array("d")
        self.model: array[int] = array("i")
        self.prompt: array[int] = array("q")
        self.completion: array[int] = array("q")

    def add(self, t: float, model_id: str, prompt: int, completion: int) -> None:
        idx = self.index.setdefault(model_id, len(self.index))
        self.t.append(t)
        self.model.append(idx)
        self.prompt.append(prompt)
        self.completion.append(completion)

    def trace(self, name: str, epoch: float) -> Trace:
        # Model indices are renumbered in sorted-id order so the same rows give the same trace.
        names = sorted(self.index)
        renumber = array("i", [0] * len(names))
        for new, mid in enumerate(names):
            renumber[self.index[mid]] = new
        t, model = self.t, array("i", (renumber[m] for m in self.model))
        prompt, completion = self.prompt, self.completion
        if any(t[i] > t[i + 1] for i in range(len(t) - 1)):
            order = sorted(range(len(t)), key=t.__getitem__)
            t = array("d", (t[i] for i in order))
            model = array("i", (model[i] for i in order))
            prompt = array("q", (prompt[i] for i in order))
            completion = array("q", (completion[i] for i in order))
        base = t[0] if len(t) else 0.0
        if base:
            t = array("d", (x - base for x in t))
        return Trace(
            name, names, t=t, model=model, prompt=prompt, completion=completion, epoch=epoch + base
        )


def from_rows(rows: Iterable[tuple[float, str, int, int]], name: str = "rows") -> Trace:
    """A trace from ``(seconds, model, prompt_tokens, completion_tokens)`` rows, in any order."""
    cols = _Columns()
    for t, model, p, c in rows:
        cols.add(float(t), model, int(p), int(c))
    return cols.trace(name, CSV_EPOCH)


def read_replay_csv(path: Path) -> Trace:
    """Read ``ts_ms,model,prompt_tokens,completion_tokens``; ``ValueError`` names the bad row."""
    cols = _Columns()
    with path.open(newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or tuple(h.strip() for h in header) != _HEADER:
            raise ValueError(f"{path}: expected the header {','.join(_HEADER)}, got {header}")
        for line, row in enumerate(rows, start=2):
            try:
                ts, model, p, c = row
                cols.add(int(ts) / 1000.0, model, int(p), int(c))
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: not a replay row {row}: {exc}") from exc
    return cols.trace(path.name, CSV_EPOCH)


class _ExportLine(msgspec.Struct):
    position: int
    event: msgspec.Raw


#: Event types that describe the fleet and the catalog (what a replay starts from).
_FLEET_EVENTS: Final = (
    ev.ModelOffered,
    ev.ModelUpdated,
    ev.ModelWithdrawn,
    ev.NodeEnrolled,
    ev.NodeRemoved,
    ev.NodeCapabilitiesReported,
    ev.NodeRegionSet,
    ev.NodeTrustClassSet,
)


class EventLog(msgspec.Struct, frozen=True, kw_only=True):
    """What an exported log contributes: its fleet and catalog (folded), requests apart."""

    fleet: FleetState
    catalog: dict[str, CatalogEntry]


def read_event_log(path: Path) -> tuple[Trace, EventLog]:
    """The ``request_served`` events of an export as a trace, and the log's fleet.

    A request's arrival is taken as ``at - duration_ms / 1000`` (``at`` is
    when the hub recorded it as served). Only fleet and catalog events are
    folded for the fleet: the replay starts cold, with nothing loaded.
    """
    cols = _Columns()
    fleet_events: list[ev.AnyEvent] = []
    decoder = msgspec.json.Decoder(_ExportLine)
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise ValueError(f"{path}: not an event export line: {exc}") from exc
            event = decode_event(bytes(rec.event), position=rec.position)
            if isinstance(event, ev.RequestServed):
                arrival = event.at - event.duration_ms / 1000.0
                cols.add(arrival, event.model_id, event.prompt_tokens, event.completion_tokens)
            elif isinstance(event, _FLEET_EVENTS):
                fleet_events.append(event)
    state = fold(fleet_events)
    catalog = {mid: c.entry for mid, c in sorted(state.catalog.items())}
    trace = cols.trace(path.name, 0.0)
    return trace, EventLog(fleet=state, catalog=catalog)


def read_trace(path: Path) -> tuple[Trace, EventLog | None]:
    """A replay CSV, or an event export (``.jsonl``/``.ndjson``) with its fleet."""
    if path.suffix in (".jsonl", ".ndjson", ".json"):
        return read_event_log(path)
    return read_replay_csv(path), None


def merge(traces: Iterable[Trace]) -> Trace:
    """Several traces as one, each aligned at its own first request (a fleet shared by all)."""
    parts = list(traces)
    if len(parts) == 1:
        return parts[0]
    cols = _Columns()
    for tr in parts:
        for i in range(len(tr)):
            cols.add(tr.t[i], tr.models[tr.model[i]], tr.prompt[i], tr.completion[i])
    return cols.trace("+".join(tr.name for tr in parts), parts[0].epoch)


def cut(
    trace: Trace, start_s: float = 0.0, duration_s: float | None = None, speedup: float = 1.0
) -> Trace:
    """Requests in ``[start_s, start_s + duration_s)``, shifted to start at 0, time / ``speedup``.

    ``speedup`` > 1 compresses the time axis: the same requests arrive that
    many times faster, a standard way to scale a trace's load.
    """
    if speedup <= 0:
        raise ValueError("speedup must be positive")
    end = float("inf") if duration_s is None else start_s + duration_s
    keep = [i for i in range(len(trace)) if start_s <= trace.t[i] < end]
    if start_s == 0.0 and len(keep) == len(trace) and speedup == 1.0:
        return trace
    return Trace(
        trace.name,
        trace.models,
        t=array("d", ((trace.t[i] - start_s) / speedup for i in keep)),
        model=array("i", (trace.model[i] for i in keep)),
        prompt=array("q", (trace.prompt[i] for i in keep)),
        completion=array("q", (trace.completion[i] for i in keep)),
        epoch=trace.epoch + start_s,
    )


def fingerprint(trace: Trace) -> str:
    """A short hash of the rows, so a report says exactly which requests it replayed."""
    h = hashlib.blake2b(digest_size=12)
    h.update("\x00".join(trace.models).encode())
    for col in (trace.t, trace.model, trace.prompt, trace.completion):
        h.update(col.tobytes())
    return h.hexdigest()
