"""``porten events …``: the operator's view of the history, and its export for research.

``list`` and ``export`` print JSON Lines; ``export`` writes the exact records
``import`` (and ``porten sim replay``) reads back. ``state --at`` folds the
log up to a position or a time, so "what did the fleet look like when that
request failed" has an answer.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import msgspec

from porten.adapters.postgres.event_store import PostgresEventStore
from porten.bootstrap import open_event_store
from porten.cli._common import (
    CommandError,
    data_options,
    json_option,
    print_json,
    print_jsonl,
    run,
    settings_from,
)
from porten.domain.codec import decode_event
from porten.domain.events import LoadFailed, LoadRequested, ModelLoaded, ModelUnloaded
from porten.domain.ports import RecordedEvent
from porten.domain.state import FleetState, vram_used_mb
from porten.services.projection import state_at

PAGE = 5_000


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``events`` and its subcommands."""
    events = sub.add_parser("events", help="read, export and import the event log")
    esub = events.add_subparsers(dest="events_command", required=True, metavar="COMMAND")
    parents = [data_options(), json_option()]

    tail = esub.add_parser("tail", parents=parents, help="follow new events as they are appended")
    tail.add_argument("--from", dest="after", type=int, metavar="POSITION",
                      help="start after this position (default: the current head)")
    tail.set_defaults(func=cmd_tail)

    lst = esub.add_parser("list", parents=parents, help="print events as JSON Lines")
    lst.add_argument("--stream", action="append", help="only this stream (repeatable)")
    lst.add_argument("--type", action="append", dest="types",
                     help="only this event type, or a family prefix like node_ (repeatable)")
    lst.add_argument("--since", type=parse_time, help="events at or after TIME")
    lst.add_argument("--until", type=parse_time, help="events before TIME")
    lst.add_argument("--after", type=int, default=0, metavar="POSITION",
                     help="only events after this position")
    lst.add_argument("--limit", type=int, help="at most this many events")
    lst.add_argument("--raw", action="store_true",
                     help="print stored rows without decoding (to inspect a corrupt log)")
    lst.set_defaults(func=cmd_list)

    state = esub.add_parser("state", parents=parents, help="the fleet state at a point in history")
    state.add_argument("--at", type=parse_at, metavar="POSITION|TIME",
                       help="a position (integer) or a time (ISO 8601, or @UNIX_SECONDS); "
                            "default: now")
    state.set_defaults(func=cmd_state)

    export = esub.add_parser("export", parents=parents, help="write the log as replayable JSONL")
    export.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    export.set_defaults(func=cmd_export)

    explain = esub.add_parser("explain", parents=parents,
                              help="why each load and unload happened, from the log's reasons")
    target = explain.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="every load/unload of this model")
    target.add_argument("--node", help="every load/unload on this node")
    explain.add_argument("--since", type=parse_time, help="only from TIME on")
    explain.set_defaults(func=cmd_explain)

    imp = esub.add_parser("import", parents=parents, help="append the events of an export file")
    imp.add_argument("file", type=Path, help="a file written by `porten events export`")
    imp.set_defaults(func=cmd_import)


# --- argument types -----------------------------------------------------------------


def parse_time(text: str) -> float:
    """Unix seconds from ISO 8601 (``2026-11-21T10:00:00Z``) or ``@1763719200``."""
    if text.startswith("@"):
        try:
            return float(text[1:])
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not @UNIX_SECONDS") from None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time; use ISO 8601 like 2026-11-21T10:00:00Z or @UNIX_SECONDS"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def parse_at(text: str) -> tuple[str, float]:
    """``("position", n)`` for an integer, ``("time", t)`` for a time."""
    if text.isdigit():
        return ("position", int(text))
    return ("time", parse_time(text))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _human(r: RecordedEvent) -> str:
    fields = msgspec.to_builtins(r.event)
    kind = fields.pop("type")
    at = fields.pop("at")
    actor = fields.pop("actor")
    fields.pop("correlation_id", None)
    detail = " ".join(f"{k}={v}" for k, v in fields.items() if v not in ("", [], {}, None))
    return f"{r.position:>8}  {_iso(at)}  {r.stream:<24} {kind:<28} {actor:<16} {detail}"


# --- commands ----------------------------------------------------------------------------


