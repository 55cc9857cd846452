"""``porten sim replay``: replay a request trace through Porten's scheduler and an LRU baseline.

The simulation runs in this process with a simulated clock; it touches no
database (``--data-dir``/``--database-url`` are accepted only so every
command takes the same options). The report goes to ``--out`` and, with
``--json``, to stdout; otherwise a summary table is printed. Replay time is
printed on stderr, never written into the report, so reports stay
byte-identical across runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import get_args

import msgspec

from porten import simulator as sim
from porten.cli._common import CommandError, data_options, json_option
from porten.scheduler.plan import PlannerConfig


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sim`` and its subcommand ``replay``."""
    sim = sub.add_parser("sim", help="simulate the scheduler on request traces")
    ssub = sim.add_subparsers(dest="sim_command", required=True, metavar="COMMAND")
    rp = ssub.add_parser(
        "replay",
        parents=[data_options(), json_option()],
        help="replay a trace under Porten and an LRU baseline; print the comparison",
        description="Replay TRACE (a ts_ms,model,prompt_tokens,completion_tokens CSV, or a "
        "`porten events export` JSONL) on a simulated fleet. Several traces are "
        "merged, each aligned at its first request.",
    )
    rp.add_argument("trace", nargs="+", type=Path, metavar="TRACE")
    rp.add_argument(
        "--fleet",
        type=Path,
        metavar="FLEET.json",
        help="fleet file (default: the log's nodes for an export, else the built-in "
        "simulations/fleets/homelab.json)",
    )
    rp.add_argument(
        "--policy",
        choices=("porten", "lru", "both"),
        default="both",
        help="Porten's scheduler, the LRU baseline, or both side by side (default)",
    )
    rp.add_argument("--out", type=Path, metavar="REPORT.json", help="write the report here")
    rp.add_argument(
        "--plots",
        type=Path,
        metavar="DIR",
        help="write PNG plots here (needs matplotlib; skipped without it)",
    )
    rp.add_argument(
        "--events-dir",
        type=Path,
        metavar="DIR",
        help="also write each policy's simulated event log (<policy>.jsonl, the "
        "`porten events export` format); holds every event in memory",
    )
    rp.add_argument(
        "--start-s", type=float, default=0.0, metavar="S", help="skip the trace's first S seconds"
    )
    rp.add_argument("--duration-s", type=float, metavar="S", help="replay only S seconds")
    rp.add_argument(
        "--speedup",
        type=float,
        default=1.0,
        metavar="F",
        help="compress the time axis F-fold (F times the load)",
    )
    rp.add_argument(
        "--keep-alive-s",
        type=float,
        metavar="S",
        help="the LRU baseline's keep-alive (default 300, Ollama's)",
    )
    rp.add_argument(
        "--window-s",
        type=float,
        metavar="S",
        help="demand window; Porten plans at each one's end (default 60)",
    )
    rp.add_argument(
        "--max-wait-s",
        type=float,
        metavar="S",
        help="a request no load could start for is dropped after S (default 600)",
    )
    rp.add_argument(
        "--planner-config",
        type=Path,
        metavar="FILE.json",
        help="PlannerConfig fields as JSON (default: the hub's defaults)",
    )
    rp.set_defaults(func=cmd_replay)


def _options(args: argparse.Namespace) -> sim.SimOptions:
    base = sim.SimOptions()
    planner = base.planner
    if args.planner_config is not None:
        try:
            planner = msgspec.json.decode(args.planner_config.read_bytes(), type=PlannerConfig)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CommandError(f"{args.planner_config}: not a planner config: {exc}") from exc
    fields = {
        "keep_alive_s": args.keep_alive_s,
        "window_s": args.window_s,
        "max_wait_s": args.max_wait_s,
    }
    chosen = {k: v for k, v in fields.items() if v is not None}
    try:
        return msgspec.convert(
            {**msgspec.structs.asdict(base), **chosen, "planner": planner},
            sim.SimOptions,
            from_attributes=True,
        )
    except msgspec.ValidationError as exc:
        raise CommandError(f"bad option: {exc}") from exc


def cmd_replay(args: argparse.Namespace) -> int:
    """Run the replay and report it."""
    options = _options(args)
    try:
        read = [sim.read_trace(p) for p in args.trace]
        trace = sim.merge(t for t, _ in read)
        logs = [log for _, log in read if log is not None]
        log = logs[0] if len(logs) == 1 and len(read) == 1 else None
        if args.fleet is not None:
            spec = sim.load_fleet(args.fleet)
        elif log is not None:
            spec = sim.fleet_from_log(log.fleet)
        else:
            spec = sim.DEFAULT_FLEET
        if not spec.nodes:
            raise CommandError("the fleet has no nodes: pass --fleet FLEET.json")
        policies: tuple[sim.PolicyName, ...] = (
            get_args(sim.PolicyName) if args.policy == "both" else (args.policy,)
        )
        started = time.perf_counter()
        result = sim.replay(
            trace,
            spec,
            policies=policies,
            options=options,
            event_log=log,
            start_s=args.start_s,
            duration_s=args.duration_s,
            speedup=args.speedup,
            record=args.events_dir is not None,
        )
        took = time.perf_counter() - started
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    except ImportError as exc:
        raise CommandError(
            f"Porten's planner is not importable here ({exc}); use --policy lru"
        ) from exc
    data = sim.encode(result.report)
    if args.out is not None:
        args.out.write_bytes(data)
    if args.events_dir is not None:
        _write_events(result, args.events_dir)
    if args.plots is not None:
        from porten.simulator._plots import write_plots

        written = write_plots(result, args.plots)
        if not written:
            sys.stderr.write("plots skipped: matplotlib is not installed\n")
    if args.json:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        sys.stdout.write(sim.summary_table(result.report))
        sys.stdout.flush()
    sys.stderr.write(
        f"replayed {result.report.trace.requests} requests x {len(policies)} "
        f"polic{'y' if len(policies) == 1 else 'ies'} in {took:.2f} s\n"
    )
    return 0


def _write_events(result: sim.Replay, out_dir: Path) -> None:
    """Each run's events as `porten events export` lines (positions from 1, versions per stream)."""
    from porten.domain.codec import encode_event
    from porten.domain.events import stream_of

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, run in result.runs.items():
        versions: dict[str, int] = {}
        with (out_dir / f"{name}.jsonl").open("wb") as f:
            for pos, event in enumerate(run.events or (), start=1):
                stream = stream_of(event)
                version = versions.get(stream, -1) + 1
                versions[stream] = version
                f.write(
                    b'{"position":%d,"stream":%s,"version":%d,"recorded_at":%r,"event":%s}\n'
                    % (pos, msgspec.json.encode(stream), version, event.at, encode_event(event))
                )
