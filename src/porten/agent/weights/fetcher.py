"""A catalog model's weights onto this node's disk: from the cache, or downloaded and verified.

The order is the promise: room is made (LRU, never a pinned file) once the
size is known and before a byte is written; the bytes are hashed as they
arrive; a digest that differs from the catalog's ``sha256`` deletes the file
and fails the load — a wrong file is never handed to an engine. Only a
verified file is moved into the cache under its final name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import aiohttp
import structlog

from porten.agent.engines.base import EngineError
from porten.agent.weights.cache import MIB, DiskBudgetError, WeightCache
from porten.agent.weights.download import STALL_TIMEOUT_S, DownloadError, Progress, fetch
from porten.domain.values import CatalogEntry

log = structlog.get_logger(__name__)

#: Read buffer per download: large, so the socket is drained in few, big steps.
READ_BUFSIZE: Final = 4 * 1024 * 1024


class WeightFetcher:
    """Finds or fetches weights into a :class:`WeightCache`."""

    def __init__(self, cache: WeightCache, *, stall_timeout_s: float = STALL_TIMEOUT_S) -> None:
        self.cache = cache
        self._stall_timeout_s = stall_timeout_s
        self._http: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        """Close the download session."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def ensure(self, entry: CatalogEntry, progress: Progress) -> Path:
        """The verified weights of ``entry``; :class:`EngineError` if they cannot be had.

        The caller pins ``entry.id`` first, so the cache never removes it meanwhile.
        """
        path = self.cache.verified(entry.id, entry.sha256)
        if path is not None:
            self.cache.touch(entry.id)
            return path
        ref = entry.download_ref.strip()
        if not ref:
            raise EngineError(
                f"{entry.id!r} has no download_ref in the catalog and its weights are not "
                "on this node"
            )

        def check_size(total: int, have: int) -> None:
            needed = (total or entry.disk_mb * MIB) - have
            try:
                removed = self.cache.make_room(entry.id, needed)
            except DiskBudgetError as exc:
                raise EngineError(str(exc)) from None
            if removed:
                log.info("made room for a download", model=entry.id, removed=removed)

        if self._http is None:
            self._http = aiohttp.ClientSession(read_bufsize=READ_BUFSIZE)
        try:
            digest = await fetch(
                ref, self.cache.partial_path(entry.id), http=self._http,
                check_size=check_size, progress=progress, stall_timeout_s=self._stall_timeout_s,
            )
        except DownloadError as exc:
            raise EngineError(f"downloading the weights of {entry.id!r} failed: {exc}") from exc
        expected = entry.sha256.strip().lower()
        if expected and digest != expected:
            self.cache.discard_partial(entry.id)
            raise EngineError(
                f"the weights of {entry.id!r} from {ref} are not the catalog's: sha256 {digest} "
                f"!= {expected}; the file was deleted"
            )
        if not expected:
            log.warning("the catalog gives no sha256; the weights are unverified",
                        model=entry.id, sha256=digest)
        return self.cache.commit(entry.id, digest)
