"""Weights downloads over real loopback HTTP: resume, verify, bound the disk, fail clearly.

Servers here are real aiohttp servers on 127.0.0.1: :mod:`porten.agent.weights.serve`
(what ``porten up`` serves weights with), and small ones that misbehave on
purpose — cut a stream short, stall, ignore ``Range``. Every failure is
checked by its exact message, since the node's owner reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import attrs
import pytest
from agent_harness import eventually
from aiohttp import web
from stand_ins import gguf, sha256

from porten.agent.engines.base import EngineError
from porten.agent.weights.cache import MIB, WeightCache
from porten.agent.weights.fetcher import WeightFetcher
from porten.agent.weights.serve import ServedFile, serving
from porten.domain.values import CatalogEntry

SIZE = 3 * MIB + 12345
DATA = gguf(SIZE, seed=1)


def entry(ref: str, *, sha: str = sha256(DATA), model: str = "m") -> CatalogEntry:
    return CatalogEntry(id=model, vram_mb=10, disk_mb=4, download_ref=ref, sha256=sha)


@attrs.define
class Seen:
    """What a progress callback saw."""

    calls: list[tuple[int, int]] = attrs.field(factory=list)

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))


@pytest.fixture
def weights_file(tmp_path: Path) -> ServedFile:
    """DATA as two parts, served as one file (as the packaged GGUF is)."""
    a, b = tmp_path / "src" / "w.part0", tmp_path / "src" / "w.part1"
    a.parent.mkdir()
    a.write_bytes(DATA[: MIB + 7])
    b.write_bytes(DATA[MIB + 7 :])
    return ServedFile("w.gguf", (a, b))


@pytest.fixture
async def base_url(weights_file: ServedFile) -> AsyncIterator[str]:
    async with serving([weights_file]) as url:
        yield url


@contextlib.asynccontextmanager
async def custom_server(
    handler: Callable[[web.Request], object],
) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/w.gguf", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/w.gguf"
    finally:
        await runner.cleanup()


async def until_received(seen: Seen, size: int) -> None:
    """Wait until the client reports ``size`` bytes received (bounded).

    A test cuts a connection only after this: aiohttp drops what it buffered
    but had not handed over when a connection breaks, so cutting earlier
    would make how much survives a matter of timing.
    """
    await eventually(lambda: bool(seen.calls) and seen.calls[-1][0] >= size,
                     what=f"{size} bytes received")


def fetcher(tmp_path: Path, budget_mb: int = 100, **options: float) -> WeightFetcher:
    return WeightFetcher(WeightCache(tmp_path / "cache", budget_mb * MIB), **options)


async def test_a_download_is_verified_and_cached_with_growing_progress(
    tmp_path: Path, base_url: str
) -> None:
    """The file lands under its final name, progress only grows, and ends at the total."""
    f = fetcher(tmp_path)
    seen = Seen()
    try:
        path = await f.ensure(entry(f"{base_url}/w.gguf"), seen)
        assert path.read_bytes() == DATA
        assert f.cache.on_disk() == ("m",)
        assert seen.calls[0] == (0, SIZE)
        assert seen.calls[-1] == (SIZE, SIZE)
        done = [d for d, _ in seen.calls]
        assert done == sorted(done)  # (mid-download figures: see the e2e's paused server)
        again = Seen()
        assert await f.ensure(entry(f"{base_url}/w.gguf"), again) == path
        assert again.calls == []  # from the cache: nothing downloaded
    finally:
        await f.aclose()


async def test_an_interrupted_download_resumes_with_a_range_request(tmp_path: Path) -> None:
    """A stream cut short is resumed from its last byte; the bytes are sent once in all."""
    ranges: list[str] = []
    sent: list[int] = []
    f = fetcher(tmp_path)
    seen = Seen()

    async def cut_once(request: web.Request) -> web.StreamResponse:
        ranges.append(request.headers.get("Range", ""))
        start = int(m.group(1)) if (m := re.match(r"bytes=(\d+)-", ranges[-1])) else 0
        resp = web.StreamResponse(status=206 if start else 200)
        resp.content_length = SIZE - start
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{SIZE - 1}/{SIZE}"
        await resp.prepare(request)
        if len(ranges) == 1:  # the first answer stops halfway and drops the connection
            await resp.write(DATA[: SIZE // 2])
            sent.append(SIZE // 2)
            await until_received(seen, SIZE // 2)
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write(DATA[start:])
        sent.append(SIZE - start)
        return resp

    async with custom_server(cut_once) as url:
        try:
            path = await f.ensure(entry(url), seen)
        finally:
            await f.aclose()
    assert path.read_bytes() == DATA
    assert ranges == ["", f"bytes={SIZE // 2}-"]
    assert sum(sent) == SIZE  # every byte sent once


async def test_a_download_that_keeps_breaking_fails_and_the_next_load_resumes(
    tmp_path: Path,
) -> None:
    """After three broken attempts the load fails clearly; the partial file is kept."""
    ranges: list[str] = []
    f = fetcher(tmp_path)
    seen = Seen()

    async def always_cut(request: web.Request) -> web.StreamResponse:
        ranges.append(request.headers.get("Range", ""))
        start = len(ranges) * MIB - MIB
        resp = web.StreamResponse(status=206 if start else 200)
        resp.content_length = SIZE - start
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{SIZE - 1}/{SIZE}"
        await resp.prepare(request)
        await resp.write(DATA[start : start + MIB])
        await until_received(seen, start + MIB)
        assert request.transport is not None
        request.transport.close()
        return resp

    async with custom_server(always_cut) as url:
        try:
            with pytest.raises(EngineError) as caught:
                await f.ensure(entry(url), seen)
        finally:
            await f.aclose()
    assert ranges == ["", f"bytes={MIB}-", f"bytes={2 * MIB}-"]
    message = str(caught.value)
    assert message.startswith(f"downloading the weights of 'm' failed: downloading {url} ")
    assert message.endswith("; gave up after 3 attempts (the next load resumes)")
    assert f.cache.partial_bytes("m") == 3 * MIB


async def test_a_404_fails_the_load_with_the_status(tmp_path: Path, base_url: str) -> None:
    """A ref that does not exist says so, with the URL and the status."""
    f = fetcher(tmp_path)
    try:
        with pytest.raises(EngineError) as caught:
            await f.ensure(entry(f"{base_url}/missing.gguf"), Seen())
    finally:
        await f.aclose()
    assert str(caught.value) == (
        f"downloading the weights of 'm' failed: {base_url}/missing.gguf answered 404 Not Found"
    )


async def test_a_stalled_server_times_out(tmp_path: Path) -> None:
    """A server that stops sending fails the load after the stall timeout."""

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = SIZE
        await resp.prepare(request)
        await resp.write(DATA[:1000])
        await asyncio.Event().wait()  # never another byte
        return resp

    async with custom_server(stall) as url:
        f = fetcher(tmp_path, stall_timeout_s=0.3)
        try:
            with pytest.raises(EngineError) as caught:
                await f.ensure(entry(url), Seen())
        finally:
            await f.aclose()
    assert str(caught.value) == (
        f"downloading the weights of 'm' failed: downloading {url} timed out: no data for 0.3 s"
    )


async def test_a_different_file_is_deleted_and_fails_the_load(
    tmp_path: Path, base_url: str
) -> None:
    """A sha256 mismatch deletes what was downloaded and names both digests."""
    wrong = "0" * 64
    f = fetcher(tmp_path)
    try:
        with pytest.raises(EngineError) as caught:
            await f.ensure(entry(f"{base_url}/w.gguf", sha=wrong), Seen())
    finally:
        await f.aclose()
    assert str(caught.value) == (
        f"the weights of 'm' from {base_url}/w.gguf are not the catalog's: sha256 "
        f"{sha256(DATA)} != {wrong}; the file was deleted"
    )
    assert list((tmp_path / "cache").glob("*.gguf*")) == []


async def test_a_disk_budget_too_small_refuses_before_downloading(
    tmp_path: Path, base_url: str
) -> None:
    """The size is checked against PORTEN_AUTO_DOWNLOAD_MB before a byte is written."""
    f = fetcher(tmp_path, budget_mb=2)
    seen = Seen()
    try:
        with pytest.raises(EngineError) as caught:
            await f.ensure(entry(f"{base_url}/w.gguf"), seen)
    finally:
        await f.aclose()
    assert str(caught.value) == (
        "'m' needs 4 MB of disk but the weight cache (PORTEN_AUTO_DOWNLOAD_MB=2) can free only 2 MB"
    )
    assert seen.calls == []
    assert f.cache.used_bytes() == 0


async def test_a_server_that_ignores_range_restarts_from_zero(tmp_path: Path) -> None:
    """A 200 to a Range request means the whole file: the partial is rewritten, not appended."""

    async def no_ranges(request: web.Request) -> web.Response:
        return web.Response(body=DATA)

    async with custom_server(no_ranges) as url:
        f = fetcher(tmp_path)
        f.cache.partial_path("m").write_bytes(b"GGUF-stale-prefix")
        try:
            path = await f.ensure(entry(url), Seen())
        finally:
            await f.aclose()
    assert path.read_bytes() == DATA


async def test_a_file_ref_is_copied_and_resumed(tmp_path: Path) -> None:
    """file:// refs work the same way, resuming a partial copy."""
    source = tmp_path / "w.gguf"
    source.write_bytes(DATA)
    f = fetcher(tmp_path)
    f.cache.partial_path("m").write_bytes(DATA[:MIB])
    seen = Seen()
    path = await f.ensure(entry(source.as_uri()), seen)
    assert path.read_bytes() == DATA
    assert seen.calls[0] == (MIB, SIZE)


