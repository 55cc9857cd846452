"""Fetch a weights file from its ``download_ref`` into a partial file, resuming and hashing.

``http(s)://`` refs are fetched with aiohttp; a partial file left by an
earlier attempt is resumed with ``Range: bytes=<have>-`` (a server that
answers 200 instead of 206 gets the file from the start). ``file://`` refs
are copied the same way, from the same offset. The sha256 is computed while
the bytes arrive — on a worker thread, together with the file writes, so
hashing and disk never stall the socket — and the digest of the whole file
(the resumed prefix included) is returned for the caller to check.

A stream that breaks off is retried from where it stopped (a few times);
a server that sends nothing for ``stall_timeout_s`` fails the download, as
do 4xx/5xx answers. Every failure is a :class:`DownloadError` whose message
names the ref and what went wrong, for the node's owner and the hub's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

import aiohttp
import structlog

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: Bytes handed to the writer thread at a time.
BLOCK: Final = 4 * 1024 * 1024
#: Blocks queued for the writer thread before the download waits for it.
MAX_PENDING: Final = 8
#: Seconds without a byte before a download counts as timed out.
STALL_TIMEOUT_S: Final = 60.0
#: Attempts (the first included) when a stream breaks off mid-file.
ATTEMPTS: Final = 3
_CONTENT_RANGE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

#: ``(done_bytes, total_bytes)`` as the file grows.
Progress = Callable[[int, int], None]
#: Called once the total size is known, with ``(total_bytes, have_bytes)``; may raise to refuse.
SizeCheck = Callable[[int, int], None]


class DownloadError(Exception):
    """The weights could not be fetched; the message says from where and why."""


class _Interrupted(DownloadError):
    """The stream ended before the file did (worth resuming)."""


class _Sink:
    """Appends blocks to the partial file and hashes them, in order, off the event loop.

    Writing and hashing run on two threads of their own, side by side (both
    release the GIL), so a download goes as fast as the slower of the disk
    and SHA-256 rather than their sum. Small network reads are gathered into
    blocks of :data:`BLOCK` bytes first, so each thread wakes rarely.
    """

    def __init__(self, path: Path, have: int) -> None:
        self.path = path
        self.hasher = hashlib.sha256()
        self.written = have
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="porten-write")
        self._hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="porten-sha256")
        self._pending: list[asyncio.Future[Any]] = []
        self._buffer = bytearray()
        self._file: IO[bytes] | None = None
        self._have = have

    async def open(self) -> None:
        """Open the partial file at ``have`` bytes and hash what it already holds."""
        self._file = await self._on(self._writer, self._open_sync)
        await self._on(self._hashing, self._hash_prefix)

    def _open_sync(self) -> IO[bytes]:
        handle = self.path.open("r+b" if self.path.exists() else "w+b")
        handle.truncate(self._have)
        handle.seek(self._have)
        return handle

    def _hash_prefix(self) -> None:
        with self.path.open("rb") as handle:
            remaining = self._have
            while remaining and (data := handle.read(min(BLOCK, remaining))):
                self.hasher.update(data)
                remaining -= len(data)

    async def write(self, data: bytes) -> None:
        """Take ``data``; hand a block to the threads when one is full."""
        self.written += len(data)
        self._buffer += data
        if len(self._buffer) >= BLOCK:
            await self._flush()

    async def _flush(self) -> None:
        if not self._buffer:
            return
        block = bytes(self._buffer)
        self._buffer.clear()
        assert self._file is not None
        self._pending.append(self._on(self._writer, self._file.write, block))
        self._pending.append(self._on(self._hashing, self.hasher.update, block))
        while len(self._pending) >= 2 * MAX_PENDING:
            await self._pending.pop(0)

    async def close(self) -> None:
        """Write what is buffered, wait for both threads, flush to disk, and stop them."""
        try:
            if self._file is not None:
                await self._flush()
            for future in self._pending:
                await future
            if self._file is not None:
                await self._on(self._writer, self._close_sync)
        finally:
            self._pending.clear()
            self._writer.shutdown(wait=True)
            self._hashing.shutdown(wait=True)

    def _close_sync(self) -> None:
        assert self._file is not None
        self._file.flush()
        self._file.close()
        self._file = None

    def _on(
        self, executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(executor, fn, *args)


async def fetch(
    ref: str,
    partial: Path,
    *,
    http: aiohttp.ClientSession,
    check_size: SizeCheck,
    progress: Progress,
    stall_timeout_s: float = STALL_TIMEOUT_S,
    attempts: int = ATTEMPTS,
) -> str:
    """Complete ``partial`` from ``ref``; the sha256 (hex) of the whole file."""
    scheme = urlsplit(ref).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise DownloadError(f"download_ref {ref!r}: only http(s):// and file:// are supported")
    for attempt in range(1, attempts + 1):
        try:
            if scheme == "file":
                return await _copy_file(ref, partial, check_size, progress)
            return await _fetch_http(
                ref, partial, http=http, check_size=check_size, progress=progress,
                stall_timeout_s=stall_timeout_s,
            )
        except _Interrupted as exc:
            if attempt == attempts:
                raise DownloadError(
                    f"{exc}; gave up after {attempts} attempts (the next load resumes)"
                ) from exc
            log.warning("download interrupted; resuming", ref=ref, error=str(exc))
    raise AssertionError("unreachable")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_at(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(length)


async def _fetch_http(
    ref: str,
    partial: Path,
    *,
    http: aiohttp.ClientSession,
    check_size: SizeCheck,
    progress: Progress,
    stall_timeout_s: float,
) -> str:
    have = await asyncio.to_thread(_size, partial)
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    timeout = aiohttp.ClientTimeout(
        total=None, connect=stall_timeout_s, sock_connect=stall_timeout_s,
        sock_read=stall_timeout_s,
    )
    try:
        async with http.get(ref, headers=headers, timeout=timeout) as resp:
            if resp.status == 416 and have:  # the partial is not a prefix we can extend
                await asyncio.to_thread(partial.unlink)
                raise _Interrupted(f"{ref} refused to resume at byte {have}; starting over")
            if resp.status >= 400:
                raise DownloadError(f"{ref} answered {resp.status} {resp.reason or ''}".rstrip())
            have, total = _span(resp, have)
            check_size(total, have)
            sink = _Sink(partial, have)
            await sink.open()
            try:
                progress(have, total)
                while data := await resp.content.readany():
                    await sink.write(data)
                    progress(sink.written, total)
            finally:
                await sink.close()
    except TimeoutError as exc:
        raise DownloadError(
            f"downloading {ref} timed out: no data for {stall_timeout_s:g} s"
        ) from exc
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
            aiohttp.ClientOSError) as exc:
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise DownloadError(f"cannot connect to {ref}: {exc.os_error}") from exc
        done = await asyncio.to_thread(_size, partial)
        raise _Interrupted(f"downloading {ref} broke off at byte {done}: {exc}") from exc
    except aiohttp.ClientError as exc:
        raise DownloadError(f"downloading {ref} failed: {exc}") from exc
    if total and sink.written != total:
        raise _Interrupted(f"downloading {ref} stopped at byte {sink.written} of {total}")
    return sink.hasher.hexdigest()


def _span(resp: aiohttp.ClientResponse, have: int) -> tuple[int, int]:
    """``(start, total)`` of this response: resumed at ``have`` (206) or from 0 (200)."""
    if resp.status == 206:
        match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if match is None or int(match.group(1)) != have:
            raise DownloadError(
                f"{resp.url} answered a range that does not start at byte {have}: "
                f"{resp.headers.get('Content-Range')!r}"
            )
        total = match.group(3)
        return have, int(total) if total != "*" else 0
    if have:
        log.info("the server cannot resume; downloading from the start", url=str(resp.url))
    return 0, resp.content_length or 0


async def _copy_file(ref: str, partial: Path, check_size: SizeCheck, progress: Progress) -> str:
    source = Path(unquote(urlsplit(ref).path))
    try:
        total = (await asyncio.to_thread(source.stat)).st_size
    except OSError as exc:
        raise DownloadError(f"{ref}: {exc.strerror or exc}") from exc
    have = await asyncio.to_thread(_size, partial)
    if have > total:
        have = 0
    check_size(total, have)
    sink = _Sink(partial, have)
    await sink.open()
    try:
        progress(have, total)
        while sink.written < total:
            data = await asyncio.to_thread(_read_at, source, sink.written, BLOCK)
            if not data:
                raise _Interrupted(f"{ref} shrank while it was copied")
            await sink.write(data)
            progress(sink.written, total)
    except OSError as exc:
        raise DownloadError(f"copying {ref} failed: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            await sink.close()
    return sink.hasher.hexdigest()
