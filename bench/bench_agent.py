"""Agent benchmark: weight-download throughput against curl, and a cold request's first token.

Run ``python bench/bench_agent.py --out bench/results/agent.json`` (needs
``porten[llama]``: the Gemma 3 270M GGUF package and llama.cpp). Everything
is on loopback; nothing outside this machine is touched.

Figures:
  * download throughput of the agent's weight fetcher (HTTP download, sha256
    while receiving, written to the cache, verified and moved into place)
    against ``curl -o`` of the same 253 MB file from the same server in the
    same run, alternating which goes first, median of ``--rounds``. The
    server runs in its own process. Two servers: a zero-copy ``sendfile``
    server of the assembled file (the strict comparison: the server is not
    the bottleneck), and the agent's own weights server that ``porten up``
    uses (the package's chunks concatenated on the fly). Goal: >= 90 % of curl.
  * a cold request to first token through the whole product (hub on an
    embedded Postgres, the local node on the builtin engine, llama.cpp), split
    into: placement, download (+ verification), engine start, and first token
    (routing, prompt, first generated token), from the hub's event times and
    the client's clock. A fresh hub, cache and database per trial.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec
import uvloop
from aiohttp import web

from porten.agent.weights.cache import MIB, WeightCache
from porten.agent.weights.fetcher import WeightFetcher
from porten.agent.weights.packaged import gemma_file
from porten.agent.weights.serve import create_app
from porten.domain.catalog import GEMMA3_270M, with_download_ref

PROMPT = {"messages": [{"role": "user", "content": "Write one sentence about the sea."}],
          "max_tokens": 16, "temperature": 0}


# --- the servers (run in a child process: `--serve sendfile|package FILE`) ---------------


def serve_forever(kind: str, path: Path) -> None:
    """Serve ``path`` (sendfile) or the packaged GGUF (chunks); print the URL, run until killed."""
    if kind == "sendfile":
        app = web.Application()

        async def whole(request: web.Request) -> web.FileResponse:
            return web.FileResponse(path)

        app.router.add_get("/{name}", whole)
        name = path.name
    else:
        served = gemma_file()
        assert served is not None
        app = create_app([served])
        name = served.name

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        print(f"http://{host}:{port}/{name}", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


class Server:
    """A child process serving the weights."""

    def __init__(self, kind: str, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, str(path)],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# --- download throughput ---------------------------------------------------------------


async def curl(url: str, dest: Path) -> float:
    start = time.perf_counter()  # curl -o truncates dest, as the fetcher starts a new file
    proc = await asyncio.create_subprocess_exec("curl", "-sS", "-o", str(dest), url)
    assert await proc.wait() == 0
    return time.perf_counter() - start


async def fetcher(url: str, cache_dir: Path) -> float:
    shutil.rmtree(cache_dir, ignore_errors=True)
    fetch = WeightFetcher(WeightCache(cache_dir, 1000 * MIB))
    start = time.perf_counter()
    try:
        await fetch.ensure(with_download_ref(GEMMA3_270M, url), lambda done, total: None)
    finally:
        await fetch.aclose()
    return time.perf_counter() - start


async def throughput(url: str, size: int, work: Path, rounds: int) -> dict[str, Any]:
    """Median MB/s of curl and of the fetcher, alternating which goes first."""
    curl_s: list[float] = []
    ours_s: list[float] = []
    await curl(url, work / "warm.gguf")  # page cache warm for both
    for i in range(rounds):
        if i % 2:
            ours_s.append(await fetcher(url, work / "cache"))
            curl_s.append(await curl(url, work / "curl.gguf"))
        else:
            curl_s.append(await curl(url, work / "curl.gguf"))
            ours_s.append(await fetcher(url, work / "cache"))
    curl_mbps = size / 1e6 / statistics.median(curl_s)
    ours_mbps = size / 1e6 / statistics.median(ours_s)
    return {"curl_MBps": round(curl_mbps, 1), "porten_MBps": round(ours_mbps, 1),
            "ratio": round(ours_mbps / curl_mbps, 3),
            "curl_s": [round(s, 3) for s in curl_s], "porten_s": [round(s, 3) for s in ours_s]}


# --- cold request to first token -------------------------------------------------------------


async def cold_trial(database_url: str, work: Path) -> dict[str, float]:
    """One cold request through a fresh hub and node; the phases in seconds."""
    from porten.cli._local_node import builtin_engine, local_node, packaged_weights
    from porten.cli.hub import listening
    from porten.config import Settings
    from porten.domain import events as ev

    settings = Settings(database_url=database_url, data_dir=work / "data", host="127.0.0.1",
                        port=0, log_level="warning")
    async with (
        listening(settings) as (hub, url),
        packaged_weights() as entry,
    ):
        await hub.planner.aclose()
        engine = builtin_engine(settings.data_dir, vram_budget_mb=4000)
        async with local_node(hub, url, (), engine=engine, extra=[entry]) as setup:
            headers = {"Authorization": f"Bearer {setup.api_key}"}
            body = {"model": entry.id, "stream": True, **PROMPT}
            async with aiohttp.ClientSession() as http:
                sent = time.time()
                async with http.post(url + "/v1/chat/completions", json=body,
                                     headers=headers) as resp:
                    assert resp.status == 200, await resp.text()
                    first = 0.0
                    async for line in resp.content:
                        if line.startswith(b"data: {") and b'"content"' in line:
                            delta = json.loads(line[6:])["choices"][0]["delta"]
                            if delta.get("content"):
                                first = time.time()
                                break
                    async for _ in resp.content:
                        pass
            await hub.writer.flush()
            records = await hub.store.read(0, 10_000)
    events = [r.event for r in records]
    requested = next(e for e in events if isinstance(e, ev.LoadRequested))
    progress = [e for e in events if isinstance(e, ev.LoadProgressed)]
    downloading = next(e for e in progress if e.phase == "downloading")
    loading = next(e for e in progress if e.phase == "loading")
    loaded = next(e for e in events if isinstance(e, ev.ModelLoaded))
    return {
        "placement_s": requested.at - sent,
        "download_s": loading.at - downloading.at,
        "engine_start_s": loaded.at - loading.at,
        "first_token_s": first - loaded.at,
        "total_s": first - sent,
    }


async def cold_requests(admin_url: str, work: Path, trials: int) -> dict[str, Any]:
    import psycopg

    runs = []
    for i in range(trials):
        name = f"bench_agent_{i}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
        trial_dir = work / f"trial{i}"
        runs.append(await cold_trial(url, trial_dir))
        shutil.rmtree(trial_dir, ignore_errors=True)
        print("cold request", i, {k: round(v, 3) for k, v in runs[-1].items()}, flush=True)
    keys = runs[0].keys()
    return {"median": {k: round(statistics.median(r[k] for r in runs), 3) for k in keys},
            "trials": [{k: round(v, 3) for k, v in r.items()} for r in runs]}


# --- the report --------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import llama_cpp

    return {
        "platform": platform.platform(), "python": sys.version.split()[0],
        "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
        "curl": subprocess.run(["curl", "--version"], capture_output=True, text=True,
                               check=True).stdout.split("\n")[0],
        "llama_cpp_python": llama_cpp.__version__, "llama_server_on_path": shutil.which(
            "llama-server") is not None,
        "started_at": datetime.now(UTC).isoformat(),
    }


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    served = gemma_file()
    if served is None:
        raise SystemExit("bench_agent needs the model package: pip install 'porten[llama]'")
    assembled = work / served.name
    with assembled.open("wb") as out:
        for part in served.parts:
            out.write(part.read_bytes())
    results: dict[str, Any] = {}
    for kind, path in (("sendfile", assembled), ("package", assembled)):
        server = Server(kind, path)
        try:
            figures = await throughput(server.url, served.size, work, args.rounds)
        finally:
            server.stop()
        ok = figures["ratio"] >= 0.9
        results[f"download_vs_curl_{kind}_server"] = {**figures, "goal": ">= 0.9", "pass": ok}
        print(f"download from the {kind} server:", figures, "PASS" if ok else "FAIL", flush=True)
    if not args.trials:
        return results
    from porten.adapters.postgres.embedded import EmbeddedPostgres

    server_pg = EmbeddedPostgres(work / "postgres")
    admin_url = server_pg.start()
    try:
        results["cold_request_first_token"] = await cold_requests(admin_url, work, args.trials)
    finally:
        server_pg.stop()
    return results


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve_forever(sys.argv[2], Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/agent.json"))
    parser.add_argument("--rounds", type=int, default=7, help="downloads per tool and server")
    parser.add_argument("--trials", type=int, default=3, help="cold requests (0: none)")
    args = parser.parse_args()
    out: dict[str, Any] = {"benchmark": "agent", "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="porten-bench-agent-") as tmp:
        results = uvloop.run(run(args, Path(tmp)))
    out["machine"]["load_average_at_end"] = os.getloadavg()
    out["results"] = results
    out["all_goals_met"] = all(r["pass"] for r in results.values() if "pass" in r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(msgspec.json.format(msgspec.json.encode(out)) + b"\n")
    print(f"wrote {args.out}; all goals met: {out['all_goals_met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
