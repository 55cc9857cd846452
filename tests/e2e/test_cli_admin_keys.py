"""``porten admin keys|nodes|catalog price`` and ``porten usage --account`` against a real log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from porten.adapters.postgres.event_store import PostgresEventStore
from porten.domain import events as ev

pytestmark = pytest.mark.postgres


def porten(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real ``porten`` command line in a subprocess (no key or hub from the caller)."""
    env = {k: v for k, v in os.environ.items() if k not in {"PORTEN_API_KEY", "PORTEN_BASE_URL"}}
    proc = subprocess.run([sys.executable, "-m", "porten", *args], capture_output=True,
                          text=True, timeout=120, check=False, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"porten {args} failed ({proc.returncode}): {proc.stderr}")
    return proc


def doc(*args: str) -> Any:
    """The JSON a command prints."""
    return json.loads(porten(*args, "--json").stdout)


async def test_a_key_through_the_command_line(database_url: str, data_dir: Path) -> None:
    """Create with a policy, list, update only what is named, revoke; all audited."""
    where = ["--database-url", database_url, "--data-dir", str(data_dir)]
    porten("admin", "users", "create", "dev@example.org", *where)
    made = doc("admin", "keys", "create", "--owner", "dev@example.org", "--name", "ci",
               "--region", "eu", "--region", "de", "--min-trust", "trusted", "--fleet", "own",
               "--rpm", "60", "--budget-usd", "2.5", *where)
    assert made["api_key"].startswith("sk-porten-")
    assert made["policy"] == {"regions": ["de", "eu"], "min_trust": "trusted", "fleet": "own",
                              "models": [], "requests_per_min": 60, "tokens_per_min": None,
                              "budget_usd": 2.5}
    [listed] = [json.loads(line) for line in
                porten("admin", "keys", "list", "--owner", "dev@example.org", "--json",
                       *where).stdout.splitlines()]
    assert "api_key" not in listed
    assert listed["key_id"] == made["key_id"]
    updated = doc("admin", "keys", "update", made["key_id"], "--any-region", "--no-budget",
                  "--model", "qwen2.5-7b-instruct", *where)
    assert updated["policy"] == {**made["policy"], "regions": [], "budget_usd": None,
                                 "models": ["qwen2.5-7b-instruct"]}
    bad = porten("admin", "keys", "update", made["key_id"], "--rpm", "0", *where, check=False)
    assert bad.returncode == 1
    assert bad.stderr == ("porten: error: invalid policy: requests_per_min must be at least 1 "
                          "(omit it for no limit; revoke a key to stop it)\n")
    revoked = doc("admin", "keys", "revoke", made["key_id"], "--reason", "rotated", *where)
    assert revoked["revoked_at"] is not None
    unknown = porten("admin", "keys", "revoke", "key_nope", *where, check=False)
    assert unknown.stderr == ("porten: error: no key with id 'key_nope' (see `porten admin keys "
                              "list`)\n")
    audit = [json.loads(line)["event"] for line in
             porten("events", "list", "--type", "admin", *where).stdout.splitlines()]
    assert [a["action"] for a in audit] == ["user.create", "key.create", "key.policy",
                                            "key.revoke"]
    events = porten("events", "export", *where).stdout
    assert made["api_key"] not in events


async def test_nodes_and_prices_through_the_command_line(
    database_url: str, data_dir: Path
) -> None:
    """An operator places a node and prices a model; the usage report reads the log."""
    store = await PostgresEventStore.open(database_url)
    try:
        await store.append([ev.NodeEnrolled(at=1.0, actor="test", node_id="gpu-7",
                                            owner_id="someone")])
    finally:
        await store.aclose()
    where = ["--database-url", database_url, "--data-dir", str(data_dir)]
    node = doc("admin", "nodes", "set", "gpu-7", "--region", "eu", "--trust-class", "verified",
               *where)
    assert (node["region"], node["trust_class"]) == ("eu", "verified")
    [listed] = [json.loads(line) for line in
                porten("admin", "nodes", "list", "--json", *where).stdout.splitlines()]
    assert listed["region"] == "eu"
    neither = porten("admin", "nodes", "set", "gpu-7", *where, check=False)
    assert neither.stderr == "porten: error: give a region, a trust class or both\n"
    porten("admin", "catalog", "seed", *where)
    price = doc("admin", "catalog", "price", "qwen2.5-7b-instruct", "--input", "0.1",
                "--output", "0.3", *where)
    assert price == {"model": "qwen2.5-7b-instruct", "price_in_per_m": 0.1,
                     "price_out_per_m": 0.3}
    porten("admin", "users", "create", "dev@example.org", *where)
    report = doc("usage", "--account", "dev@example.org", "--start", "2026-01-01", "--end",
                 "2026-01-31", *where)
    assert (report["object"], report["data"], report["start"]) == ("usage", [], "2026-01-01")
    no_key = porten("usage", *where, check=False)
    assert no_key.returncode == 1
    assert "set PORTEN_BASE_URL and PORTEN_API_KEY" in no_key.stderr
