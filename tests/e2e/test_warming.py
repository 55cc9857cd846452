"""``/public/v1/models/warming``: a cold model's load, watched live as the portal watches it.

The local node downloads the 2 GB model in about 0.8 s and loads it in about
0.3 s, so the stream really passes through ``downloading`` (with bytes
growing) and ``loading`` before ``ready``. No API key is sent: the endpoint
is public.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import msgspec
import pytest
from loading_harness import assert_answered, chat, error_of, loading_hub, sse_payloads
from v1_harness import CHAT, SPARE, Porten

from porten.agent.engines.sim import SimProfile
from porten.config import Settings
from porten.domain import events as ev
from porten.domain.catalog import default_entry

pytestmark = pytest.mark.postgres

#: Download 2020 MB in about 0.8 s (progress recorded every 250 ms), load 3 GB in 0.3 s.
WATCHED = SimProfile(ttft_ms=1, tokens_per_s=2000, download_mb_per_s=2500, load_s_per_gb=0.1)
FIELDS = {"model", "ready", "phase", "done_mb", "total_mb", "pct"}
ORDER = ["cold", "queued", "downloading", "loading", "ready"]
NO_KEY: dict[str, str] = {}
SPARE_DISK_MB = default_entry(SPARE).disk_mb
SPARE_VRAM_MB = default_entry(SPARE).vram_mb


def status_url(model: str | None) -> str:
    """The one-shot progress URL for ``model`` (without the parameter when None)."""
    return "/public/v1/models/warming" + ("" if model is None else f"?model={model}")


async def watch(http: aiohttp.ClientSession, url: str, **headers: str) -> aiohttp.ClientResponse:
    """An open progress stream (checked to be one)."""
    resp = await http.get(url, headers=headers)
    assert resp.status == 200, await resp.read()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return resp


def whole_pct(e: dict[str, Any]) -> int:
    """The warm-up's percent from the event's own fields: the download fills 0-90, loading
    into memory 90-99, ready is 100."""
    share = e["done_mb"] / e["total_mb"] if e["total_mb"] else 0.0
    match e["phase"]:
        case "downloading":
            return int(share * 90)
        case "loading":
            return 90 + int(share * 9)
        case "ready":
            return 100
    return 0


def check_progress(events: list[dict[str, Any]]) -> None:
    """One stream's events: the spec's shape, phases in order, bytes only growing, then ready."""
    assert all(set(e) == FIELDS and e["model"] == SPARE for e in events), events
    phases = [e["phase"] for e in events]
    assert (phases[0], phases[-1]) == ("cold", "ready"), phases
    assert phases == sorted(phases, key=ORDER.index), phases
    assert {"downloading", "loading"} <= set(phases), phases
    assert all(e["ready"] == (e["phase"] == "ready") for e in events)
    for e in events:
        assert abs(e["pct"] - whole_pct(e)) <= 1, e  # the fields are whole MiB, pct is bytes
    pcts = [e["pct"] for e in events]
    assert pcts == sorted(pcts), pcts  # the bar never runs backwards, not even at loading
    downloads = [e for e in events if e["phase"] == "downloading"]
    assert {e["total_mb"] for e in downloads} == {SPARE_DISK_MB}
    done = [e["done_mb"] for e in downloads]
    assert done == sorted(done), done  # bytes arrive, never go back…
    assert len(set(done)) >= 2, done  # …and are seen arriving
    loads = [e for e in events if e["phase"] == "loading"]
    assert {e["total_mb"] for e in loads} == {SPARE_VRAM_MB}
    assert events[-1] == {
        "model": SPARE,
        "ready": True,
        "phase": "ready",
        "done_mb": SPARE_DISK_MB,
        "total_mb": SPARE_DISK_MB,
        "pct": 100,
    }


async def test_a_cold_load_is_watched_from_downloading_to_ready(settings: Settings) -> None:
    """Both SSE forms follow a cold load downloading → loading → ready; JSON shows before/after."""
    async with loading_hub(settings, profile=WATCHED) as porten:
        before = await porten.get(status_url(SPARE), headers=NO_KEY)
        assert before.status == 200
        assert before.json() == {
            "model": SPARE,
            "ready": False,
            "phase": "cold",
            "done_mb": 0,
            "total_mb": SPARE_DISK_MB,
            "pct": 0,
        }
        async with aiohttp.ClientSession() as http:
            streams = [
                await watch(http, porten.url + f"/public/v1/models/warming/stream?model={SPARE}"),
                await watch(http, porten.url + status_url(SPARE), Accept="text/event-stream"),
            ]
            firsts = [await s.content.readuntil(b"\n\n") for s in streams]
            assert [sse_payloads(f)[0]["phase"] for f in firsts] == ["cold", "cold"]
            request = asyncio.create_task(chat(porten, SPARE, "wake up"))
            rests = await asyncio.wait_for(asyncio.gather(*(s.read() for s in streams)), 10.0)
        for first, rest in zip(firsts, rests, strict=True):
            check_progress(sse_payloads(first + rest))
        assert_answered(await request, WATCHED, SPARE, "wake up")
        after = await porten.get(status_url(SPARE), headers=NO_KEY)
        assert after.json() == {
            "model": SPARE,
            "ready": True,
            "phase": "ready",
            "done_mb": SPARE_DISK_MB,
            "total_mb": SPARE_DISK_MB,
            "pct": 100,
        }


async def test_a_ready_model_streams_one_ready_event_and_ends(settings: Settings) -> None:
    """The stream of a model already serving sends ``ready`` once and closes."""
    async with loading_hub(settings, profile=WATCHED) as porten, aiohttp.ClientSession() as http:
        resp = await watch(http, porten.url + f"/public/v1/models/warming/stream?model={CHAT}")
        events = sse_payloads(await asyncio.wait_for(resp.read(), 5.0))
        chat_mb = default_entry(CHAT).disk_mb
        assert events == [
            {
                "model": CHAT,
                "ready": True,
                "phase": "ready",
                "done_mb": chat_mb,
                "total_mb": chat_mb,
                "pct": 100,
            }
        ]


async def test_unknown_or_missing_model_is_refused(settings: Settings) -> None:
    """An unknown or withdrawn model is 404 model_not_found, no ``model`` is 400, in every form."""
    async with loading_hub(settings, profile=WATCHED) as porten:
        sse = {"Accept": "text/event-stream"}
        for headers in (NO_KEY, sse):
            error_of(
                await porten.get(status_url("no-such-model"), headers=headers),
                404,
                "model_not_found",
            )
            error = error_of(
                await porten.get(status_url(None), headers=headers),
                400,
                "missing_required_parameter",
            )
            assert error["param"] == "model"
            error_of(
                await porten.get(status_url(""), headers=headers), 400, "missing_required_parameter"
            )
        stream = "/public/v1/models/warming/stream"
        error_of(
            await porten.get(f"{stream}?model=no-such-model", headers=NO_KEY),
            404,
            "model_not_found",
        )
        error_of(await porten.get(stream, headers=NO_KEY), 400, "missing_required_parameter")
        await withdraw(porten, SPARE)
        error_of(await porten.get(status_url(SPARE), headers=NO_KEY), 404, "model_not_found")


async def test_the_stream_ends_when_the_model_is_withdrawn_mid_load(settings: Settings) -> None:
    """A watched load whose model is withdrawn ends the stream instead of leaving it open."""
    slow = msgspec.structs.replace(WATCHED, download_mb_per_s=50)  # a 40 s download
    async with loading_hub(settings, profile=slow) as porten, aiohttp.ClientSession() as http:
        resp = await watch(http, porten.url + f"/public/v1/models/warming/stream?model={SPARE}")
        request = asyncio.create_task(chat(porten, SPARE, "wake up"))
        seen = b""
        while b'"phase":"downloading"' not in seen:
            seen += await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5.0)
        await withdraw(porten, SPARE)
        rest = await asyncio.wait_for(resp.read(), 5.0)
        phases = [e["phase"] for e in sse_payloads(seen + rest)]
        assert phases[0] == "cold", phases
        assert "ready" not in phases, phases
        assert (await asyncio.wait_for(request, 5.0)).status == 404


async def withdraw(porten: Porten, model: str) -> None:
    """Withdraw ``model`` from the catalog, as an operator does, and wait for the hub to know."""
    position = await porten.hub.writer.append(
        [ev.ModelWithdrawn(at=time.time(), actor="user:op", model_id=model, reason="retired")]
    )
    assert await porten.hub.projection.wait_until(position, 10.0)
