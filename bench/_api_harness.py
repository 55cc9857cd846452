"""Plumbing for ``bench_api.py``: the processes it runs and the load it sends them.

Kept apart from the benchmark's phases so those read as the measurements
they are. Everything here is bench-only: no import of it from ``src/``.

* :class:`Proc` / :class:`Processes`: child processes with their logs in the
  run's temporary directory, their CPU time read from ``/proc``, and a stop
  that always ends them (SIGTERM, then SIGKILL), in reverse start order.
* :func:`seed_log`: the node, the API key and the offered models appended
  straight into the event log before the hub starts.
* :func:`litellm_command`: LiteLLM's proxy from its own virtualenv (created
  and filled from PyPI on first use, then reused).
* The load: sequential interleaved requests (latency, TTFT), a closed loop at
  a fixed concurrency (throughput), and many long SSE streams (held streams).
* :class:`Profiler` / :func:`hot_spots`: optional py-spy sampling of the
  servers during chosen phases, summarised per function.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp
import msgspec

from porten.adapters.postgres.event_store import PostgresEventStore
from porten.domain import events as ev
from porten.domain.values import CatalogEntry
from porten.services.credentials import (
    API_KEY_PREFIX,
    display_prefix,
    new_api_key,
    new_node_credential,
    token_hash,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
T0 = 1_760_000_000.0


# --- processes ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on right now (the tiny race is fine for a bench)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and its direct children (a Postgres server and its backends)."""
    total = proc_cpu_s(root)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == root:
            total += (int(stat[11]) + int(stat[12])) / CLK_TCK
    return total


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has spent (all CPUs, from /proc/stat).

    User and system time only: interrupts and time stolen by the hypervisor
    are nobody's process time.
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    user, nice, system = (int(f) for f in fields[:3])
    return (user + nice + system) / CLK_TCK


def self_cpu_s() -> float:
    """CPU seconds of this process (the load generator), all threads."""
    t = os.times()
    return t.user + t.system


class Proc:
    """One child process: output to a log file, CPU from /proc, stopped for sure."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            self.argv, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def tail(self, lines: int = 30) -> str:
        """The end of the process's output, for error messages."""
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit status."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


class Processes:
    """Every child the bench starts; ``stop_all`` ends them in reverse order."""

    def __init__(self, log_dir: Path, base_env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.base_env = base_env
        self.procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, {**self.base_env, **(env or {})}, self.log_dir)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> int | None:
        code = proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)
        return code

    def stop_all(self) -> None:
        while self.procs:
            proc = self.procs.pop()
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {proc.name} (pid {proc.pid}): {exc}", file=sys.stderr)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for children: ours without any PORTEN_* the caller had set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTEN_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env | extra


async def wait_http(
    session: aiohttp.ClientSession,
    url: str,
    proc: Proc,
    *,
    within_s: float,
    headers: dict[str, str] | None = None,
    ready: Callable[[Any], bool] | None = None,
) -> float:
    """Poll ``url`` until it answers 200 (and ``ready(json)``); seconds waited.

    Fails early, with the process's output, if ``proc`` exits.
    """
    start = time.perf_counter()
    deadline = start + within_s
    last = "no answer"
    while time.perf_counter() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            async with session.get(url, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=5)) as resp:  # fmt: skip
                body = await resp.read()
                last = f"HTTP {resp.status}: {body[:200]!r}"
                if resp.status == 200 and (ready is None or ready(msgspec.json.decode(body))):
                    return time.perf_counter() - start
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready at {url} within {within_s:.0f}s ({last}):\n"
                       f"{proc.tail()}")  # fmt: skip


# --- the event log ---------------------------------------------------------------------------


