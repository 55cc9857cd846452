"""The node's disk cache of model weights, bounded by ``PORTEN_AUTO_DOWNLOAD_MB``.

One file per model (``<name>.gguf``), a ``.partial`` beside it while it
downloads (kept across failures and restarts, so the next attempt resumes),
and ``index.json`` recording, per model, the file, its size, its verified
sha256 and when it was last used. A file is trusted again without re-hashing
only while its size and mtime are what the index recorded at verification.

Room is made by removing the least recently used files first — complete or
partial — but never one that is *pinned*: a model that is loaded, or being
downloaded or loaded right now. If that is not enough the load fails with
:class:`DiskBudgetError`, which names the budget and what holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec
import structlog

log = structlog.get_logger(__name__)

MIB: Final = 1024 * 1024
INDEX: Final = "index.json"
PARTIAL: Final = ".partial"
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")


class DiskBudgetError(Exception):
    """The model does not fit in the disk budget, even after removing unused files."""


class CachedFile(msgspec.Struct, kw_only=True):
    """What the index knows of one model's weights."""

    file: str
    size: int = 0
    sha256: str = ""
    #: Wall-clock time of the last load (or download) — the LRU order.
    last_used: float = 0.0
    #: ``st_mtime_ns`` when the file was verified; another value means it changed since.
    mtime_ns: int = 0


def default_disk_budget_mb(root: Path, share: float = 0.9) -> int:
    """The budget when ``PORTEN_AUTO_DOWNLOAD_MB`` is unset: 90 % of the free disk plus the cache.

    Measured once, at start, so the budget the hub sees does not wander.
    """
    root.mkdir(parents=True, exist_ok=True)
    held = sum(p.stat().st_size for p in root.iterdir() if p.is_file())
    return int((shutil.disk_usage(root).free + held) * share) // MIB


def file_name(model_id: str) -> str:
    """A file name for ``model_id``: the id itself when safe, else a sanitised id and a hash."""
    safe = _UNSAFE.sub("_", model_id).lstrip(".") or "model"
    if safe == model_id:
        return f"{safe}.gguf"
    digest = hashlib.sha256(model_id.encode()).hexdigest()[:8]
    return f"{safe}-{digest}.gguf"


