"""One hub per data directory, enforced by an OS lock that dies with its holder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from porten.adapters.data_dir import DataDirInUse, HubLock


def test_a_second_lock_on_the_same_dir_is_refused_with_the_holder_pid(tmp_path: Path) -> None:
    """While one hub holds the dir, another gets DataDirInUse naming the holder's pid."""
    with HubLock(tmp_path):
        with pytest.raises(DataDirInUse, match=f"pid {os.getpid()}") as info:
            HubLock(tmp_path).acquire()
        assert "--data-dir" in str(info.value)


def test_the_lock_is_free_again_after_release(tmp_path: Path) -> None:
    """Releasing the lock lets the next hub start on the same dir."""
    first = HubLock(tmp_path)
    first.acquire()
    first.release()
    second = HubLock(tmp_path)
    second.acquire()
    second.release()


def test_different_dirs_do_not_conflict(tmp_path: Path) -> None:
    """Hubs on different data dirs run side by side."""
    with HubLock(tmp_path / "a"), HubLock(tmp_path / "b"):
        pass