class Seeded(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`seed_log` enrolled: one credential per node, and the API key."""

    api_key: str
    credentials: dict[str, str]  # node id -> credential


async def seed_log(url: str, secret: bytes, nodes: dict[str, str]) -> Seeded:
    """Append an operator's set-up: ``nodes`` (node id -> the model it serves) enrolled
    with fresh credentials, each model offered, and one unrestricted API key."""
    api_key = new_api_key()
    credentials = {node: new_node_credential() for node in nodes}
    batch: list[ev.AnyEvent] = []
    for model in dict.fromkeys(nodes.values()):
        entry = CatalogEntry(id=model, vram_mb=1_000, disk_mb=1_000, ctx=32_768,
                             capabilities=frozenset({"chat"}))  # fmt: skip
        batch.append(ev.ModelOffered(at=T0, actor="user:bench", model=entry))
    for node, cred in credentials.items():
        batch.append(ev.NodeEnrolled(
            at=T0, actor="user:bench", node_id=node, owner_id="bench", name=node,
            region="local", credential_hash=token_hash(secret, cred),
        ))  # fmt: skip
    batch.append(ev.KeyCreated(
        at=T0, actor="user:bench", key_id="bench-key", owner_id="bench", name="bench",
        secret_hash=token_hash(secret, api_key), prefix=display_prefix(api_key, API_KEY_PREFIX),
    ))  # fmt: skip
    store = await PostgresEventStore.open(url)
    try:
        await store.append(batch)
    finally:
        await store.aclose()
    return Seeded(api_key=api_key, credentials=credentials)


# --- LiteLLM ---------------------------------------------------------------------------------


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def litellm_command(venv: Path, *, install: bool) -> tuple[list[str] | None, str, str]:
    """``(argv prefix, version, how)`` for LiteLLM's proxy, or ``(None, "", why not)``.

    LiteLLM in this interpreter is used if it is there. Otherwise it lives in
    its own virtualenv (``venv``), created and filled with ``litellm[proxy]``
    from PyPI on first use: its ~100 pinned dependencies then never touch the
    environment porten is tested in.
    """
    here = Path(sys.executable).parent / "litellm"
    probe = [sys.executable, "-c", "import importlib.metadata as m; print(m.version('litellm'))"]
    found = _run(probe, 60)
    if found.returncode == 0 and here.exists():
        return [str(here)], found.stdout.strip(), f"already installed beside {sys.executable}"
    exe, py = venv / "bin" / "litellm", venv / "bin" / "python"
    how = f"its own virtualenv {venv} (reused)"
    if not exe.exists():
        if not install:
            return None, "", f"litellm is not installed and --no-litellm-install was given ({venv})"
        print(f"installing litellm[proxy] into {venv} (first run only) ...", file=sys.stderr,
              flush=True)  # fmt: skip
        venv.parent.mkdir(parents=True, exist_ok=True)
        made = _run([sys.executable, "-m", "venv", "--clear", str(venv)], 300)
        if made.returncode != 0:
            return None, "", f"could not create {venv}: {made.stderr.strip()[-500:]}"
        start = time.perf_counter()
        pip = _run([str(py), "-m", "pip", "install", "--quiet", "--timeout", "30", "--retries", "2",
                    "litellm[proxy]", "httptools"], 900)  # fmt: skip
        if pip.returncode != 0 or not exe.exists():
            return None, "", f"pip install litellm[proxy] failed: {pip.stderr.strip()[-800:]}"
        took = time.perf_counter() - start
        how = f"its own virtualenv {venv}, installed from PyPI in {took:.0f}s"
    if install and _run([str(py), "-c", "import httptools"], 60).returncode != 0:
        # Without it uvicorn falls back to the pure-Python h11 parser; give LiteLLM
        # uvicorn's C parser, as the hub has aiohttp's (uvloop comes with litellm[proxy]).
        _run([str(py), "-m", "pip", "install", "--quiet", "--timeout", "30", "httptools"], 300)
    version = _run([str(py), probe[1], probe[2]], 60).stdout.strip()
    return [str(exe)], version, how


LITELLM_LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                            "stream": "ext://sys.stderr"}},
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn.error": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}  # fmt: skip


def litellm_config(model: str, engine_url: str, master_key: str) -> str:
    """A proxy config (YAML is a superset of JSON) routing ``model`` to the sim server."""
    return msgspec.json.encode({
        "model_list": [{
            "model_name": model,
            "litellm_params": {"model": f"openai/{model}", "api_base": f"{engine_url}/v1",
                               "api_key": "sk-unused"},
        }],
        "general_settings": {"master_key": master_key},
        "litellm_settings": {"set_verbose": False, "telemetry": False},
    }).decode()  # fmt: skip


# --- load ----------------------------------------------------------------------------------------


class Target(msgspec.Struct, frozen=True):
    """Where a request goes: the chat completions URL and the headers it needs."""

    name: str
    url: str
    headers: dict[str, str]


def chat_body(model: str, *, max_tokens: int, stream: bool, text: str = "Say hello") -> bytes:
    return msgspec.json.encode({
        "model": model, "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens, "stream": stream,
    })  # fmt: skip


class Failed(Exception):
    """A request that did not get the answer the bench expects."""


async def complete(session: aiohttp.ClientSession, target: Target, body: bytes) -> float:
    """Seconds for one non-streaming completion, read to its last byte."""
    start = time.perf_counter()
    async with session.post(target.url, data=body, headers=target.headers) as resp:
        data = await resp.read()
        elapsed = time.perf_counter() - start
        if resp.status != 200 or b'"choices"' not in data:
            raise Failed(f"{target.name}: HTTP {resp.status}: {data[:300]!r}")
    return elapsed


async def stream_ttft(
    session: aiohttp.ClientSession, target: Target, body: bytes
) -> tuple[float, float]:
    """``(seconds to the first SSE event, seconds to [DONE])`` of one streamed completion."""
    start = time.perf_counter()
    first = 0.0
    data = bytearray()
    async with session.post(target.url, data=body, headers=target.headers) as resp:
        if resp.status != 200:
            raise Failed(f"{target.name}: HTTP {resp.status}: {(await resp.read())[:300]!r}")
        async for piece in resp.content.iter_any():
            if not first and b"data:" in piece:
                first = time.perf_counter()
            data += piece
    end = time.perf_counter()
    if not data.rstrip().endswith(b"data: [DONE]"):
        raise Failed(f"{target.name}: stream without [DONE]: {bytes(data[-300:])!r}")
    return first - start, end - start


async def interleaved(
    session: aiohttp.ClientSession,
    targets: Sequence[Target],
    n: int,
    one: Callable[[aiohttp.ClientSession, Target, bytes], Any],
    body: bytes,
) -> dict[str, list[Any]]:
    """``n`` sequential requests to each target, alternating targets (concurrency 1),
    so slow drifts of the shared machine hit every target alike."""
    out: dict[str, list[Any]] = {t.name: [] for t in targets}
    for i in range(n):
        order = targets if i % 2 == 0 else list(reversed(targets))
        for target in order:
            out[target.name].append(await one(session, target, body))
    return out


class LoopResult(msgspec.Struct, kw_only=True):
    """A closed loop's window: completions, errors, latencies and CPU per process."""

    target: str
    concurrency: int
    window_s: float
    completed: int
    errors: int
    first_error: str = ""
    rps: float = 0.0
    latency_ms: dict[str, float] = {}
    cpu_s: dict[str, float] = {}


async def closed_loop(
    session: aiohttp.ClientSession,
    target: Target,
    body: bytes,
    *,
    concurrency: int,
    warmup_s: float,
    window_s: float,
    cpu: Callable[[], dict[str, float]],
) -> LoopResult:
    """``concurrency`` workers each send the next request as soon as one returns.

    Only requests that finish inside the window (after ``warmup_s``) count;
    CPU of every process is read at the window's edges.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    t_open, t_close = start + warmup_s, start + warmup_s + window_s
    latencies: list[float] = []
    errors: list[str] = []
    cpu_marks: dict[str, dict[str, float]] = {}

    async def worker() -> None:
        while loop.time() < t_close:
            try:
                elapsed = await complete(session, target, body)
            except (Failed, aiohttp.ClientError, OSError, TimeoutError) as exc:
                if t_open <= loop.time() < t_close:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            if t_open <= loop.time() < t_close:  # counted by when it finished
                latencies.append(elapsed)

    async def marks() -> None:
        await asyncio.sleep(t_open - loop.time())
        cpu_marks["open"] = cpu()
        await asyncio.sleep(t_close - loop.time())
        cpu_marks["close"] = cpu()

    await asyncio.gather(marks(), *(worker() for _ in range(concurrency)))
    used = {k: round(cpu_marks["close"][k] - cpu_marks["open"].get(k, 0.0), 3)
            for k in cpu_marks["close"]}  # fmt: skip
    if "machine_busy" in used:  # what is left of the machine's busy time is someone else's
        busy = used.pop("machine_busy")
        used["other_processes"] = round(max(busy - sum(used.values()), 0.0), 3)
    return LoopResult(
        target=target.name, concurrency=concurrency, window_s=window_s,
        completed=len(latencies), errors=len(errors), first_error=errors[0] if errors else "",
        rps=len(latencies) / window_s, latency_ms=percentiles_ms(latencies), cpu_s=used,
    )  # fmt: skip


class StreamStats(msgspec.Struct, kw_only=True):
    """What one held SSE stream saw."""

    ok: bool = False
    error: str = ""
    tokens: int = 0
    done: bool = False
    opened: float = 0.0  # headers received (perf_counter)
    first: float = 0.0
    ended: float = 0.0
    max_gap_s: float = 0.0


async def held_stream(
    session: aiohttp.ClientSession, target: Target, body: bytes, expect_tokens: int
) -> StreamStats:
    """One long stream, read event by event: its tokens, [DONE], and the largest gap."""
    stats = StreamStats()
    last = 0.0
    try:
        async with session.post(target.url, data=body, headers=target.headers) as resp:
            stats.opened = time.perf_counter()
            if resp.status != 200:
                stats.error = f"HTTP {resp.status}: {(await resp.read())[:200]!r}"
                return stats
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                now = time.perf_counter()
                if last:
                    stats.max_gap_s = max(stats.max_gap_s, now - last)
                else:
                    stats.first = now
                last = now
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    stats.done = True
                    continue
                event = msgspec.json.decode(payload)
                for choice in event.get("choices") or ():
                    if (choice.get("delta") or {}).get("content"):
                        stats.tokens += 1
            stats.ended = time.perf_counter()
    except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError) as exc:
        stats.error = f"{type(exc).__name__}: {exc}"[:300]
        return stats
    stats.ok = stats.done and stats.tokens == expect_tokens
    if not stats.ok and not stats.error:
        stats.error = f"done={stats.done} tokens={stats.tokens}/{expect_tokens}"
    return stats


async def many_streams(
    session: aiohttp.ClientSession,
    target: Target,
    body: bytes,
    *,
    count: int,
    expect_tokens: int,
    ramp_s: float,
) -> list[StreamStats]:
    """``count`` streams opened evenly over ``ramp_s`` seconds and read to the end."""
    batches = max(1, int(ramp_s / 0.05))
    per = -(-count // batches)
    tasks: list[asyncio.Task[StreamStats]] = []
    for b in range(batches):
        tasks += [asyncio.create_task(held_stream(session, target, body, expect_tokens))
                  for _ in range(min(per, count - b * per))]  # fmt: skip
        await asyncio.sleep(0.05)
    return list(await asyncio.gather(*tasks))


def max_overlap(spans: Iterable[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    edges = sorted([(a, 1) for a, b in spans if b > a] + [(b, -1) for a, b in spans if b > a])
    best = cur = 0
    for _, step in edges:
        cur += step
        best = max(best, cur)
    return best


# --- numbers -----------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) with linear interpolation (``statistics`` 'inclusive')."""
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=1000, method="inclusive")
    return cuts[round(q * 1000) - 1]