def cmd_tail(args: argparse.Namespace) -> int:
    """Print events as they are appended until interrupted."""
    settings = settings_from(args)

    async def go() -> None:
        async with open_event_store(settings) as store:
            after = args.after if args.after is not None else await store.head()
            while True:
                batch = await store.read(after=after, limit=PAGE)
                for r in batch:
                    if args.json:
                        print_jsonl([r])
                    else:
                        sys.stdout.write(_human(r) + "\n")
                        sys.stdout.flush()
                if batch:
                    after = batch[-1].position
                else:
                    await store.wait_for_append(after, timeout=30.0)

    with contextlib.suppress(KeyboardInterrupt):
        run(go())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print matching events (JSON Lines) in position order."""
    settings = settings_from(args)

    async def go() -> None:
        async with open_event_store(settings) as store:
            async for item in _pages(store, args):
                print_jsonl([item])

    run(go())
    return 0


async def _pages(store: PostgresEventStore, args: argparse.Namespace) -> AsyncIterator[Any]:
    after, left = args.after, args.limit
    while left is None or left > 0:
        page = PAGE if left is None else min(PAGE, left)
        if args.raw:
            rows = await store.read_raw(after=after, limit=page)
            if not rows:
                return
            for pos, stream, version, type_, recorded_at, data in rows:
                yield {"position": pos, "stream": stream, "version": version, "type": type_,
                       "recorded_at": recorded_at, "data": data.decode(errors="replace")}
            after = rows[-1][0]
            n = len(rows)
        else:
            batch = await store.read_filtered(
                after=after, limit=page, streams=args.stream, types=args.types,
                since=args.since, until=args.until,
            )
            if not batch:
                return
            for r in batch:
                yield r
            after = batch[-1].position
            n = len(batch)
        if left is not None:
            left -= n


def cmd_state(args: argparse.Namespace) -> int:
    """Fold the log up to ``--at`` and print the fleet as it was."""
    settings = settings_from(args)

    async def go() -> FleetState:
        async with open_event_store(settings) as store:
            if args.at is None:
                return await state_at(store)
            kind, value = args.at
            if kind == "position":
                return await state_at(store, position=int(value))
            return await state_at(store, at=value)

    state = run(go())
    if args.json:
        print_json(state)
    else:
        sys.stdout.write(_summary(state))
    return 0


def _summary(state: FleetState) -> str:
    lines = [f"events folded: {state.events_folded}"]
    offered = sorted(m for m, c in state.catalog.items() if c.offered)
    lines.append(f"models offered ({len(offered)}): {', '.join(offered) or '-'}")
    lines.append(f"nodes ({len(state.nodes)}):")
    for n in sorted(state.nodes.values(), key=lambda n: n.node_id):
        placed = ", ".join(f"{m}[{p.phase}]" for m, p in sorted(n.placements.items())) or "-"
        lines.append(
            f"  {n.node_id}  {'online ' if n.online else 'offline'}  region={n.region or '-'}  "
            f"trust={n.trust_class}  vram={vram_used_mb(state, n)}/{n.vram_budget_mb} MB  {placed}"
        )
    active = sum(1 for k in state.keys.values() if k.active)
    lines.append(f"keys: {active} active, {len(state.keys) - active} revoked")
    return "\n".join(lines) + "\n"


_PLACEMENT_TYPES = ["load_requested", "model_loaded", "load_failed", "model_unloaded"]


def _why(e: Any) -> str:
    match e:
        case LoadRequested():
            return f"load requested: {e.reason}"
        case ModelLoaded():
            return "loaded and serving"
        case LoadFailed():
            return f"load failed: {e.error}"
        case ModelUnloaded():
            why = f"unloaded ({e.reason})"
            if e.evicted_for:
                why += f" to make room for {e.evicted_for}"
            return why + (f": {e.detail}" if e.detail else "")
    return ""


def cmd_explain(args: argparse.Namespace) -> int:
    """Print the placement history of a model or a node with the reasons recorded."""
    settings = settings_from(args)

    async def go() -> list[RecordedEvent]:
        found: list[RecordedEvent] = []
        async with open_event_store(settings) as store:
            after = 0
            streams = [f"node-{args.node}"] if args.node else None
            while batch := await store.read_filtered(
                after=after, limit=PAGE, streams=streams, types=_PLACEMENT_TYPES,
                since=args.since,
            ):
                found += [r for r in batch
                          if args.model is None or getattr(r.event, "model_id", "") == args.model]
                after = batch[-1].position
        return found

    records = run(go())
    if args.json:
        print_jsonl({"position": r.position, "at": r.event.at, "actor": r.event.actor,
                     "node_id": getattr(r.event, "node_id", ""),
                     "model_id": getattr(r.event, "model_id", ""), "why": _why(r.event)}
                    for r in records)
        return 0
    for r in records:
        e = r.event
        sys.stdout.write(
            f"{_iso(e.at)}  {getattr(e, 'node_id', ''):<16} {getattr(e, 'model_id', ''):<30} "
            f"{_why(e)}  [{e.actor}]\n"
        )
    if not records:
        sys.stderr.write("no loads or unloads recorded for that\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write every event as a replayable JSON Lines record."""
    settings = settings_from(args)

    async def go(out: IO[bytes]) -> int:
        count, after = 0, 0
        async with open_event_store(settings) as store:
            while rows := await store.read_raw(after=after, limit=PAGE):
                for pos, stream, version, _type, recorded_at, data in rows:
                    out.write(
                        b'{"position":%d,"stream":%s,"version":%d,"recorded_at":%r,"event":%s}\n'
                        % (pos, msgspec.json.encode(stream), version, recorded_at, data)
                    )
                count += len(rows)
                after = rows[-1][0]
        return count

    if args.output is None:
        count = run(go(sys.stdout.buffer))
        sys.stdout.flush()
    else:
        with args.output.open("wb") as f:
            count = run(go(f))
    if args.json:
        print_json({"exported": count, "file": str(args.output) if args.output else None})
    elif args.output is not None:
        sys.stderr.write(f"exported {count} events to {args.output}\n")
    return 0


class _ExportLine(msgspec.Struct):
    position: int
    stream: str
    version: int
    recorded_at: float
    event: msgspec.Raw


def cmd_import(args: argparse.Namespace) -> int:
    """Append the events of an export file, in order, validating each one first."""
    settings = settings_from(args)
    decoder = msgspec.json.Decoder(_ExportLine)
    events = []
    try:
        with args.file.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                rec = decoder.decode(line)
                events.append(decode_event(bytes(rec.event), position=rec.position))
    except (OSError, msgspec.DecodeError) as exc:
        raise CommandError(f"{args.file}: cannot import: {exc}") from exc

    async def go() -> int:
        async with open_event_store(settings) as store:
            for i in range(0, len(events), PAGE):
                await store.append(events[i : i + PAGE])
            return await store.head()

    head = run(go())
    if args.json:
        print_json({"imported": len(events), "head": head})
    else:
        sys.stderr.write(f"imported {len(events)} events from {args.file}; log head is {head}\n")
    return 0
