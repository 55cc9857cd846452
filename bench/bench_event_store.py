"""Event-store benchmark: append throughput and latency, full fold, restart from a snapshot.

Run ``python bench/bench_event_store.py --out bench/results/event_store.json``.
It starts an embedded Postgres in a temporary directory (nothing else is
touched), uses a fresh database per measurement, and writes every figure with
its goal and whether it was met, plus the machine it ran on (with its load
average: on a shared machine, other work shows in every figure).

Figures:
  * insert method: 1,000-row transactions by ``INSERT … SELECT FROM unnest``
    (binary array parameters, what the store uses) against binary ``COPY``;
  * one transaction per event (the baseline), with its latency p50/p99;
  * events through the BatchingWriter: fire-and-forget ``submit``, and 100
    concurrent callers awaiting ``append``; the ratio to the baseline;
  * a full fold of 1,000,000 realistic events read from the store
    (read + decode + fold, as a hub starting without a snapshot does), with
    read + decode alone beside it: as bare events (``read_events``, what the
    fold uses) and as RecordedEvents (``read``);
  * a restart: open the store, load the newest snapshot, fold a 10,000-event tail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import psycopg
import uvloop

from porten.adapters.postgres.connect import connect
from porten.adapters.postgres.embedded import EmbeddedPostgres
from porten.adapters.postgres.event_store import PostgresEventStore
from porten.adapters.postgres.migrations import migrate
from porten.domain import events as ev
from porten.domain.codec import encode_event
from porten.domain.values import CatalogEntry
from porten.services.projection import FleetProjection
from porten.services.writer import BatchingWriter

MODELS = [f"model-{i:02d}" for i in range(50)]
NODES = [f"node-{i:03d}" for i in range(100)]
KEYS = [f"key-{i:02d}" for i in range(20)]
T0 = 1_760_000_000.0


# --- a realistic log -------------------------------------------------------------------


class FleetLog:
    """A deterministic, plausible history of 100 nodes and 50 models: ~97% served
    requests, a demand window per model per minute, loads, unloads, reconnects."""

    def __init__(self, seed: int = 42) -> None:
        self.rng = random.Random(seed)
        self.t = T0
        self.loaded: dict[str, set[str]] = {n: set() for n in NODES}
        self.sessions = dict.fromkeys(NODES, "s0")
        self.requests = self.loads = 0
        self.next_window = T0 + 60.0

    def chunks(self, total: int, size: int = 10_000) -> Iterator[list[ev.AnyEvent]]:
        """``total`` events (the fleet's set-up first) in lists of at most ``size``."""
        pending: list[ev.AnyEvent] = self._prelude() if self.t == T0 else []
        produced = 0
        while produced < total:
            while len(pending) < size:
                pending += self._step()
            chunk, pending = pending[: min(size, total - produced)], pending[size:]
            produced += len(chunk)
            yield chunk

    def _prelude(self) -> list[ev.AnyEvent]:
        out: list[ev.AnyEvent] = []
        for m in MODELS:
            vram = self.rng.choice([4_000, 8_000, 16_000, 24_000])
            entry = CatalogEntry(id=m, vram_mb=vram, disk_mb=vram * 3 // 4)
            out.append(ev.ModelOffered(at=T0, actor="user:op", model=entry))
        out += [
            ev.KeyCreated(at=T0, actor="user:op", key_id=k, owner_id="u1", secret_hash=f"h-{k}")
            for k in KEYS
        ]
        for n in NODES:
            out += [
                ev.NodeEnrolled(at=T0, actor="user:op", node_id=n, owner_id="u1", region="eu"),
                ev.NodeConnected(at=T0, actor=f"node:{n}", node_id=n, session_id="s0"),
                self._capabilities(n, tuple(sorted(self.rng.sample(MODELS, 8)))),
            ]
        return out

    def _step(self) -> list[ev.AnyEvent]:
        self.t += self.rng.expovariate(100.0)  # ~100 events per simulated second
        if self.t >= self.next_window:
            self.next_window += 60.0
            return [self._demand(m) for m in MODELS]
        roll = self.rng.random()
        if roll < 0.97:
            return [self._served()]
        return self._load_or_unload() if roll < 0.995 else self._reconnect()

    def _capabilities(self, node: str, on_disk: tuple[str, ...] = ()) -> ev.AnyEvent:
        return ev.NodeCapabilitiesReported(
            at=self.t, actor=f"node:{node}", node_id=node, engine="sim", provisionable=True,
            vram_total_mb=80_000, vram_budget_mb=72_000, disk_budget_mb=500_000,
            models_on_disk=on_disk, models_loaded=tuple(sorted(self.loaded[node])),
        )  # fmt: skip

    def _demand(self, model: str) -> ev.AnyEvent:
        return ev.DemandObserved(
            at=self.t, actor="hub", model_id=model, window_start=self.t - 60.0, window_s=60.0,
            served=self.rng.randrange(500), unmet=self.rng.randrange(5),
        )  # fmt: skip

    def _served(self) -> ev.AnyEvent:
        self.requests += 1
        rid, node, rng = f"req-{self.requests}", self.rng.choice(NODES), self.rng
        return ev.RequestServed(
            at=self.t, actor="hub", correlation_id=rid, request_id=rid, node_id=node,
            model_id=rng.choice(sorted(self.loaded[node]) or MODELS), key_id=rng.choice(KEYS),
            prompt_tokens=rng.randrange(10, 2_000), completion_tokens=rng.randrange(1, 800),
            ttft_ms=rng.uniform(20, 400), duration_ms=rng.uniform(200, 20_000),
        )  # fmt: skip

    def _load_or_unload(self) -> list[ev.AnyEvent]:
        node = self.rng.choice(NODES)
        if self.loaded[node] and self.rng.random() < 0.4:
            model = self.rng.choice(sorted(self.loaded[node]))
            self.loaded[node].discard(model)
            return [ev.ModelUnloaded(at=self.t, actor="planner", node_id=node, model_id=model,
                                     reason="idle")]  # fmt: skip
        model = self.rng.choice(MODELS)
        self.loaded[node].add(model)
        self.loads += 1
        at, load, by_node = self.t, f"load-{self.loads}", f"node:{node}"
        return [
            ev.LoadRequested(at=at, actor="planner", node_id=node, model_id=model, load_id=load,
                             reason="demand exceeds ready replicas"),
            ev.LoadProgressed(at=at, actor=by_node, node_id=node, model_id=model, load_id=load,
                              phase="downloading", done_bytes=1, total_bytes=10),
            ev.LoadProgressed(at=at, actor=by_node, node_id=node, model_id=model, load_id=load,
                              phase="loading"),
            ev.ModelLoaded(at=at, actor=by_node, node_id=node, model_id=model, load_id=load),
        ]  # fmt: skip

    def _reconnect(self) -> list[ev.AnyEvent]:
        node = self.rng.choice(NODES)
        old, new = self.sessions[node], f"s{self.rng.getrandbits(32):08x}"
        self.sessions[node] = new
        return [
            ev.NodeDisconnected(at=self.t, actor=f"node:{node}", node_id=node, session_id=old),
            ev.NodeConnected(at=self.t, actor=f"node:{node}", node_id=node, session_id=new),
            self._capabilities(node),
        ]


def served(i: int) -> ev.RequestServed:
    """A typical request-served event, unique by ``i``."""
    return ev.RequestServed(
        at=T0 + i, actor="hub", request_id=f"bench-{i}", model_id="model-00", node_id="node-000",
        key_id="key-00", prompt_tokens=100, completion_tokens=200, ttft_ms=35.0, duration_ms=900.0,
    )  # fmt: skip


# --- measurements ------------------------------------------------------------------------


async def insert_methods(url: str, batches: int = 20, rows: int = 1_000) -> dict[str, int]:
    """Rows/s in 1,000-row transactions under the table lock: unnest vs binary COPY."""
    await migrate(url)
    best: dict[str, int] = {}
    position = 0
    async with await connect(url) as conn:
        for method in ("unnest", "copy") * 2:  # twice each, keep the better
            data: list[list[list[Any]]] = []
            for _ in range(batches):
                positions = list(range(position + 1, position + rows + 1))
                position += rows
                events = [served(p) for p in positions]
                data.append([positions, [f"request-bench-{p}" for p in positions], [0] * rows,
                             ["request_served"] * rows, [e.at for e in events],
                             [encode_event(e).decode() for e in events]])  # fmt: skip
            start = time.perf_counter()
            for cols in data:
                async with conn.transaction():
                    await conn.execute("LOCK TABLE porten_events IN EXCLUSIVE MODE")
                    await _insert(conn, method, cols)
            rate = round(batches * rows / (time.perf_counter() - start))
            best[method] = max(best.get(method, 0), rate)
    return best


async def _insert(conn: Any, method: str, cols: list[list[Any]]) -> None:
    columns = "porten_events (position, stream, version, type, at, data)"
    if method == "unnest":
        await conn.execute(
            f"INSERT INTO {columns} SELECT p, s, v, t, to_timestamp(a), d::jsonb FROM unnest("
            "%b::bigint[], %b::text[], %b::bigint[], %b::text[], %b::float8[], %b::text[]) "
            "AS u(p, s, v, t, a, d)",
            cols,
        )
        return
    async with conn.cursor().copy(f"COPY {columns} FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "text", "int8", "text", "timestamptz", "jsonb"])
        for p, s, v, t, a, d in zip(*cols, strict=True):
            await copy.write_row((p, s, v, t, datetime.fromtimestamp(a, UTC), d))


async def single_appends(url: str, n: int) -> tuple[list[float], float]:
    """Latencies of ``n`` one-event transactions, and their throughput (the baseline)."""
    store = await PostgresEventStore.open(url)
    try:
        for i in range(50):  # warm the pool and the prepared statements
            await store.append([served(-1 - i)])
        latencies = []
        start = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            await store.append([served(i)])
            latencies.append(time.perf_counter() - t)
        return latencies, n / (time.perf_counter() - start)
    finally:
        await store.aclose()


async def through_writer(url: str, n: int, callers: int) -> tuple[float, int]:
    """Events/s and transactions for ``n`` events through one BatchingWriter.

    ``callers == 0``: the hot path's fire-and-forget ``submit`` of every
    event, then ``flush``. Otherwise that many tasks each await their
    appends one after another, as request handlers would.
    """
    store = await PostgresEventStore.open(url)
    try:
        events = [served(i) for i in range(n)]
        async with BatchingWriter(store) as writer:
            start = time.perf_counter()
            if callers == 0:
                for e in events:
                    writer.submit([e])
                await writer.flush()
            else:

                async def caller(mine: list[ev.RequestServed]) -> None:
                    for e in mine:
                        await writer.append([e])

                await asyncio.gather(*(caller(events[c::callers]) for c in range(callers)))
            elapsed = time.perf_counter() - start
        return n / elapsed, writer.transactions
    finally:
        await store.aclose()


async def fold_and_restart(url: str, total: int, tail: int) -> dict[str, float]:
    """Load ``total`` realistic events, fold them all from zero, then restart on a snapshot."""
    log = FleetLog()
    store = await PostgresEventStore.open(url)
    try:
        start = time.perf_counter()
        for chunk in log.chunks(total):
            await store.append(chunk)
        figures = {"load_s": time.perf_counter() - start, "requests": log.requests}
        figures["read_events_s"] = await _read_all(store, bare=True)
        figures["read_recorded_s"] = await _read_all(store, bare=False)
        projection = FleetProjection(store, snapshot_every=total)  # snapshot at the end
        start = time.perf_counter()
        await projection.catch_up()
        figures["fold_s"] = time.perf_counter() - start
        assert projection.state.events_folded == total
        for chunk in log.chunks(tail):
            await store.append(chunk)
    finally:
        await store.aclose()

    start = time.perf_counter()
    store = await PostgresEventStore.open(url)
    try:
        restarted = FleetProjection(store, snapshot_every=total)
        await restarted.catch_up()
        figures["restart_s"] = time.perf_counter() - start
        assert (restarted.snapshot_position, restarted.tail_folded) == (total, tail)
    finally:
        await store.aclose()
    return figures


async def _read_all(store: PostgresEventStore, *, bare: bool) -> float:
    """Seconds to read and decode the whole log: bare events (what a fold reads), or
    RecordedEvents (what ``read`` returns to everyone else)."""
    start, after = time.perf_counter(), 0
    while True:
        if bare:
            after, events = await store.read_events(after, 10_000)
            if not events:
                break
        else:
            if not (page := await store.read(after, 10_000)):
                break
            after = page[-1].position
    return time.perf_counter() - start


# --- the report --------------------------------------------------------------------------


class Report:
    """Figures with their goals; printed as they come, written as JSON at the end."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.details: dict[str, Any] = {}

    def add(
        self, name: str, value: float, unit: str, goal: str = "", ok: bool | None = None
    ) -> None:
        self.results[name] = {"value": round(value, 4), "unit": unit, "goal": goal or None,
                              "pass": ok}  # fmt: skip
        verdict = "" if ok is None else (" PASS" if ok else " FAIL")
        print(f"{name:<40} {value:>12.3f} {unit:<9} {goal}{verdict}", flush=True)


async def run(admin_url: str, args: argparse.Namespace) -> Report:
    def fresh(name: str) -> str:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))

    report = Report()
    report.details["insert_rows_per_s"] = await insert_methods(fresh("bench_insert"))
    print("insert rows/s by method:", report.details["insert_rows_per_s"], flush=True)

    latencies, baseline = await single_appends(fresh("bench_single"), args.single)
    cuts = statistics.quantiles(latencies, n=100)
    report.add("append_latency_p50_ms", cuts[49] * 1e3, "ms", "<= 2 ms", cuts[49] <= 0.002)
    report.add("append_latency_p99_ms", cuts[98] * 1e3, "ms")
    report.add("baseline_one_tx_per_event", baseline, "events/s")

    rate, tx = await through_writer(fresh("bench_submit"), args.batched, callers=0)
    report.add("batched_submit", rate, "events/s", ">= 20000", rate >= 20_000)
    report.add("batched_vs_baseline_ratio", rate / baseline, "x")
    report.details["batched_submit_transactions"] = tx
    rate, tx = await through_writer(fresh("bench_concurrent"), args.batched, callers=100)
    report.add("batched_100_concurrent_appenders", rate, "events/s")
    report.details["batched_concurrent_transactions"] = tx

    fold = await fold_and_restart(fresh("bench_fold"), args.events, args.tail)
    full = args.events == 1_000_000
    report.add("full_fold_read_decode_fold_s", fold["fold_s"], "s", "<= 10 s for 1M events",
               fold["fold_s"] <= 10.0 if full else None)  # fmt: skip
    report.add("read_decode_only_bare_events_s", fold["read_events_s"], "s")
    report.add("read_decode_only_recorded_events_s", fold["read_recorded_s"], "s")
    report.add("restart_from_snapshot_s", fold["restart_s"], "s",
               f"<= 1 s with a {args.tail}-event tail", fold["restart_s"] <= 1.0)  # fmt: skip
    report.details["bulk_load_s"] = round(fold["load_s"], 1)
    report.details["fold_events"] = args.events
    report.details["request_served_events"] = fold["requests"]
    return report


def machine() -> dict[str, Any]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown",
    ) if Path("/proc/cpuinfo").exists() else platform.processor()  # fmt: skip
    return {
        "platform": platform.platform(), "python": sys.version.split()[0], "cpu": cpu,
        "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
        "psycopg": psycopg.__version__, "libpq": psycopg.pq.version(),
        "msgspec": msgspec.__version__, "started_at": datetime.now(UTC).isoformat(),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/event_store.json"))
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the full fold")
    parser.add_argument("--tail", type=int, default=10_000, help="events after the snapshot")
    parser.add_argument("--single", type=int, default=2_000, help="one-event transactions")
    parser.add_argument("--batched", type=int, default=100_000, help="events through the writer")
    args = parser.parse_args()

    out: dict[str, Any] = {"benchmark": "event_store", "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="porten-bench-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "postgres")
        admin_url = server.start()
        try:
            with psycopg.connect(admin_url) as conn:
                out["machine"]["postgres"] = conn.info.parameter_status("server_version")
            report = uvloop.run(run(admin_url, args))
        finally:
            server.stop()
    out["machine"]["load_average_at_end"] = os.getloadavg()
    out |= {"results": report.results, "details": report.details}
    out["all_goals_met"] = all(r["pass"] for r in report.results.values() if r["pass"] is not None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(msgspec.json.format(msgspec.json.encode(out)) + b"\n")
    print(f"wrote {args.out}; all goals met: {out['all_goals_met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
