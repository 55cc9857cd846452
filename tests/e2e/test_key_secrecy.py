"""No API key in a log line, an error or an event: a real hub process, real keys, every path.

``porten up`` runs with debug logging in JSON; an operator is made with
``porten admin create-user --admin``; keys are minted, used (answered,
streamed, refused, rate-limited), mistyped and revoked through the HTTP
APIs. Afterwards not one token — nor its secret part without the prefix,
nor a truncated one — appears in the hub's stderr, in the log (``porten
events export``), or in any error body.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import pytest

pytestmark = pytest.mark.postgres


def porten(*args: str) -> str:
    """Run a ``porten`` command; its stdout."""
    proc = subprocess.run([sys.executable, "-m", "porten", *args], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def call(method: str, url: str, token: str, body: object = None) -> tuple[int, bytes]:
    """An HTTP call with ``token``; (status, body)."""
    request = urllib.request.Request(
        url, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def fragments(token: str) -> list[bytes]:
    """What must never appear: the token, its secret part, and a truncated token."""
    return [token.encode(), token.removeprefix("sk-porten-").encode(), token[:-1].encode()]


def test_no_key_ever_reaches_a_log_an_error_or_an_event(data_dir: Path, tmp_path: Path) -> None:
    """Keys used on every path leave no trace anywhere durable or visible."""
    stderr = (tmp_path / "hub.log").open("wb")
    env = {**os.environ, "PORTEN_LOG_FORMAT": "json", "PORTEN_LOG_LEVEL": "debug"}
    hub = subprocess.Popen([sys.executable, "-m", "porten", "up", "--data-dir", str(data_dir),
                            "--port", "0", "--json"], stdout=subprocess.PIPE, stderr=stderr,
                           env=env)
    secrets: list[str] = []
    bodies: list[bytes] = []
    try:
        assert hub.stdout is not None
        up = msgspec.json.decode(hub.stdout.readline())
        base = up["base_url"].removesuffix("/v1")
        secrets.append(up["api_key"])
        made = json.loads(porten("admin", "create-user", "op@example.org", "--admin", "--json",
                                 "--data-dir", str(data_dir)))
        operator = made["api_key"]
        secrets.append(operator)
        status, body = call("POST", base + "/admin/v1/users", operator,
                            {"email": "dev@example.org"})
        assert status == 201, body
        owner = json.loads(body)["id"]
        status, body = call("POST", base + "/admin/v1/keys", operator,
                            {"owner_id": owner, "policy": {"requests_per_min": 3}})
        assert status == 201, body
        minted = json.loads(body)
        token = minted["api_key"]
        secrets.append(token)
        chat = {"model": "qwen2.5-7b-instruct", "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}]}
        bodies.extend(
            call("POST", base + "/v1/chat/completions", token, request)[1]
            for request in (chat, {**chat, "stream": True}, {**chat, "model": "nope"},
                            {**chat, "messages": "not a list"}, chat, chat)
        )
        bodies.append(call("GET", base + "/v1/usage", token)[1])
        for wrong in (token[:-1] + ("A" if token[-1] != "A" else "B"), token[:-1], token + "x"):
            status, body = call("POST", base + "/v1/chat/completions", wrong, chat)
            assert status == 401
            bodies.append(body)
        status, body = call("POST", base + f"/admin/v1/keys/{minted['id']}/revoke", operator,
                            {"reason": "test"})
        assert status == 200
        status, body = call("POST", base + "/v1/chat/completions", token, chat)
        assert status == 401
        bodies.append(body)
        bodies.append(call("GET", base + "/admin/v1/keys", token)[1])
        bodies.append(call("GET", base + "/admin/v1/keys", operator)[1])
    finally:
        hub.send_signal(signal.SIGINT)
        hub.wait(timeout=60)
        stderr.close()
    assert hub.returncode == 0
    log = (tmp_path / "hub.log").read_bytes()
    assert b'"event"' in log  # it did log, in JSON
    assert b"request served" in log or b"stream served" in log
    export = porten("events", "export", "--data-dir", str(data_dir)).encode()
    assert b"key_created" in export
    for secret in secrets:
        for fragment in fragments(secret):
            assert fragment not in log, "a key in the hub's log"
            assert fragment not in export, "a key in the event log"
            for body in bodies:
                assert fragment not in body, "a key in a response body"
