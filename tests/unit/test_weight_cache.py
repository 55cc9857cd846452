"""The weight cache: LRU removal within PORTEN_AUTO_DOWNLOAD_MB, never of a file in use."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from porten.agent.weights.cache import MIB, DiskBudgetError, WeightCache, file_name


def clock() -> itertools.count[float]:
    return itertools.count(1000.0)


def put(cache: WeightCache, model: str, size: int) -> Path:
    """A verified file of ``size`` bytes for ``model``, as a finished download leaves it."""
    cache.partial_path(model).write_bytes(b"x" * size)
    return cache.commit(model, "ab" * 32)


def test_file_names_are_the_ids_when_safe_and_never_collide() -> None:
    """Safe ids keep their name; others are sanitised and disambiguated by a hash."""
    assert file_name("qwen2.5-7b-instruct") == "qwen2.5-7b-instruct.gguf"
    odd = [file_name("org/model:q4"), file_name("org_model_q4"), file_name("../etc/passwd")]
    assert odd[0].startswith("org_model_q4-")
    assert odd[0].endswith(".gguf")
    assert odd[1] == "org_model_q4.gguf"
    assert "/" not in odd[2]
    assert not odd[2].startswith(".")


def test_least_recently_used_files_go_first(tmp_path: Path) -> None:
    """Making room removes the oldest-used files until the new one fits, and no more."""
    ticks = clock()
    cache = WeightCache(tmp_path, 3 * MIB, clock=lambda: next(ticks))
    for model in ("a", "b", "c"):
        put(cache, model, MIB)
    cache.touch("a")  # a is now the most recent; b the least
    assert cache.make_room("d", MIB) == ["b"]
    assert cache.on_disk() == ("a", "c")
    assert cache.make_room("d", 2 * MIB) == ["c"]
    assert cache.make_room("d", 3 * MIB) == ["a"]
    assert cache.on_disk() == ()


def test_a_pinned_file_is_never_removed(tmp_path: Path) -> None:
    """A loaded model's file stays; the error names the budget and what is in use."""
    ticks = clock()
    cache = WeightCache(tmp_path, 2 * MIB, clock=lambda: next(ticks))
    put(cache, "loaded", MIB)
    put(cache, "idle", MIB)
    cache.pin("loaded")
    with pytest.raises(DiskBudgetError) as caught:
        cache.make_room("big", 2 * MIB)
    assert str(caught.value) == (
        "'big' needs 2 MB of disk but the weight cache (PORTEN_AUTO_DOWNLOAD_MB=2) can free "
        "only 1 MB; in use: loaded"
    )
    assert cache.on_disk() == ("idle", "loaded")  # refused: nothing was removed
    assert cache.make_room("small", MIB) == ["idle"]
    cache.unpin("loaded")
    assert not cache.pinned("loaded")


def test_a_model_bigger_than_the_whole_budget_is_refused(tmp_path: Path) -> None:
    """No amount of removal helps; the message says so in MB."""
    cache = WeightCache(tmp_path, 100 * MIB)
    with pytest.raises(DiskBudgetError, match=r"^'huge' needs 242 MB of disk but the weight cache "
                       r"\(PORTEN_AUTO_DOWNLOAD_MB=100\) can free only 100 MB$"):
        cache.make_room("huge", 242 * MIB)


def test_partial_downloads_count_and_can_be_removed(tmp_path: Path) -> None:
    """A partial file of another model takes room and is removable; one's own is kept."""
    cache = WeightCache(tmp_path, 2 * MIB)
    cache.partial_path("stale").write_bytes(b"x" * MIB)
    cache.partial_path("mine").write_bytes(b"x" * MIB)
    assert cache.used_bytes() == 2 * MIB
    assert cache.make_room("mine", MIB) == [file_name("stale")]
    assert cache.partial_bytes("mine") == MIB


def test_a_file_changed_on_disk_is_not_trusted(tmp_path: Path) -> None:
    """A verified file whose size or mtime changed is discarded, not served."""
    cache = WeightCache(tmp_path, 10 * MIB)
    path = put(cache, "m", 1000)
    assert cache.verified("m", "ab" * 32) == path
    with path.open("ab") as f:
        f.write(b"tampered")
    assert cache.verified("m") is None
    assert not path.exists()


def test_a_new_catalog_sha256_discards_the_old_file(tmp_path: Path) -> None:
    """When the catalog's digest changes, the cached file is no longer the model's."""
    cache = WeightCache(tmp_path, 10 * MIB)
    put(cache, "m", 1000)
    assert cache.verified("m", "cd" * 32) is None
    assert cache.on_disk() == ()


def test_the_index_survives_a_restart(tmp_path: Path) -> None:
    """A new cache on the same directory knows the files and their LRU order."""
    ticks = clock()
    first = WeightCache(tmp_path, 2 * MIB, clock=lambda: next(ticks))
    put(first, "old", MIB)
    put(first, "new", MIB)
    second = WeightCache(tmp_path, 2 * MIB, clock=lambda: next(ticks))
    assert second.on_disk() == ("new", "old")
    assert second.make_room("x", MIB) == ["old"]


def test_an_unreadable_index_starts_empty(tmp_path: Path) -> None:
    """A corrupt index.json is replaced, and unknown files are orphans LRU can remove."""
    (tmp_path / "index.json").write_text("{not json")
    (tmp_path / "orphan.gguf").write_bytes(b"x" * MIB)
    os.utime(tmp_path / "orphan.gguf", (1, 1))
    cache = WeightCache(tmp_path, MIB)
    assert cache.on_disk() == ()
    assert cache.make_room("m", MIB) == ["orphan.gguf"]
