"""API benchmark: what the hub adds to a request, against the engine alone and LiteLLM's proxy.

Run ``python bench/bench_api.py --out bench/results/api.json`` (``nox -s bench``
does). In one run, on one machine, it starts as separate processes:

* two ``porten engine sim`` servers: a *fast* one (no time to first token,
  1M tokens/s: the engine is never the bottleneck) and a *slow* one (a few
  tokens/s, so a thousand streams overlap);
* an embedded Postgres in a temporary directory, into which the node
  enrolments, the offered models and an API key are appended before the hub
  starts (hashes under a fixed ``PORTEN_SECRET``);
* ``porten hub`` on that database, and two ``porten agent run`` nodes with
  ``PORTEN_ENGINE=openai``, one in front of each sim server;
* for the throughput rounds, LiteLLM's proxy (``litellm --config``, one
  uvicorn worker) in front of the fast sim server, installed from PyPI into a
  virtualenv of its own on first use.

and measures, from a load generator in this process (aiohttp on uvloop):

* added latency at concurrency 1: small non-streaming completions sent
  alternately straight to the engine and through hub + agent; the goal
  figures are the difference of the two distributions' p50 and p99 (the
  per-pair differences are reported beside them);
* added time to the first SSE event at concurrency 1, the same way;
* 1,000 SSE streams held through the hub at once: every one must receive all
  its tokens and ``[DONE]`` with no gap between events over ``--stall-s``
  (the same streams straight to the engine are the baseline);
* throughput (requests/s, closed loop) at concurrency 32 and 64, in rounds
  that alternate engine alone / hub / LiteLLM so all three share whatever
  else the machine is doing; each target's best round counts, and CPU time
  per request (steadier than req/s on a shared machine) is given beside it.

Every figure comes with its goal and whether it was met; every phase with the
CPU seconds each process used and what the rest of the machine used (a
shared machine shows in every figure). The load generator shares the CPUs
with the servers, so req/s are this machine's, not the hub's ceiling; the
ratios are what carries over. ``--profile DIR`` samples the hub and agents
with py-spy and adds their hot spots to the JSON. Every process started is
stopped (SIGTERM, then SIGKILL) however the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _api_harness import (
    LITELLM_LOG_CONFIG,
    Failed,
    LoopResult,
    Processes,
    Profiler,
    Target,
    chat_body,
    child_env,
    closed_loop,
    complete,
    free_port,
    hot_spots,
    interleaved,
    litellm_command,
    litellm_config,
    machine_busy_s,
    many_streams,
    max_overlap,
    percentiles_ms,
    py_spy,
    seed_log,
    self_cpu_s,
    stream_ttft,
    tree_cpu_s,
    wait_http,
)

import porten
from porten.adapters.postgres.embedded import EmbeddedPostgres
from porten.agent.engines.sim import SimModel, SimProfile, plan_chat

#: Phases sampled with py-spy under ``--profile``, and the processes sampled.
PROFILED: dict[str, tuple[str, ...]] = {
    "latency_c1": ("hub", "agent-fast"),
    "ttft_c1": ("hub", "agent-fast"),
    "throughput_hub_c64_r1": ("hub", "agent-fast", "sim-fast"),
    "streams_hub": ("hub", "agent-slow"),
}
FAST_MODEL = "qwen2.5-7b-instruct"
SLOW_MODEL = "llama3.2-3b-instruct"
SECRET = "porten-bench-api-secret-not-for-production"
LITELLM_MASTER_KEY = "sk-bench-litellm-0123456789abcdef0123456789abcdef"
PORTEN = [sys.executable, "-m", "porten"]


class Report:
    """Figures with their goals, printed to stderr as they come, written as JSON at the end."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self.details: dict[str, Any] = {}
        self.cpu: dict[str, dict[str, float]] = {}

    def add(
        self, name: str, value: float, unit: str, goal: str = "", ok: bool | None = None
    ) -> None:
        self.results[name] = {"value": round(value, 4), "unit": unit, "goal": goal or None,
                              "pass": ok}  # fmt: skip
        verdict = "" if ok is None else (" PASS" if ok else " FAIL")
        print(f"  {name:<42} {value:>11.3f} {unit:<9} {goal}{verdict}", file=sys.stderr,
              flush=True)  # fmt: skip


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Bench:
    """The processes of one run and the measurements taken against them."""

    def __init__(self, args: argparse.Namespace, procs: Processes, db_url: str, tmp: Path,
                 pg_pid: int) -> None:  # fmt: skip
        self.args, self.procs, self.db_url, self.tmp, self.pg_pid = args, procs, db_url, tmp, pg_pid
        self.report = Report()
        self.ports = {name: free_port() for name in ("fast", "slow", "hub", "litellm")}
        self.fast = Target("direct", f"http://127.0.0.1:{self.ports['fast']}/v1/chat/completions",
                           {"Content-Type": "application/json"})  # fmt: skip
        self.slow = Target("direct", f"http://127.0.0.1:{self.ports['slow']}/v1/chat/completions",
                           {"Content-Type": "application/json"})  # fmt: skip
        self.hub_url = f"http://127.0.0.1:{self.ports['hub']}"
        self.hub = Target("hub", "", {})
        self.profiler: Profiler | None = None
        if args.profile is not None:
            exe = py_spy(args.litellm_venv.parent / "tools-venv")
            if exe is None:
                say("  py-spy unavailable; running without --profile")
            else:
                self.profiler = Profiler(exe, args.profile, mode=args.profile_mode)

    # --- CPU accounting ---------------------------------------------------------------------

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of every process in play (Postgres with its backends)."""
        out = {p.name: p.cpu_s() for p in self.procs.procs}
        out["postgres"] = tree_cpu_s(self.pg_pid)
        out["bench_load_generator"] = self_cpu_s()
        out["machine_busy"] = machine_busy_s()
        return out

    @contextlib.asynccontextmanager
    async def phase(self, name: str) -> Any:
        say(f"[{name}]")
        with contextlib.ExitStack() as spying:
            if self.profiler is not None and name in PROFILED:
                watched = [p for p in self.procs.procs if p.name in PROFILED[name]]
                spying.enter_context(self.profiler.record(name, watched))
            before, start = self.cpu(), time.perf_counter()
            try:
                yield
            finally:
                wall = time.perf_counter() - start
                after = self.cpu()
        used = {k: round(v - before.get(k, 0.0), 3) for k, v in after.items()}
        ours = sum(v for k, v in used.items() if k != "machine_busy")
        used["other_processes"] = round(max(used.pop("machine_busy") - ours, 0.0), 3)
        self.report.cpu[name] = {"wall_s": round(wall, 3), **used}
        share = used["other_processes"] / max(wall * (os.cpu_count() or 1), 1e-9)
        say(f"  ({wall:.1f}s; other processes on the machine used {share:.0%} of its CPU)")

    # --- set-up -----------------------------------------------------------------------------

    async def start(self, session: aiohttp.ClientSession) -> None:
        args, env = self.args, {"PORTEN_LOG_LEVEL": self.args.child_log_level}
        started = time.perf_counter()
        sims = {
            "fast": (FAST_MODEL, "1000000"),
            "slow": (SLOW_MODEL, str(args.stream_tokens_per_s)),
        }
        for name, (model, rate) in sims.items():
            self.procs.start(f"sim-{name}", [*PORTEN, "engine", "sim", "--port",
                             str(self.ports[name]), "--models", model, "--ttft-ms", "0",
                             "--tokens-per-s", rate], env)  # fmt: skip
        seeded = await seed_log(
            self.db_url,
            SECRET.encode(),
            {"bench-node-fast": FAST_MODEL, "bench-node-slow": SLOW_MODEL},
        )
        self.hub = Target("hub", f"{self.hub_url}/v1/chat/completions",
                          {"Content-Type": "application/json",
                           "Authorization": f"Bearer {seeded.api_key}"})  # fmt: skip
        hub = self.procs.start("hub", [*PORTEN, "hub", "--port", str(self.ports["hub"]),
                               "--data-dir", str(self.tmp / "hub")],
                               env | {"PORTEN_DATABASE_URL": self.db_url,
                                      "PORTEN_SECRET": SECRET})  # fmt: skip
        steps: dict[str, float] = {}
        for proc in self.procs.procs:
            if proc.name.startswith("sim-"):
                port = self.ports[proc.name.removeprefix("sim-")]
                await wait_http(session, f"http://127.0.0.1:{port}/health", proc, within_s=60)
        steps["sim_servers"] = time.perf_counter() - started
        await wait_http(session, f"{self.hub_url}/healthz", hub, within_s=90)
        steps["hub_healthz"] = time.perf_counter() - started
        # Agents dial once the hub listens (else their first backoff, up to 30 s, is timed).
        for name in sims:
            self.procs.start(f"agent-{name}", [*PORTEN, "agent", "run"], env | {
                "PORTEN_HUB_URL": self.hub_url,
                "PORTEN_NODE_CREDENTIAL": seeded.credentials[f"bench-node-{name}"],
                "PORTEN_ENGINE": "openai",
                "PORTEN_ENGINE_URL": f"http://127.0.0.1:{self.ports[name]}/v1",
                "PORTEN_ENGINE_MODELS": sims[name][0],
                "PORTEN_DATA_DIR": str(self.tmp / f"agent-{name}"),
            })  # fmt: skip

        def both_ready(body: Any) -> bool:
            ready = {m["id"] for m in body.get("data", []) if m.get("x_porten", {}).get("ready")}
            agents_alive = all(p.alive() for p in self.procs.procs if p.name.startswith("agent-"))
            if not agents_alive:
                dead = [p for p in self.procs.procs if p.name.startswith("agent-")
                        and not p.alive()]  # fmt: skip
                raise RuntimeError(f"{dead[0].name} exited:\n{dead[0].tail()}")
            return {FAST_MODEL, SLOW_MODEL} <= ready

        auth = {"Authorization": self.hub.headers["Authorization"]}
        await wait_http(session, f"{self.hub_url}/v1/models", hub, within_s=90, headers=auth,
                        ready=both_ready)  # fmt: skip
        steps["models_ready"] = time.perf_counter() - started
        self.report.details["startup_s"] = {k: round(v, 2) for k, v in steps.items()}
        say(f"  hub + 2 agents + 2 sim servers ready in {time.perf_counter() - started:.1f}s")

    # --- phases -----------------------------------------------------------------------------

    async def warm_up(self, session: aiohttp.ClientSession) -> None:
        small = chat_body(FAST_MODEL, max_tokens=self.args.max_tokens, stream=False)
        streamed = chat_body(FAST_MODEL, max_tokens=self.args.max_tokens, stream=True)
        async with self.phase("warm_up"):
            await interleaved(session, [self.fast, self.hub], 200, complete, small)
            await interleaved(session, [self.fast, self.hub], 50, stream_ttft, streamed)
            for target in (self.fast, self.hub):  # open the connections the loops will use
                await asyncio.gather(*(complete(session, target, small) for _ in range(64)))

    async def latency(self, session: aiohttp.ClientSession) -> None:
        n, r = self.args.requests, self.report
        body = chat_body(FAST_MODEL, max_tokens=self.args.max_tokens, stream=False)
        async with self.phase("latency_c1"):
            got = await interleaved(session, [self.fast, self.hub], n, complete, body)
        direct, hub = got["direct"], got["hub"]
        paired = [h - d for d, h in zip(direct, hub, strict=True)]
        d, h, p = percentiles_ms(direct), percentiles_ms(hub), percentiles_ms(paired)
        r.details["latency_c1_ms"] = {"direct": d, "hub": h, "paired_hub_minus_direct": p,
                                      "requests_each": n}  # fmt: skip
        r.add("direct_latency_p50_ms", d["p50"], "ms")
        r.add("hub_latency_p50_ms", h["p50"], "ms")
        added50, added99 = h["p50"] - d["p50"], h["p99"] - d["p99"]
        r.add("added_latency_p50_ms", added50, "ms", "<= 1 ms", added50 <= 1.0)
        r.add("added_latency_p99_ms", added99, "ms", "<= 3 ms", added99 <= 3.0)
        r.add("added_latency_paired_p50_ms", p["p50"], "ms")
        r.add("added_latency_paired_p99_ms", p["p99"], "ms")
        # Nothing batches at concurrency 1: what each hub request costs on its own.
        used = r.cpu["latency_c1"]
        for proc in ("hub", "agent-fast", "postgres"):
            r.add(f"c1_cpu_us_per_hub_request_{proc}", used.get(proc, 0.0) / n * 1e6, "us")

    async def ttft(self, session: aiohttp.ClientSession) -> None:
        n, r = self.args.ttft_requests, self.report
        body = chat_body(FAST_MODEL, max_tokens=self.args.max_tokens, stream=True)
        async with self.phase("ttft_c1"):
            got = await interleaved(session, [self.fast, self.hub], n, stream_ttft, body)
        direct = [first for first, _ in got["direct"]]
        hub = [first for first, _ in got["hub"]]
        paired = [h - d for d, h in zip(direct, hub, strict=True)]
        d, h, p = percentiles_ms(direct), percentiles_ms(hub), percentiles_ms(paired)
        r.details["ttft_c1_ms"] = {
            "direct": d, "hub": h, "paired_hub_minus_direct": p, "streams_each": n,
            "whole_stream_direct": percentiles_ms([whole for _, whole in got["direct"]]),
            "whole_stream_hub": percentiles_ms([whole for _, whole in got["hub"]]),
        }  # fmt: skip
        r.add("direct_ttft_p50_ms", d["p50"], "ms")
        r.add("hub_ttft_p50_ms", h["p50"], "ms")
        added = h["p50"] - d["p50"]
        r.add("added_ttft_p50_ms", added, "ms", "<= 1 ms", added <= 1.0)
        r.add("added_ttft_p99_ms", h["p99"] - d["p99"], "ms")

    async def throughput(
        self, session: aiohttp.ClientSession, targets: list[Target]
    ) -> dict[str, list[LoopResult]]:
        """Closed loops at each concurrency, ``--rounds`` times, targets alternating.

        Other work on a shared machine only ever lowers a figure, so each
        target's best round is the one its ratios use; every round is kept.
        """
        body = chat_body(FAST_MODEL, max_tokens=self.args.max_tokens, stream=False)
        out: dict[str, list[LoopResult]] = {t.name: [] for t in targets}
        for c in self.args.concurrency:
            for n in range(1, self.args.rounds + 1):
                for target in targets:
                    async with self.phase(f"throughput_{target.name}_c{c}_r{n}"):
                        res = await closed_loop(session, target, body, concurrency=c,
                                                warmup_s=self.args.loop_warmup_s,
                                                window_s=self.args.window_s,
                                                cpu=self.cpu)  # fmt: skip
                    say(
                        f"  {target.name:<8} c={c:<3} {res.rps:8.1f} req/s  p50 "
                        f"{res.latency_ms.get('p50', 0):7.2f} ms  p99 "
                        f"{res.latency_ms.get('p99', 0):7.2f} ms  errors {res.errors}  "
                        f"(others used {res.cpu_s.get('other_processes', 0.0):.1f} CPU-s)"
                    )
                    out[target.name].append(res)
        throughput = self.report.details.setdefault("throughput", {})
        for name, results in out.items():
            throughput[name] = [msgspec.to_builtins(res) for res in results]
        return out

    async def streams(self, session: aiohttp.ClientSession) -> None:
        args, r = self.args, self.report
        body = chat_body(SLOW_MODEL, max_tokens=args.stream_tokens, stream=True,
                         text="Tell me a long story about the sea")  # fmt: skip
        plan = plan_chat(SimModel(id=SLOW_MODEL), msgspec.json.decode(body), SimProfile())
        expect = len(plan.content_tokens)
        nominal = 1.0 / args.stream_tokens_per_s
        figures: dict[str, Any] = {}
        for target in (self.slow, self.hub):
            async with self.phase(f"streams_{target.name}"):
                start = time.perf_counter()
                stats = await many_streams(session, target, body, count=args.streams,
                                           expect_tokens=expect, ramp_s=args.ramp_s)  # fmt: skip
                wall = time.perf_counter() - start
            ok = [s for s in stats if s.ok]
            gaps = [s.max_gap_s for s in ok]
            stalled = sum(1 for s in stats if not s.ok or s.max_gap_s > args.stall_s)
            slow = sum(1 for s in ok if s.max_gap_s > 1.0)
            errors = [s.error for s in stats if s.error]
            figures[target.name] = {
                "streams": len(stats), "completed": len(ok), "stalled": stalled,
                "held_at_once": max_overlap((s.opened, s.ended) for s in ok),
                "streaming_at_once": max_overlap((s.first, s.ended) for s in ok),
                "max_gap_ms": round(max(gaps, default=0.0) * 1e3, 1),
                "streams_with_a_gap_over_1s": slow,
                "per_stream_max_gap_ms": percentiles_ms(gaps),
                "first_event_after_headers_ms": percentiles_ms([s.first - s.opened for s in ok]),
                "duration_ms": percentiles_ms([s.ended - s.opened for s in ok]),
                "wall_s": round(wall, 2), "errors": len(errors), "first_errors": errors[:5],
            }  # fmt: skip
            say(f"  {target.name:<8} {len(ok)}/{len(stats)} complete, {stalled} stalled, "
                f"held at once {figures[target.name]['held_at_once']}, "
                f"max gap {figures[target.name]['max_gap_ms']:.0f} ms "
                f"(nominal {nominal * 1e3:.0f} ms)")  # fmt: skip
        r.details["streams"] = {
            "tokens_per_stream": expect, "tokens_per_s": args.stream_tokens_per_s,
            "nominal_gap_ms": round(nominal * 1e3, 1), "stall_threshold_s": args.stall_s,
            "ramp_s": args.ramp_s, **figures,
        }  # fmt: skip
        hub = figures["hub"]
        want = args.streams
        r.add("hub_streams_completed", hub["completed"], "streams", f">= {want}, all of them",
              hub["completed"] == want and want >= 1000)  # fmt: skip
        r.add("hub_streams_held_at_once", hub["held_at_once"], "streams", ">= 1000",
              hub["held_at_once"] >= 1000)  # fmt: skip
        r.add("hub_streams_stalled", hub["stalled"], "streams",
              f"0 (no gap > {args.stall_s:g} s)", hub["stalled"] == 0)  # fmt: skip
        r.add("hub_streams_max_gap_ms", hub["max_gap_ms"], "ms")
        r.add("direct_streams_max_gap_ms", figures["direct"]["max_gap_ms"], "ms")

    async def start_litellm(self, session: aiohttp.ClientSession) -> Target | None:
        """LiteLLM's proxy in front of the fast sim server, answering; ``None`` (and why, in
        the report) if it cannot be installed or started. ``run`` stops it."""
        info: dict[str, Any] = {"status": "not run"}
        self.report.details["litellm"] = info
        if self.args.no_litellm or "litellm" in self.args.skip:
            info["status"] = "skipped (--no-litellm / --skip litellm)"
            return None
        command, version, how = await asyncio.to_thread(
            litellm_command, self.args.litellm_venv, install=not self.args.no_litellm_install
        )
        info |= {"version": version or None, "how": how}
        if command is None:
            info["status"] = f"unavailable: {how}"
            say(f"  LiteLLM unavailable: {how}")
            return None
        cfg, logcfg = self.tmp / "litellm.yaml", self.tmp / "litellm-logging.json"
        cfg.write_text(litellm_config(FAST_MODEL, f"http://127.0.0.1:{self.ports['fast']}",
                                      LITELLM_MASTER_KEY))  # fmt: skip
        logcfg.write_bytes(msgspec.json.encode(LITELLM_LOG_CONFIG))
        argv = [*command, "--config", str(cfg), "--host", "127.0.0.1",
                "--port", str(self.ports["litellm"]), "--log_config", str(logcfg)]  # fmt: skip
        env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
               "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"}  # fmt: skip
        started = time.perf_counter()
        proc = self.procs.start("litellm", argv, env)
        info |= {"argv": argv, "workers": 1, "env": env,
                 "server": "uvicorn (litellm's default), 1 worker, uvloop + httptools"}  # fmt: skip
        base = f"http://127.0.0.1:{self.ports['litellm']}"
        target = Target("litellm", f"{base}/v1/chat/completions",
                        {"Content-Type": "application/json",
                         "Authorization": f"Bearer {LITELLM_MASTER_KEY}"})  # fmt: skip
        small = chat_body(FAST_MODEL, max_tokens=self.args.max_tokens, stream=False)
        try:
            await wait_http(session, f"{base}/health/liveliness", proc, within_s=180)
            deadline = time.perf_counter() + 60
            while True:  # the model route answers a little after the liveness probe
                try:
                    await complete(session, target, small)
                    break
                except (Failed, aiohttp.ClientError, OSError) as exc:
                    if time.perf_counter() > deadline or not proc.alive():
                        raise RuntimeError(f"LiteLLM never answered: {exc}\n{proc.tail()}") from exc
                    await asyncio.sleep(0.5)
            info["startup_s"] = round(time.perf_counter() - started, 1)
            say(f"  LiteLLM {version} ready in {info['startup_s']}s")
            async with self.phase("litellm_warm_up"):
                await interleaved(session, [target], 100, complete, small)
                await asyncio.gather(*(complete(session, target, small) for _ in range(64)))
        except (RuntimeError, Failed, aiohttp.ClientError, OSError) as exc:
            info["status"] = f"failed to start: {exc}"[:2000]
            info["exit_status"] = self.procs.stop(proc)
            say(f"  LiteLLM failed to start: {str(exc)[:500]}")
            return None
        info["status"] = "ok"
        return target

    async def litellm_latency(self, session: aiohttp.ClientSession, target: Target) -> None:
        """LiteLLM's added latency at concurrency 1 (for comparison; no goal)."""
        small = chat_body(FAST_MODEL, max_tokens=self.args.max_tokens, stream=False)
        n = self.args.litellm_requests
        async with self.phase("litellm_latency_c1"):
            got = await interleaved(session, [self.fast, target], n, complete, small)
        d, lt = percentiles_ms(got["direct"]), percentiles_ms(got["litellm"])
        self.report.details["litellm"]["latency_c1_ms"] = {
            "direct": d, "litellm": lt, "requests_each": n
        }  # fmt: skip
        self.report.add("litellm_added_latency_p50_ms", lt["p50"] - d["p50"], "ms")
        self.report.add("litellm_added_latency_p99_ms", lt["p99"] - d["p99"], "ms")

    async def run(self) -> Report:
        r = self.report
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=120, sock_connect=30)
        skip = set(self.args.skip)
        loops: dict[str, list[LoopResult]] = {}
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await self.start(session)
            await self.warm_up(session)
            if "latency" not in skip:
                await self.latency(session)
            if "ttft" not in skip:
                await self.ttft(session)
            if "streams" not in skip:
                await self.streams(session)
            if "throughput" not in skip:
                # LiteLLM joins the rounds, so all three share whatever else the machine does.
                litellm = await self.start_litellm(session)
                try:
                    targets = [self.fast, self.hub] + ([litellm] if litellm else [])
                    loops = await self.throughput(session, targets)
                    if litellm is not None:
                        await self.litellm_latency(session, litellm)
                finally:
                    for proc in [p for p in self.procs.procs if p.name == "litellm"]:
                        r.details["litellm"]["exit_status"] = self.procs.stop(proc)
        if self.profiler is not None:
            r.details["profile"] = {
                path.stem: hot_spots(path) for path in sorted(self.profiler.out.glob("*.txt"))
            }
        hub = loops.get("hub", [])
        if not hub:
            return r
        best = {name: max(results, key=lambda res: res.rps) for name, results in loops.items()
                if results}  # fmt: skip
        r.add("direct_throughput_rps", best["direct"].rps, "req/s")
        r.add("hub_throughput_rps", best["hub"].rps, "req/s")
        hub_errors = sum(res.errors for res in hub)
        r.add("hub_throughput_errors", hub_errors, "requests", "0", hub_errors == 0)
        r.add("hub_vs_direct_throughput_ratio", best["hub"].rps / best["direct"].rps, "x")
        # CPU per request over every round: steadier than req/s on a shared machine.
        hub_cpu = cpu_per_request(hub, "hub", "agent-fast", "postgres")
        for name, us in hub_cpu.items():
            r.add(f"hub_path_cpu_us_per_request_{name}", us, "us")
        r.add("hub_path_cpu_us_per_request", sum(hub_cpu.values()), "us")
        if "litellm" in best:
            lt = best["litellm"]
            r.add("litellm_throughput_rps", lt.rps, "req/s")
            ratio = best["hub"].rps / lt.rps if lt.rps else float("inf")
            r.add("hub_vs_litellm_throughput_ratio", ratio, "x", ">= 10x", ratio >= 10.0)
            lt_cpu = cpu_per_request(loops["litellm"], "litellm")["litellm"]
            r.add("litellm_cpu_us_per_request", lt_cpu, "us")
            r.add("litellm_vs_hub_path_cpu_per_request_ratio", lt_cpu / sum(hub_cpu.values()), "x")
            r.add("litellm_throughput_errors", sum(res.errors for res in loops["litellm"]),
                  "requests")  # fmt: skip
        else:
            r.add("hub_vs_litellm_throughput_ratio", 0.0, "x", ">= 10x (LiteLLM not measured)",
                  None)  # fmt: skip
        r.details["best_concurrency"] = {k: v.concurrency for k, v in best.items()}
        return r


