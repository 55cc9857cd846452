"""``porten events …`` as an operator runs it: a real process against a real Postgres."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import psycopg
import pytest

from porten.adapters.postgres.event_store import PostgresEventStore
from porten.domain import events as ev
from porten.domain.fold import fold
from porten.domain.state import FleetState
from porten.domain.values import CatalogEntry

pytestmark = pytest.mark.postgres


def porten(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real ``porten`` command line in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "porten", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"porten {args} failed ({proc.returncode}): {proc.stderr}")
    return proc


HISTORY: list[ev.AnyEvent] = [
    ev.ModelOffered(
        at=1000.0, actor="user:op", model=CatalogEntry(id="m1", vram_mb=4000, disk_mb=3000)
    ),
    ev.NodeEnrolled(at=1001.0, actor="user:op", node_id="n1", owner_id="u1", region="eu"),
    ev.NodeConnected(at=1002.0, actor="node:n1", node_id="n1", session_id="s1"),
    ev.NodeCapabilitiesReported(
        at=1003.0,
        actor="node:n1",
        node_id="n1",
        engine="sim",
        provisionable=True,
        vram_total_mb=24000,
        vram_budget_mb=20000,
        disk_budget_mb=100000,
    ),
    ev.LoadRequested(
        at=1004.0,
        actor="planner",
        node_id="n1",
        model_id="m1",
        load_id="l1",
        reason="cold model requested",
    ),
    ev.ModelLoaded(at=1010.0, actor="node:n1", node_id="n1", model_id="m1", load_id="l1"),
    ev.RequestServed(
        at=1011.0,
        actor="hub",
        request_id="r1",
        model_id="m1",
        node_id="n1",
        key_id="k1",
        prompt_tokens=12,
        completion_tokens=30,
    ),
    ev.ModelUnloaded(at=2000.0, actor="planner", node_id="n1", model_id="m1", reason="idle"),
]


async def _seed(url: str, events: list[ev.AnyEvent]) -> None:
    store = await PostgresEventStore.open(url)
    try:
        await store.append(events)
    finally:
        await store.aclose()


def _state_json(state: FleetState) -> object:
    """The JSON ``porten events state --json`` prints for ``state``."""
    from porten.cli._common import to_jsonable

    return to_jsonable(state)


async def test_list_prints_jsonl_in_order_and_filters(database_url: str) -> None:
    """list prints every event as JSONL in position order; --type/--stream/--since filter."""
    await _seed(database_url, HISTORY)
    out = porten("events", "list", "--database-url", database_url).stdout.splitlines()
    records = [msgspec.json.decode(line) for line in out]
    assert [r["position"] for r in records] == list(range(1, len(HISTORY) + 1))
    assert [r["event"]["type"] for r in records][:2] == ["model_offered", "node_enrolled"]

    by_type = porten("events", "list", "--type", "node_", "--database-url", database_url)
    types = [msgspec.json.decode(x)["event"]["type"] for x in by_type.stdout.splitlines()]
    assert types == ["node_enrolled", "node_connected", "node_capabilities_reported"]

    by_stream = porten("events", "list", "--stream", "model-m1", "--database-url", database_url)
    assert len(by_stream.stdout.splitlines()) == 1

    window = porten(
        "events", "list", "--since", "@1004", "--until", "@1011", "--database-url", database_url
    )
    at = [msgspec.json.decode(x)["event"]["at"] for x in window.stdout.splitlines()]
    assert at == [1004.0, 1010.0]


async def test_state_at_position_and_time_equals_the_fold(database_url: str) -> None:
    """state --at N (or a time) prints exactly the fold of the events up to there."""
    await _seed(database_url, HISTORY)
    for n in (3, 6, len(HISTORY)):
        out = porten("events", "state", "--at", str(n), "--json", "--database-url", database_url)
        assert msgspec.json.decode(out.stdout) == _state_json(fold(HISTORY[:n]))
    out = porten("events", "state", "--at", "@1010.5", "--json", "--database-url", database_url)
    assert msgspec.json.decode(out.stdout) == _state_json(fold(HISTORY[:6]))


async def test_export_then_import_reproduces_the_log(
    database_url: str, new_database: Callable[[], str], tmp_path: Path
) -> None:
    """An export imported into an empty log folds to the same state, event for event."""
    await _seed(database_url, HISTORY)
    file = tmp_path / "fleet.jsonl"
    porten("events", "export", "-o", str(file), "--database-url", database_url)
    assert len(file.read_text().splitlines()) == len(HISTORY)

    other = new_database()
    res = porten("events", "import", str(file), "--json", "--database-url", other)
    assert msgspec.json.decode(res.stdout) == {"imported": len(HISTORY), "head": len(HISTORY)}
    a = porten("events", "list", "--database-url", database_url).stdout.splitlines()
    b = porten("events", "list", "--database-url", other).stdout.splitlines()
    assert [msgspec.json.decode(x)["event"] for x in a] == [
        msgspec.json.decode(x)["event"] for x in b
    ]
    sa = porten("events", "state", "--json", "--database-url", database_url).stdout
    sb = porten("events", "state", "--json", "--database-url", other).stdout
    assert sa == sb


async def test_corrupt_event_stops_with_one_clear_line(database_url: str) -> None:
    """An unknown event type in the log: exit 1 naming its position; --raw still shows it."""
    await _seed(database_url, HISTORY[:2])
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO porten_events (position, stream, version, type, at, data) "
            "VALUES (3, 'x-1', 0, 'teleported', now(), '{\"type\":\"teleported\"}')"
        )
    res = porten("events", "list", "--database-url", database_url, check=False)
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert err[-1].startswith("porten: error: event at position 3 (type 'teleported')")
    raw = porten("events", "list", "--raw", "--database-url", database_url)
    assert msgspec.json.decode(raw.stdout.splitlines()[-1])["type"] == "teleported"


def test_unreachable_database_fails_clearly_without_the_password() -> None:
    """A database that does not answer: exit 1, the URL named, its password hidden."""
    url = "postgresql://porten:hunter2@127.0.0.1:1/porten"
    res = porten("events", "list", "--database-url", url, check=False)
    assert res.returncode == 1
    assert "127.0.0.1:1" in res.stderr
    assert "hunter2" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("porten: error:")