def percentiles_ms(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max and mean, in milliseconds."""
    if not values:
        return {}
    return {
        "p50": round(quantile(values, 0.50) * 1e3, 4),
        "p90": round(quantile(values, 0.90) * 1e3, 4),
        "p99": round(quantile(values, 0.99) * 1e3, 4),
        "max": round(max(values) * 1e3, 4),
        "mean": round(statistics.fmean(values) * 1e3, 4),
        "n": len(values),
    }


# --- profiling (optional) ------------------------------------------------------------------


def py_spy(venv: Path) -> Path | None:
    """py-spy on PATH, beside this interpreter, or in ``venv`` (installed there from PyPI)."""
    import shutil

    for candidate in (shutil.which("py-spy"), Path(sys.executable).parent / "py-spy",
                      venv / "bin" / "py-spy"):  # fmt: skip
        if candidate and Path(candidate).exists():
            return Path(candidate)
    if _run([sys.executable, "-m", "venv", str(venv)], 300).returncode != 0:
        return None
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "py-spy"], 600)
    exe = venv / "bin" / "py-spy"
    return exe if exe.exists() else None


class Profiler:
    """``py-spy record`` attached to some processes for the length of a ``with`` block.

    Samples go to ``<out>/<label>-<process>.txt`` as collapsed stacks (flamegraph
    input) and are summarised by :func:`hot_spots`. ``--nonblocking`` keeps py-spy
    from pausing the process it samples, so the timings move less.
    """

    def __init__(self, exe: Path, out: Path, *, rate: int = 500, mode: str = "nonblocking") -> None:
        self.exe, self.out, self.rate = exe, out, rate
        #: ``nonblocking`` (the default), ``blocking`` (exact stacks, pauses the process)
        #: or ``native`` (blocking, with C frames: uvloop, syscalls, msgspec).
        self.flags = {"nonblocking": ["--nonblocking"], "blocking": [],
                      "native": ["--native"]}[mode]  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def record(self, label: str, procs: Sequence[Proc]) -> Any:
        running: list[tuple[subprocess.Popen[bytes], Path]] = []
        for proc in procs:
            path = self.out / f"{label}-{proc.name}.txt"
            argv = [str(self.exe), "record", "--pid", str(proc.pid), "--rate", str(self.rate),
                    "--format", "raw", *self.flags, "-o", str(path)]  # fmt: skip
            running.append((subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL), path))  # fmt: skip
        time.sleep(0.5)  # let py-spy attach
        try:
            yield
        finally:
            for spy, _ in running:
                with contextlib.suppress(ProcessLookupError):
                    spy.send_signal(signal.SIGINT)
            for spy, _ in running:
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait(5)


def _frame(raw: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (to/file.py)``: one entry per function."""
    name, _, where = raw.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(file.split('/')[-2:])})"


def hot_spots(path: Path, top: int = 25) -> dict[str, Any]:
    """The functions that hold the most samples in a collapsed-stack file.

    py-spy leaves out idle samples (a thread waiting in ``epoll``), so shares
    are of busy time. ``inclusive``: share of samples with the function
    anywhere on the stack; ``self``: share with it on top.
    """
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    busy = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        busy += count
        for frame in dict.fromkeys(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count

    def table(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [(frame, round(100.0 * n / max(busy, 1), 1)) for frame, n in ranked]

    return {"busy_samples": busy, "self_pct": table(own), "inclusive_pct": table(inclusive)}
