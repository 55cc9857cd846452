"""``porten admin create-user`` and ``porten admin users …`` as an operator runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from porten.adapters.postgres.event_store import PostgresEventStore
from porten.domain import events as ev
from porten.services.accounts import Accounts
from porten.services.auth import authenticate
from porten.services.control import ControlLog
from porten.services.credentials import load_server_secret
from porten.services.projection import FleetProjection

pytestmark = pytest.mark.postgres


def porten(*args: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real ``porten`` command line in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "porten", *args], input=stdin, capture_output=True, text=True,
        timeout=120, check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"porten {args} failed ({proc.returncode}): {proc.stderr}")
    return proc


async def _log(url: str) -> tuple[PostgresEventStore, ControlLog]:
    store = await PostgresEventStore.open(url)
    projection = FleetProjection(store)
    await projection.catch_up()
    return store, ControlLog(projection=projection, append=store.append)


async def test_create_user_admin_prints_working_credentials_once(
    database_url: str, data_dir: Path
) -> None:
    """The printed password signs in, the printed key authenticates, and neither is in the log."""
    where = ["--database-url", database_url, "--data-dir", str(data_dir)]
    out = json.loads(porten("admin", "create-user", "Root@Example.org", "--admin", "--json",
                            *where).stdout)
    assert out["email"] == "root@example.org"
    assert out["role"] == "operator"
    assert out["api_key"].startswith("sk-porten-")
    store, log = await _log(database_url)
    try:
        accounts = Accounts(log=log, clock=time.time)
        account = await accounts.verify_password("root@example.org", out["password"])
        assert account is not None
        assert account.is_operator
        secret = load_server_secret(data_dir)
        key = authenticate(log.state, secret, [f"Bearer {out['api_key']}"])
        assert key.owner_id == account.user_id
        raw = b"".join(r.data for r in await store.read_raw())
        assert out["password"].encode() not in raw
        assert out["api_key"].encode() not in raw
    finally:
        await store.aclose()
    audit = [json.loads(line)["event"] for line in porten("events", "list", "--type", "admin",
                                                           *where).stdout.splitlines()]
    assert [(e["action"], e["target"]) for e in audit] == [
        ("user.create", out["user_id"]), ("key.create", out["key_id"]),
    ]
    assert all(e["actor"].startswith("cli:") for e in audit)


def test_create_user_twice_is_refused(database_url: str, data_dir: Path) -> None:
    """A second account for the same email fails with one line on stderr and status 1."""
    where = ["--database-url", database_url, "--data-dir", str(data_dir)]
    porten("admin", "create-user", "ada@example.org", *where)
    again = porten("admin", "users", "create", "ADA@example.org", *where, check=False)
    assert again.returncode == 1
    assert again.stderr == "porten: error: an account with this email already exists\n"


def test_password_from_stdin_and_role_changes(database_url: str, data_dir: Path) -> None:
    """--password-stdin takes the password; set-role/disable/node-defaults show in the listing."""
    where = ["--database-url", database_url, "--data-dir", str(data_dir)]
    made = json.loads(porten("admin", "users", "create", "ada@example.org", "--json",
                             "--password-stdin", *where, stdin="a long enough password\n").stdout)
    assert "password" not in made
    assert "api_key" not in made
    weak = porten("admin", "users", "create", "bob@example.org", "--password-stdin", *where,
                  stdin="short\n", check=False)
    assert weak.returncode == 1
    assert weak.stderr == "porten: error: the password must be at least 10 characters long\n"
    porten("admin", "users", "set-role", "ada@example.org", "operator", *where)
    porten("admin", "users", "node-defaults", made["user_id"], "--region", "eu",
           "--trust-class", "verified", *where)
    porten("admin", "users", "disable", "ada@example.org", "--reason", "test", *where)
    [row] = [json.loads(line) for line in porten("admin", "users", "list", "--json",
                                                  *where).stdout.splitlines()]
    assert row["role"] == "operator"
    assert row["disabled"] is True
    assert (row["node_region"], row["node_trust_class"]) == ("eu", "verified")
    unknown = porten("admin", "users", "enable", "nobody@example.org", *where, check=False)
    assert unknown.returncode == 1
    assert "no account 'nobody@example.org'" in unknown.stderr


def test_admin_user_events_are_typed(database_url: str, data_dir: Path) -> None:
    """The account's own events are in the log under their types."""
    where = ["--database-url", database_url, "--data-dir", str(data_dir)]
    porten("admin", "create-user", "ada@example.org", *where)
    types = [json.loads(line)["event"]["type"]
             for line in porten("events", "list", "--type", "user_", *where).stdout.splitlines()]
    assert types == [ev.event_type(ev.UserCreated(at=0, actor="", user_id="", email=""))]