def cpu_per_request(results: list[LoopResult], *procs: str) -> dict[str, float]:
    """Microseconds of CPU per completed request, per process, over all ``results``."""
    done = max(sum(res.completed for res in results), 1)
    return {p: sum(res.cpu_s.get(p, 0.0) for res in results) / done * 1e6 for p in procs}


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            "unknown",
        )
        if cpuinfo.exists()
        else ""
    )
    return {
        "platform": platform.platform(), "python": sys.version.split()[0], "cpu": cpu,
        "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
        "porten": porten.__version__, "aiohttp": aiohttp.__version__,
        "msgspec": msgspec.__version__, "uvloop": uvloop.__version__,
        "started_at": datetime.now(UTC).isoformat(),
    }  # fmt: skip


NOTES = (
    "One machine runs everything: the load generator (this process, aiohttp on uvloop), the hub, "
    "two agents, two sim servers, Postgres and LiteLLM share its {cpus} CPUs, so req/s are this "
    "machine's and the load generator's CPU is in every figure; cpu_s_by_phase has each "
    "process's CPU seconds per phase and 'other_processes' (the rest of the machine: on a "
    "shared machine, other people's work). Targets alternate at concurrency 1 and within "
    "throughput rounds, so drifts hit them alike. 'added' latency/TTFT = pXX(through hub) - "
    "pXX(straight to the engine); the 'paired' figures are percentiles of per-pair "
    "differences. The hub path includes the agent (client -> hub -> WebSocket -> agent -> HTTP "
    "-> engine) and the hub's per-request metering (a request_served event to Postgres). "
    "LiteLLM runs as shipped by litellm[proxy] (uvicorn, one worker, like the one hub process) "
    "with httptools, its access log off, the local cost map and a master key; the throughput "
    "ratio takes each system's best round. hub_path_cpu_us_per_request counts hub + agent + "
    "Postgres. A stream is stalled if it did not deliver every token and [DONE], or two of its "
    "events were more than the stall threshold apart."
)


