"""One llama.cpp server process serving one model on a free loopback port.

Which server: ``PORTEN_LLAMA_SERVER`` when the owner names one (a path or a
name on ``PATH``, speaking ``llama-server``'s flags), else ``llama-server``
when it is on ``PATH``, else the OpenAI-compatible server of
``llama-cpp-python`` (``python -m llama_cpp.server``, from ``porten[llama]``).

The process runs in its own process group, with its output in a log file
(the last lines of which explain a failed start). It is ready when
``GET /v1/models`` answers 200. It is stopped with SIGTERM to the group, then
SIGKILL after a grace period, so no worker it forked survives it. On Linux
the kernel also sends it SIGTERM if the agent dies without stopping it
(``PR_SET_PDEATHSIG``), so even a SIGKILLed agent leaves no engine behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import aiohttp
import structlog

from porten.agent.engines.base import EngineError

log = structlog.get_logger(__name__)

#: Seconds a server may take from spawn to answering (a big model on a slow disk).
START_TIMEOUT_S: Final = 300.0
#: Seconds between SIGTERM and SIGKILL.
STOP_GRACE_S: Final = 10.0
#: Seconds between readiness probes while a server starts.
PROBE_INTERVAL_S: Final = 0.1
_TAIL_LINES: Final = 15
_PR_SET_PDEATHSIG: Final = 1
_PYTHON_SERVER_MODULES: Final = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the server binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def find_server(
    explicit: str = "", *, which: Callable[[str], str | None] = shutil.which
) -> str | None:
    """The ``llama-server`` binary to run, or ``None`` for ``python -m llama_cpp.server``.

    Raises :class:`EngineError` when neither is available (or ``explicit`` is not there).
    """
    if explicit:
        binary = which(explicit)
        if binary is None:
            raise EngineError(
                f"PORTEN_LLAMA_SERVER={explicit!r} is not an executable file or a command on PATH"
            )
        return binary
    binary = which("llama-server")
    if binary is not None:
        return binary
    missing = [m for m in _PYTHON_SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise EngineError(
            "no llama.cpp server is installed: put llama-server on PATH, or "
            "pip install 'porten[llama]' (missing Python modules: " + ", ".join(missing) + ")"
        )
    return None


def server_command(
    model_path: Path,
    *,
    port: int,
    alias: str,
    ctx: int,
    hints: Mapping[str, str],
    explicit: str = "",
    which: Callable[[str], str | None] = shutil.which,
) -> list[str]:
    """The argv that serves ``model_path`` as ``alias`` on ``127.0.0.1:port``."""
    binary = find_server(explicit, which=which)
    if binary is not None:
        return _llama_server(binary, model_path, port=port, alias=alias, ctx=ctx, hints=hints)
    argv = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
        "--host", "127.0.0.1", "--port", str(port), "--model_alias", alias,
        "--n_ctx", str(ctx), "--n_gpu_layers", "-1",
    ]
    if hints.get("chat_format"):
        argv += ["--chat_format", hints["chat_format"]]
    return argv


def _llama_server(
    binary: str, model_path: Path, *, port: int, alias: str, ctx: int, hints: Mapping[str, str]
) -> list[str]:
    argv = [
        binary, "-m", str(model_path), "--host", "127.0.0.1", "--port", str(port),
        "--alias", alias, "-c", str(ctx), "-ngl", "999",
    ]
    if hints.get("chat_template"):
        argv += ["--chat-template", hints["chat_template"]]
    return argv


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: ask the kernel to SIGTERM this process when the agent dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class LlamaProcess:
    """A started server: its URL, and how to wait for it and stop it."""

    def __init__(
        self, model_id: str, argv: list[str], port: int, log_path: Path,
        *, on_exit: Callable[[LlamaProcess], None] | None = None,
    ) -> None:
        self.model_id = model_id
        self.argv = argv
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._on_exit = on_exit
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        """The server's process id (and process group id) once spawned."""
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it exited."""
        return None if self._proc is None else self._proc.returncode

    async def spawn(self) -> None:
        """Start the process (not yet ready: see :meth:`wait_ready`)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as out:
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                    start_new_session=True, preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise EngineError(f"cannot start {self.argv[0]}: {exc.strerror or exc}") from exc
        log.info("engine process started", model=self.model_id, pid=self._proc.pid,
                 port=self.port, command=self.argv[0])
        self._watch = asyncio.create_task(self._watch_exit(), name=f"llama-{self.model_id}")

    async def wait_ready(self, http: aiohttp.ClientSession, timeout_s: float) -> None:
        """Return once the server answers; :class:`EngineError` if it exits or takes too long."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        probe = aiohttp.ClientTimeout(total=2.0)
        while True:
            if self.returncode is not None:
                raise EngineError(
                    f"{self.argv[0]} exited at start with status {self.returncode}"
                    + self._tail_text()
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(self.url + "/v1/models", timeout=probe) as resp:
                    if resp.status == 200:
                        return
            if loop.time() > deadline:
                raise EngineError(
                    f"{self.argv[0]} did not answer within {timeout_s:g} s" + self._tail_text()
                )
            assert self._watch is not None
            with contextlib.suppress(TimeoutError):  # wakes early if the process exits
                await asyncio.wait_for(asyncio.shield(self._watch), PROBE_INTERVAL_S)

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``; returns once it is gone."""
        self._stopping = True
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                log.warning("engine process ignored SIGTERM; killing it", model=self.model_id,
                            pid=proc.pid)
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # any worker left in the group
        if self._watch is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        log.info("engine process stopped", model=self.model_id, pid=proc.pid,
                 status=proc.returncode)

    def tail(self) -> str:
        """The last lines the server wrote (its own explanation of a failure)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(line for line in lines[-_TAIL_LINES:] if line.strip())

    def _tail_text(self) -> str:
        tail = self.tail()
        return f"; its last output:\n{tail}" if tail else f"; see {self.log_path}"

    async def _watch_exit(self) -> None:
        assert self._proc is not None
        await self._proc.wait()
        if not self._stopping and self._on_exit is not None:
            self._on_exit(self)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
