"""The hub as a user runs it: ``porten up`` on an embedded data dir, then Ctrl-C."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

pytestmark = pytest.mark.postgres


def _start(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PORTEN_LOG_FORMAT": "json"}
    return subprocess.Popen(
        [sys.executable, "-m", "porten", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def _read_lines(proc: subprocess.Popen[bytes], count: int, timeout: float) -> list[str]:
    """The first ``count`` stdout lines, or fail with the process's stderr after ``timeout``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and buf.count(b"\n") < count:
        if sel.select(timeout=0.5):
            data = os.read(fd, 65536)
            if not data:
                break
            buf += data
        elif proc.poll() is not None:
            break
    if buf.count(b"\n") >= count:
        return [line.decode() for line in buf.split(b"\n")[:count]]
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"no output from porten within {timeout}s; stderr:\n{err.decode()}")


@pytest.fixture
def hub(data_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A running ``porten up`` on a fresh embedded data dir, and its URL."""
    proc = _start("up", "--data-dir", str(data_dir), "--port", "0")
    line, key_line = _read_lines(proc, 2, timeout=90)
    assert line.startswith("export PORTEN_BASE_URL=http://127.0.0.1:")
    assert line.endswith("/v1")
    assert key_line.startswith("export PORTEN_API_KEY=sk-porten-")
    try:
        yield proc, line.split("=", 1)[1].removesuffix("/v1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return dict(msgspec.json.decode(resp.read()))


def test_up_serves_then_stops_cleanly_on_sigint(
    hub: tuple[subprocess.Popen[bytes], str], data_dir: Path
) -> None:
    """porten up answers health and status, and Ctrl-C stops it and its Postgres with exit 0."""
    proc, url = hub
    assert _get(f"{url}/healthz") == {"status": "ok"}
    status = _get(f"{url}/public/v1/status")
    assert status["nodes_online"] == 1
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert not (data_dir / "postgres" / "postmaster.pid").exists()


def test_second_hub_on_the_same_data_dir_is_refused(
    hub: tuple[subprocess.Popen[bytes], str], data_dir: Path
) -> None:
    """A second hub on a data dir in use exits 1 with one line naming the first one's pid."""
    proc, url = hub
    second = _start("hub", "--data-dir", str(data_dir), "--port", "0")
    _, err = second.communicate(timeout=60)
    assert second.returncode == 1
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("porten: error: another porten hub")
    assert f"pid {proc.pid}" in last
    assert _get(f"{url}/healthz") == {"status": "ok"}  # the first one is unharmed


def test_up_json_prints_the_base_url_and_key_as_one_document(data_dir: Path) -> None:
    """porten up --json prints {"base_url", "api_key"} instead of the two shell lines."""
    proc = _start("up", "--data-dir", str(data_dir), "--port", "0", "--json")
    try:
        [line] = _read_lines(proc, 1, timeout=90)
        doc = msgspec.json.decode(line)
        assert set(doc) == {"base_url", "api_key"}
        assert doc["base_url"].startswith("http://127.0.0.1:")
        assert doc["api_key"].startswith("sk-porten-")
        assert _get(doc["base_url"].removesuffix("/v1") + "/healthz") == {"status": "ok"}
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