class WeightCache:
    """Weights on this node's disk, with an LRU bound and pins for files in use."""

    def __init__(
        self, root: Path, budget_bytes: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.root = root
        self.budget_bytes = budget_bytes
        self._clock = clock
        self._pins: Counter[str] = Counter()
        self.root.mkdir(parents=True, exist_ok=True)
        self._index = self._read_index()

    # --- what is here ----------------------------------------------------------------

    def path(self, model_id: str) -> Path:
        """Where ``model_id``'s complete weights live (whether or not they exist)."""
        known = self._index.get(model_id)
        return self.root / (known.file if known is not None else file_name(model_id))

    def partial_path(self, model_id: str) -> Path:
        """Where ``model_id``'s download in progress is written."""
        return self.path(model_id).with_name(self.path(model_id).name + PARTIAL)

    def verified(self, model_id: str, sha256: str = "") -> Path | None:
        """The complete file of ``model_id`` if it is unchanged since verification.

        With ``sha256`` given, only a file verified to have that digest counts;
        a file verified against another digest (the catalog changed) is removed.
        """
        known = self._index.get(model_id)
        if known is None:
            return None
        path = self.root / known.file
        try:
            stat = path.stat()
        except FileNotFoundError:
            self._forget(model_id)
            return None
        stale = (stat.st_size, stat.st_mtime_ns) != (known.size, known.mtime_ns)
        if stale or (sha256 and known.sha256 != sha256.lower()):
            why = "changed on disk" if stale else "the catalog's sha256 changed"
            log.warning("discarding cached weights", model=model_id, reason=why)
            self.remove(model_id)
            return None
        return path

    def on_disk(self) -> tuple[str, ...]:
        """Models whose complete, verified weights are here, sorted."""
        return tuple(sorted(m for m in list(self._index) if self.verified(m) is not None))

    def used_bytes(self) -> int:
        """Bytes held by complete and partial weight files."""
        return sum(_size(p) for paths in self._groups().values() for p in paths)

    def partial_bytes(self, model_id: str) -> int:
        """Bytes of ``model_id`` already downloaded (0 when no download was started)."""
        try:
            return self.partial_path(model_id).stat().st_size
        except FileNotFoundError:
            return 0

    # --- using it ----------------------------------------------------------------------

    def pin(self, model_id: str) -> None:
        """``model_id``'s files are in use: never remove them to make room."""
        self._pins[model_id] += 1

    def unpin(self, model_id: str) -> None:
        """One use of ``model_id`` ended."""
        self._pins[model_id] -= 1
        if self._pins[model_id] <= 0:
            del self._pins[model_id]

    def pinned(self, model_id: str) -> bool:
        """Whether ``model_id`` is in use."""
        return self._pins[model_id] > 0

    def touch(self, model_id: str) -> None:
        """``model_id`` was used now (it moves to the back of the LRU order)."""
        known = self._index.get(model_id)
        if known is not None:
            known.last_used = self._clock()
            self._write_index()

    def make_room(self, model_id: str, needed_bytes: int) -> list[str]:
        """Remove unpinned files, least recently used first, until ``needed_bytes`` fit.

        Returns the files removed. Raises :class:`DiskBudgetError` (removing
        nothing) when the budget cannot hold ``needed_bytes`` next to the pinned files.
        """
        groups = self._groups()
        free = self.budget_bytes - sum(_size(p) for paths in groups.values() for p in paths)
        if needed_bytes <= free:
            return []
        mine = self.path(model_id).name
        in_use = {self.path(m).name: m for m in self._pins}
        candidates = sorted(
            (self._last_used(base, paths), base)
            for base, paths in groups.items()
            if base != mine and base not in in_use
        )
        freeable = sum(_size(p) for _, base in candidates for p in groups[base])
        if needed_bytes > free + freeable:
            busy = sorted(m for base, m in in_use.items() if base in groups and base != mine)
            held = f"; in use: {', '.join(busy)}" if busy else ""
            raise DiskBudgetError(
                f"{model_id!r} needs {_mb(needed_bytes)} MB of disk but the weight cache "
                f"(PORTEN_AUTO_DOWNLOAD_MB={_mb(self.budget_bytes)}) can free only "
                f"{_mb(max(0, free + freeable))} MB{held}"
            )
        removed: list[str] = []
        for _, base in candidates:
            if needed_bytes <= free:
                break
            free += sum(_size(p) for p in groups[base])
            for path in groups[base]:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            owner = self._owner(base)
            if owner is not None:
                self._forget(owner)
            removed.append(owner or base)
            log.info("removed cached weights to make room", file=base, for_model=model_id)
        return removed

    def commit(self, model_id: str, sha256: str) -> Path:
        """Move the finished, verified download into place and record it."""
        partial, final = self.partial_path(model_id), self.path(model_id)
        partial.replace(final)
        stat = final.stat()
        self._index[model_id] = CachedFile(
            file=final.name, size=stat.st_size, sha256=sha256.lower(),
            last_used=self._clock(), mtime_ns=stat.st_mtime_ns,
        )
        self._write_index()
        return final

    def discard_partial(self, model_id: str) -> None:
        """Delete ``model_id``'s partial download (it cannot be resumed)."""
        with contextlib.suppress(FileNotFoundError):
            self.partial_path(model_id).unlink()

    def remove(self, model_id: str) -> None:
        """Delete ``model_id``'s files (complete and partial) and forget it."""
        for path in (self.path(model_id), self.partial_path(model_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._forget(model_id)

    # --- internals ---------------------------------------------------------------------

    def _groups(self) -> dict[str, list[Path]]:
        """Weight files here by base name (a complete file and its partial go together)."""
        groups: dict[str, list[Path]] = {}
        for path in self.root.iterdir():
            if path.name.endswith((".gguf", ".gguf" + PARTIAL)):
                groups.setdefault(path.name.removesuffix(PARTIAL), []).append(path)
        return groups

    def _owner(self, base: str) -> str | None:
        """The model whose file is called ``base``, if the index knows it."""
        return next((m for m, c in self._index.items() if c.file == base), None)

    def _last_used(self, base: str, paths: list[Path]) -> float:
        owner = self._owner(base)
        if owner is not None and self._index[owner].last_used:
            return self._index[owner].last_used
        return min((p.stat().st_mtime for p in paths if p.exists()), default=0.0)

    def _forget(self, model_id: str) -> None:
        if self._index.pop(model_id, None) is not None:
            self._write_index()

    def _read_index(self) -> dict[str, CachedFile]:
        try:
            raw = (self.root / INDEX).read_bytes()
        except FileNotFoundError:
            return {}
        try:
            return msgspec.json.decode(raw, type=dict[str, CachedFile])
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("the weight cache index is unreadable; starting a new one",
                        path=str(self.root / INDEX))
            return {}

    def _write_index(self) -> None:
        tmp = self.root / (INDEX + ".tmp")
        tmp.write_bytes(msgspec.json.encode(self._index))
        os.replace(tmp, self.root / INDEX)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _mb(n: int) -> int:
    return -(-n // MIB)  # rounded up: "needs 1 MB" for a 10-byte file