async def test_unusable_refs_are_refused(tmp_path: Path) -> None:
    """No ref, an unknown scheme, a missing file: each says what is wrong."""
    f = fetcher(tmp_path)
    cases = {
        "": "'m' has no download_ref in the catalog and its weights are not on this node",
        "ftp://example/w.gguf": "downloading the weights of 'm' failed: download_ref "
        "'ftp://example/w.gguf': only http(s):// and file:// are supported",
        (tmp_path / "nope.gguf").as_uri(): "downloading the weights of 'm' failed: "
        f"{(tmp_path / 'nope.gguf').as_uri()}: No such file or directory",
    }
    for ref, message in cases.items():
        with pytest.raises(EngineError) as caught:
            await f.ensure(entry(ref), Seen())
        assert str(caught.value) == message


async def test_the_weights_server_speaks_range(weights_file: ServedFile, base_url: str) -> None:
    """206 with Content-Range across parts, 416 past the end, HEAD without a body."""
    url = f"{base_url}/w.gguf"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Range": f"bytes={MIB}-{MIB + 99}"}) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes {MIB}-{MIB + 99}/{SIZE}"
            assert await resp.read() == DATA[MIB : MIB + 100]
        async with http.get(url, headers={"Range": f"bytes={SIZE}-"}) as resp:
            assert resp.status == 416
            assert resp.headers["Content-Range"] == f"bytes */{SIZE}"
        async with http.head(url) as resp:
            assert (resp.status, resp.headers["Content-Length"]) == (200, str(SIZE))
            assert resp.headers["Accept-Ranges"] == "bytes"
