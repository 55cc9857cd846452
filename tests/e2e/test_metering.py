"""Metering through the real hub: every request billed once, for exactly what was generated.

Concurrent streams end three ways — completed, cancelled by the client,
cut off by their node being SIGKILLed — and each leaves exactly one
``request_served`` event whose tokens are what the engine generated and whose
cost is those tokens at the catalog's prices. ``GET /v1/usage`` and
``porten usage`` then report the same sums.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from keys_harness import bearer, enrol, keyed_account
from v1_harness import CHAT, SLOW, SPARE, Porten, eventually, long_prompt, serving, user

from porten.config import Settings
from porten.domain.catalog import default_entry
from porten.services.accounts import Account

pytestmark = pytest.mark.postgres

EACH = 4  # streams of each kind


@pytest.fixture
async def slow_porten(settings: Settings) -> AsyncIterator[Porten]:
    """The hub with a local node generating 20 tokens a second."""
    async with serving(settings, profile=SLOW) as p:
        yield p


async def doomed_agent(porten: Porten, owner: Account, tmp_path: Path
                       ) -> asyncio.subprocess.Process:
    """``porten agent run`` in its own process, owned by ``owner``, serving the spare model."""
    credential = await enrol(porten, "doomed", owner_id=owner.user_id)
    env = {
        **os.environ, "PORTEN_HUB_URL": porten.url, "PORTEN_NODE_CREDENTIAL": credential,
        "PORTEN_ENGINE": "sim", "PORTEN_ENGINE_MODELS": SPARE,
        "PORTEN_SIM_PROFILE": json.dumps({"ttft_ms": 0, "tokens_per_s": SLOW.tokens_per_s}),
        "PORTEN_DATA_DIR": str(tmp_path / "agent"), "PORTEN_LOG_LEVEL": "warning",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "porten", "agent", "run", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await eventually(lambda: proc.returncode is not None or porten.serves("doomed", SPARE),
                     within=60.0, what="the agent process serving")
    assert proc.returncode is None
    return proc


async def stream(porten: Porten, token: str, rid: str, body: dict[str, Any], *,
                 stop_after: int | None = None, started: asyncio.Event | None = None) -> int:
    """Stream ``body``; the tokens received (one per content delta; stop after ``stop_after``)."""
    received = 0
    headers = {**bearer(token), "X-Request-Id": rid}
    async with (
        aiohttp.ClientSession() as http,
        http.post(porten.api_base + "/chat/completions", json={**body, "stream": True},
                  headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.read()
        async for line in resp.content:
            if not line.startswith(b"data: {") or b'"error"' in line:
                continue
            choices = json.loads(line[6:])["choices"]
            if choices and (choices[0]["delta"].get("content")
                            or choices[0]["delta"].get("reasoning_content")):
                received += 1
            if received == 3 and started is not None:
                started.set()
            if stop_after is not None and received >= stop_after:
                return received  # leaving the block closes the connection: a cancel
    return received


async def test_every_stream_is_billed_once_for_what_was_generated(
    slow_porten: Porten, tmp_path: Path
) -> None:
    """Completed, cancelled and killed streams at once: one event each, tokens as generated."""
    porten = slow_porten
    owner, token = await keyed_account(porten, "m@example.org")
    doomed = await doomed_agent(porten, owner, tmp_path)
    prompt = long_prompt(CHAT, SLOW, min_tokens=40)
    spare_prompt = long_prompt(SPARE, SLOW, min_tokens=40)
    kill_starts = [asyncio.Event() for _ in range(EACH)]
    tasks = {
        **{f"done-{i}": stream(porten, token, f"done-{i}",
                               {"model": CHAT, "messages": user(f"q{i}"), "max_tokens": 10})
           for i in range(EACH)},
        **{f"cancel-{i}": stream(porten, token, f"cancel-{i}",
                                 {"model": CHAT, "messages": user(prompt)}, stop_after=3)
           for i in range(EACH)},
        **{f"kill-{i}": stream(porten, token, f"kill-{i}",
                               {"model": SPARE, "messages": user(spare_prompt)},
                               started=kill_starts[i])
           for i in range(EACH)},
    }
    running = {rid: asyncio.create_task(coro) for rid, coro in tasks.items()}
    for started in kill_starts:
        await asyncio.wait_for(started.wait(), 30.0)
    doomed.send_signal(signal.SIGKILL)
    received = {rid: await task for rid, task in running.items()}
    await doomed.wait()

    async def cancels_seen() -> bool:
        return (await porten.sim_stats())["cancelled"] == EACH

    await eventually(cancels_seen, what="the engine saw every cancel")
    events = {e.request_id: e for e in await porten.served(3 * EACH, within=30.0)}
    assert set(events) == set(tasks)
    stats = await porten.sim_stats()
    local = [e for e in events.values() if e.node_id == "local"]
    assert sum(e.completion_tokens for e in local) == stats["tokens_generated"]
    for i in range(EACH):
        done, cancel, kill = events[f"done-{i}"], events[f"cancel-{i}"], events[f"kill-{i}"]
        assert (done.outcome, done.completion_tokens) == ("ok", received[f"done-{i}"])
        assert cancel.outcome == "cancelled"
        assert received[f"cancel-{i}"] <= cancel.completion_tokens
        assert (kill.outcome, kill.node_id) == ("node_error", "doomed")
        assert kill.completion_tokens == received[f"kill-{i}"] >= 3
    for e in events.values():
        entry = default_entry(e.model_id)
        assert e.cost_usd == pytest.approx((e.prompt_tokens * entry.price_in_per_m
                                            + e.completion_tokens * entry.price_out_per_m) / 1e6)
        assert e.account_id == owner.user_id
        assert e.node_owner_id == ("local" if e.node_id == "local" else owner.user_id)

    today = dt.datetime.now(dt.UTC).date().isoformat()
    reply = await porten.get("/v1/usage", headers=bearer(token))
    assert reply.status == 200, reply.body
    report = reply.json()
    [key] = porten.hub.keys.owned_by(owner.user_id)
    by_model = {line["model"]: line for line in report["data"]}
    assert set(by_model) == {CHAT, SPARE}
    for model, line in by_model.items():
        mine = [e for e in events.values() if e.model_id == model]
        assert line == {
            "date": today, "key_id": key.key_id, "model": model, "requests": len(mine),
            "prompt_tokens": sum(e.prompt_tokens for e in mine),
            "completion_tokens": sum(e.completion_tokens for e in mine),
            "cost_usd": pytest.approx(sum(e.cost_usd for e in mine)),
        }
    assert report["total"]["requests"] == 3 * EACH
    assert report["total"]["usd"] == pytest.approx(sum(e.cost_usd for e in events.values()))
    [earned] = report["earnings"]
    killed = [e for e in events.values() if e.node_id == "doomed"]
    assert (earned["node_id"], earned["requests"]) == ("doomed", EACH)
    assert earned["earned_usd"] == pytest.approx(sum(e.cost_usd for e in killed))

    cli = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "porten", "usage", "--json", "--base-url", porten.api_base,
        "--api-key", token], capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == report


async def test_the_usage_api_refuses_bad_periods_and_foreign_keys(porten: Porten) -> None:
    """Malformed dates, reversed or too long periods and another account's key: exact errors."""
    _, token = await keyed_account(porten, "a@example.org")
    cases = [
        ("?start=yesterday", 400, "invalid_value", "start",
         "'start' must be a date like 2026-01-31."),
        ("?start=2026-02-01&end=2026-01-01", 400, "invalid_value", "start",
         "'start' must not be after 'end'."),
        ("?start=2024-01-01&end=2026-01-01", 400, "invalid_value", "start",
         "A report covers at most 366 days."),
        ("?key_id=key_elsewhere", 404, "not_found", None,
         "This account has no API key with id 'key_elsewhere'."),
    ]
    for query, status, code, param, message in cases:
        reply = await porten.get("/v1/usage" + query, headers=bearer(token))
        assert reply.status == status, reply.body
        assert reply.error == {"message": message, "type": "invalid_request_error",
                               "param": param, "code": code}
    empty = (await porten.get("/v1/usage?start=2026-01-01&end=2026-01-31",
                              headers=bearer(token))).json()
    assert empty["data"] == []
    assert (empty["start"], empty["end"]) == ("2026-01-01", "2026-01-31")
