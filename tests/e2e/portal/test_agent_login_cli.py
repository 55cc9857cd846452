"""``porten agent login`` and ``enroll`` as processes; ``agent run`` uses what they store."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import sys
from pathlib import Path

from portal_harness import create_account, signed_in
from v1_harness import Porten, eventually

from porten.cli.agent_login import node_file
from porten.services.enrolment import USER_CODE_ALPHABET

CODE = re.compile(rf"[{USER_CODE_ALPHABET}]{{4}}-[{USER_CODE_ALPHABET}]{{4}}")


def agent_env(data_dir: Path) -> dict[str, str]:
    """The environment of a fresh machine: its own data dir, no credential, no hub URL."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PORTEN_NODE_CREDENTIAL", "PORTEN_HUB_URL", "PORTEN_DATABASE_URL")}
    return {**env, "PORTEN_DATA_DIR": str(data_dir), "PORTEN_LOG_LEVEL": "warning"}


async def porten_cli(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    """``porten ARGS`` in its own process, stdout and stderr piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "porten", *args, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def decide(porten: Porten, email: str, code: str, decision: str) -> None:
    """The owner enters ``code`` in the portal and approves or denies it."""
    async with signed_in(porten, email) as client:
        page = await client.submit("/device", "/device/decide", code=code, decision=decision)
        assert page.status == 200, page.text[:2000]


async def test_login_waits_for_approval_and_agent_run_uses_the_stored_credential(
    porten: Porten, tmp_path: Path
) -> None:
    """The code is printed, approval ends the wait, and `agent run` connects as that node."""
    account = await create_account(porten, "ada@example.org")
    env = agent_env(tmp_path / "machine")
    login = await porten_cli("agent", "login", "--hub-url", porten.url, "--name", "cli-box",
                             "--json", env=env)
    assert login.stdout is not None
    started = json.loads(await asyncio.wait_for(login.stdout.readline(), 60))
    assert started["verification_uri"] == f"{porten.url}/device"
    await decide(porten, "ada@example.org", started["user_code"], "approve")
    out, err = await asyncio.wait_for(login.communicate(), 60)
    assert login.returncode == 0, err.decode()
    done = json.loads(out)
    path = node_file(tmp_path / "machine")
    assert done["stored_at"] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert stored["credential"].encode() not in out + err
    node = porten.hub.projection.state.nodes[done["node_id"]]
    assert (node.owner_id, node.name) == (account.user_id, "cli-box")

    run = await porten_cli("agent", "run", "--engine", "sim", env={
        **env, "PORTEN_VRAM_BUDGET_MB": "8000", "PORTEN_AUTO_DOWNLOAD_MB": "8000",
        "PORTEN_HUB_URL": porten.url})
    try:
        await eventually(lambda: porten.hub.projection.state.nodes[done["node_id"]].online,
                         within=60.0, what="the logged-in node online")
    finally:
        run.terminate()
        await run.communicate()

    again = await porten_cli("agent", "login", "--hub-url", porten.url, env=env)
    _, err = await again.communicate()
    assert again.returncode == 1
    assert err.decode() == (
        f"porten: error: this machine is already enrolled as node {done['node_id']} ({path}); "
        "pass --force to enrol it again\n")


async def test_a_denied_login_ends_with_the_reason(porten: Porten, tmp_path: Path) -> None:
    """When the owner denies the code, login exits 1 saying so, and stores nothing."""
    await create_account(porten, "ada@example.org")
    env = agent_env(tmp_path / "machine")
    login = await porten_cli("agent", "login", "--hub-url", porten.url, env=env)
    assert login.stdout is not None
    code = ""
    while not CODE.fullmatch(code):
        code = (await asyncio.wait_for(login.stdout.readline(), 60)).decode().strip()
    await decide(porten, "ada@example.org", code, "deny")
    _, err = await asyncio.wait_for(login.communicate(), 60)
    assert login.returncode == 1
    assert err.decode() == ("porten: error: the owner denied this machine's enrolment in the "
                            "portal\n")
    assert not node_file(tmp_path / "machine").exists()


async def test_an_enrolment_token_works_once_from_the_command_line(
    porten: Porten, tmp_path: Path
) -> None:
    """`agent enroll TOKEN` enrols; the same token on another machine is refused, naming why."""
    account = await create_account(porten, "ada@example.org")
    minted = await porten.hub.enrolment_tokens.mint(account.user_id, actor="test")
    first = await porten_cli("agent", "enroll", minted.token, "--hub-url", porten.url,
                             "--name", "r1", "--json", env=agent_env(tmp_path / "m1"))
    out, err = await first.communicate()
    assert first.returncode == 0, err.decode()
    node_id = json.loads(out)["node_id"]
    second = await porten_cli("agent", "enroll", "-", "--hub-url", porten.url,
                              env=agent_env(tmp_path / "m2"))
    _, err = await second.communicate(minted.token.encode() + b"\n")
    assert second.returncode == 1
    assert err.decode() == (f"porten: error: this enrolment token was already used (it enrolled "
                            f"{node_id})\n")
    assert not node_file(tmp_path / "m2").exists()


async def test_an_operator_mints_a_token_with_porten_admin(porten: Porten, tmp_path: Path) -> None:
    """`porten admin enrol-token create` prints a token once that enrols a node of that owner."""
    account = await create_account(porten, "ada@example.org")
    settings = porten.hub.settings
    assert settings.database_url is not None
    admin_env = {**agent_env(settings.data_dir), "PORTEN_DATABASE_URL": settings.database_url}
    mint = await porten_cli("admin", "enrol-token", "create", "ada@example.org", "--name",
                            "rack 1", "--json", env=admin_env)
    out, err = await mint.communicate()
    assert mint.returncode == 0, err.decode()
    minted = json.loads(out)
    assert (minted["owner_id"], minted["name"]) == (account.user_id, "rack 1")
    await porten.hub.projection.wait_until(await porten.hub.store.head(), 10.0)
    enrol = await porten_cli("agent", "enroll", minted["token"], "--hub-url", porten.url,
                             "--json", env=agent_env(tmp_path / "m1"))
    out, err = await enrol.communicate()
    assert enrol.returncode == 0, err.decode()
    node_id = json.loads(out)["node_id"]
    assert porten.hub.projection.state.nodes[node_id].owner_id == account.user_id
    listing = await porten_cli("admin", "enrol-token", "list", "ada@example.org", "--json",
                               env=admin_env)
    out, _ = await listing.communicate()
    [line] = [json.loads(x) for x in out.splitlines()]
    assert (line["token_id"], line["node_id"]) == (minted["token_id"], node_id)
    assert "token" not in line