def _interrupted(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/api.json"))
    parser.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="concurrency-1 completions to each of engine and hub",
    )
    parser.add_argument(
        "--ttft-requests",
        type=int,
        default=1000,
        help="concurrency-1 streams to each of engine and hub",
    )
    parser.add_argument(
        "--litellm-requests",
        type=int,
        default=300,
        help="concurrency-1 completions to LiteLLM (for its added latency)",
    )
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per small completion")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--window-s", type=float, default=4.0, help="measured seconds per loop")
    parser.add_argument("--loop-warmup-s", type=float, default=1.0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="closed loops per target and concurrency (the best one counts)",
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--stream-tokens", type=int, default=24)
    parser.add_argument("--stream-tokens-per-s", type=float, default=4.0)
    parser.add_argument("--ramp-s", type=float, default=1.0, help="seconds to open the streams")
    parser.add_argument(
        "--stall-s",
        type=float,
        default=5.0,
        help="a gap between two events of a stream longer than this is a stall",
    )
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM comparison")
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        metavar="PHASE",
        choices=("latency", "ttft", "throughput", "streams", "litellm"),
        help="leave phases out (while iterating; a full run has them all)",
    )
    parser.add_argument(
        "--no-litellm-install",
        action="store_true",
        help="use LiteLLM only if it is already installed",
    )
    parser.add_argument(
        "--litellm-venv", type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "porten-bench" / "litellm-venv",
        help="where LiteLLM is installed when this interpreter lacks it",
    )  # fmt: skip
    parser.add_argument("--keep-logs", type=Path, help="copy the processes' logs here")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the hub and agents with py-spy into DIR (slows them)",
    )
    parser.add_argument(
        "--profile-mode",
        choices=("nonblocking", "blocking", "native"),
        default="nonblocking",
        help="how py-spy samples (see Profiler)",
    )
    parser.add_argument(
        "--child-log-level",
        default="warning",
        help="PORTEN_LOG_LEVEL of the hub, agents and sim servers",
    )
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))  # children inherit it
    # SIGTERM (a CI timeout, nox interrupted) unwinds like Ctrl-C, so the finally below runs.
    signal.signal(signal.SIGTERM, _interrupted)

    out: dict[str, Any] = {"benchmark": "api", "machine": machine()}
    out["machine"]["open_files_limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    out["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    started = time.perf_counter()
    report = Report()
    error: str | None = None
    with tempfile.TemporaryDirectory(prefix="porten-bench-api-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "logs").mkdir()
        procs = Processes(tmp / "logs", child_env())
        server = EmbeddedPostgres(tmp / "postgres")
        try:
            db_url = server.start()
            pg_pid = int((tmp / "postgres" / "postmaster.pid").read_text().split()[0])
            bench = Bench(args, procs, db_url, tmp, pg_pid)
            report = bench.report
            uvloop.run(bench.run())
        except Exception as exc:  # still write what was measured, and why it stopped
            error = f"{type(exc).__name__}: {exc}"
            say(f"bench failed: {error}")
        finally:
            procs.stop_all()
            server.stop()
            if args.keep_logs:
                shutil.copytree(tmp / "logs", args.keep_logs, dirs_exist_ok=True)
    out["machine"]["load_average_at_end"] = os.getloadavg()
    out["machine"]["cpus_note"] = "load generator shares the CPUs with every server process"
    out |= {"results": report.results, "details": report.details,
            "cpu_s_by_phase": report.cpu}  # fmt: skip
    out["versions"] = {"porten": porten.__version__,
                       "litellm": report.details.get("litellm", {}).get("version")}  # fmt: skip
    out["notes"] = NOTES.format(cpus=os.cpu_count())
    out["error"] = error
    verdicts = [res["pass"] for res in report.results.values() if res["pass"] is not None]
    out["all_goals_met"] = error is None and bool(verdicts) and all(verdicts)
    out["duration_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(msgspec.json.format(msgspec.json.encode(out)) + b"\n")
    say(f"wrote {args.out} in {out['duration_s']:.0f}s; all goals met: {out['all_goals_met']}")
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
