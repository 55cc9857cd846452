"""Claiming a data directory: one hub per directory, enforced with an OS file lock.

Two hubs on one embedded database would both run the planner and both
command the same agents. ``flock`` is released by the kernel when the
process dies, so a crashed hub never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType


class DataDirInUse(RuntimeError):
    """Another hub holds the data directory."""


class HubLock:
    """An exclusive, non-blocking lock on ``<data_dir>/hub.lock``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "hub.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DataDirInUse` naming the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"another porten hub (pid {holder}) is already running with data dir "
                f"{self.path.parent}. Stop it first, or start this one with a different "
                "--data-dir (or PORTEN_DATA_DIR)."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (also dropped by the kernel if the process dies)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> HubLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
