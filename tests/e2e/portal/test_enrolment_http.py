"""Enrolment end to end over HTTP: device codes (RFC 8628) and enrolment tokens, bad inputs too."""

from __future__ import annotations

import asyncio
import re

from enrolment_harness import agent_post, flow_at, poll, start, tokens_at
from portal_harness import create_account, signed_in
from v1_harness import Porten, eventually

from porten.agent.connection import Agent
from porten.agent.engines.sim_engine import SimEngine
from porten.agent.settings import AgentSettings
from porten.services.credentials import new_token
from porten.services.enrolment import USER_CODE_ALPHABET

CODE = re.compile(rf"^[{USER_CODE_ALPHABET}]{{4}}-[{USER_CODE_ALPHABET}]{{4}}$")


async def approve(porten: Porten, email: str, code: str) -> str:
    """Sign in as ``email``, enter ``code`` on /device and approve; the result's notice."""
    async with signed_in(porten, email) as client:
        confirm = await client.submit(f"/device?code={code}", "/device", code=code)
        assert confirm.status == 200, confirm.text[:2000]
        done = await client.submit(f"/device?code={code}", "/device/decide", code=code,
                                   decision="approve")
        return done.notice()


async def test_a_device_code_approved_in_the_portal_becomes_the_owners_node(
    porten: Porten,
) -> None:
    """Start, pending, approve, credential once; the node joins with the account's defaults."""
    account = await create_account(porten, "ada@example.org")
    await porten.hub.accounts.set_node_defaults(account.user_id, region="eu",
                                                trust_class="verified", actor="test")
    started = await start(porten, "gpu-box")
    assert CODE.match(started["user_code"])
    assert started["verification_uri"] == f"{porten.url}/device"
    complete = f"{porten.url}/device?code={started['user_code']}"
    assert started["verification_uri_complete"] == complete
    assert (started["expires_in"], started["interval"]) == (600, 1)
    status, pending = await poll(porten, started["device_code"])
    assert (status, pending["error"]) == (400, "authorization_pending")

    assert await approve(porten, "ada@example.org", started["user_code"].lower()) == (
        "Approved. gpu-box is joining as your node.")
    status, body = await poll(porten, started["device_code"])
    assert status == 200, body
    assert body["owner_id"] == account.user_id
    assert body["credential"].startswith("pn-node-")
    node = porten.hub.projection.state.nodes[body["node_id"]]
    assert (node.owner_id, node.name, node.region, node.trust_class) == (
        account.user_id, "gpu-box", "eu", "verified")

    agent = Agent(AgentSettings(hub_url=porten.url, credential=body["credential"]), SimEngine())
    task = asyncio.create_task(agent.run())
    try:
        await eventually(lambda: porten.hub.projection.state.nodes[body["node_id"]].online,
                         what="the enrolled node online")
    finally:
        await agent.stop()
        await task

    await porten.hub.writer.flush()
    records = await porten.hub.store.read_filtered(types=["device_code_", "node_enrolled"])
    kinds = [type(r.event).__name__ for r in records if getattr(r.event, "node_id", "")
             in ("", body["node_id"])]
    assert kinds[-4:] == ["DeviceCodeIssued", "DeviceCodeApproved", "NodeEnrolled",
                          "DeviceCodeRedeemed"]
    logged = " ".join(str(r.event) for r in records)
    assert started["device_code"] not in logged
    assert started["user_code"].replace("-", "") not in logged
    assert body["credential"] not in logged


async def test_a_redeemed_device_code_cannot_be_used_again(porten: Porten) -> None:
    """Reused: a second poll is invalid_grant, and the portal says the code is used."""
    await create_account(porten, "ada@example.org")
    started = await start(porten)
    await approve(porten, "ada@example.org", started["user_code"])
    status, _ = await poll(porten, started["device_code"])
    assert status == 200
    status, again = await poll(porten, started["device_code"])
    assert (status, again) == (400, {"error": "invalid_grant",
                                     "error_description": "this device code was already used"})
    async with signed_in(porten, "ada@example.org") as client:
        page = await client.submit("/device", "/device", code=started["user_code"])
        assert (page.status, page.notice()) == (400, "That code has already been used.")


async def test_polling_faster_than_the_interval_gets_slow_down(porten: Porten) -> None:
    """A poll inside the interval is slow_down with a longer interval, which then holds."""
    started = await start(porten)
    assert (await poll(porten, started["device_code"]))[1]["error"] == "authorization_pending"
    status, body = await poll(porten, started["device_code"])
    assert (status, body) == (400, {"error": "slow_down",
                                    "error_description": "poll at most every 6 s",
                                    "interval": 6})
    status, body = await poll(porten, started["device_code"])
    assert body["interval"] == 11


async def test_an_expired_device_code_is_refused_on_both_sides(porten: Porten) -> None:
    """Expired: the agent's poll is expired_token and the owner cannot approve it."""
    await create_account(porten, "ada@example.org")
    old = await flow_at(porten, -3600).start(client_name="late", client_address="x")
    status, body = await poll(porten, old.device_code)
    assert (status, body) == (400, {"error": "expired_token",
                                    "error_description": "the code expired before it was "
                                                         "approved"})
    async with signed_in(porten, "ada@example.org") as client:
        page = await client.submit("/device", "/device", code=old.user_code)
        assert (page.status, page.notice()) == (
            400, "That code has expired. Run `porten agent login` on the machine again for a "
                 "new one.")


async def test_brute_forcing_user_codes_locks_the_account_out(porten: Porten) -> None:
    """Five wrong codes, then even the right one is refused for a while (429)."""
    await create_account(porten, "mallory@example.org")
    started = await start(porten)
    async with signed_in(porten, "mallory@example.org") as client:
        for guess in ("BCDF-GHJK", "bcdf-ghjl", "AAAA-AAAA", "12345678", "x"):
            page = await client.submit("/device", "/device", code=guess)
            assert (page.status, page.notice()) == (
                400, "That code is not valid. Check it against the code your machine shows.")
        page = await client.submit("/device", "/device", code=started["user_code"])
        assert (page.status, page.notice()) == (
            429, "Too many wrong codes. Wait 15 minutes and try again.")
    assert (await poll(porten, started["device_code"]))[1]["error"] == "authorization_pending"


async def test_a_denied_device_code_tells_the_agent(porten: Porten) -> None:
    """Deny in the portal and the agent's next poll is access_denied."""
    await create_account(porten, "ada@example.org")
    started = await start(porten)
    async with signed_in(porten, "ada@example.org") as client:
        page = await client.submit("/device", "/device/decide", code=started["user_code"],
                                   decision="deny")
        assert page.notice() == ("Denied. The machine was told, and the code can no longer "
                                 "be used.")
    status, body = await poll(porten, started["device_code"])
    assert (status, body["error"]) == (400, "access_denied")


async def test_malformed_device_requests_get_oauth_errors(porten: Porten) -> None:
    """A wrong grant type, a missing or unknown device code: the RFC's error codes."""
    status, body = await agent_post(porten, "/agent/v1/device/token",
                                    {"grant_type": "password", "device_code": "x"})
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    status, body = await agent_post(porten, "/agent/v1/device/token",
                                    {"grant_type": "urn:ietf:params:oauth:grant-type:"
                                                   "device_code"})
    assert (status, body["error"]) == (400, "invalid_request")
    status, body = await poll(porten, "not-a-device-code")
    assert (status, body) == (400, {"error": "invalid_grant",
                                    "error_description": "unknown device code"})


async def test_an_enrolment_token_enrols_one_node_only(porten: Porten) -> None:
    """Minted in the portal, used once; the second use is invalid_grant naming the node."""
    account = await create_account(porten, "ada@example.org")
    async with signed_in(porten, "ada@example.org") as client:
        page = await client.submit("/earn/add", "/earn/tokens", name="rack 3", ttl_s="3600")
        token = re.search(r'id="new-token">(pn-enrol-[A-Za-z0-9]+)<', page.text).group(1)
        assert token not in (await client.get("/earn/add")).text
    status, first = await agent_post(porten, "/agent/v1/enrol", {"token": token, "name": "r3"})
    assert status == 200, first
    assert first["owner_id"] == account.user_id
    status, second = await agent_post(porten, "/agent/v1/enrol", {"token": token, "name": "r4"})
    assert (status, second) == (400, {
        "error": "invalid_grant",
        "error_description": f"this enrolment token was already used (it enrolled "
                             f"{first['node_id']})"})
    owned = [n for n in porten.hub.projection.state.nodes.values()
             if n.owner_id == account.user_id]
    assert [n.name for n in owned] == ["r3"]


async def test_expired_revoked_unknown_and_malformed_tokens_are_refused(porten: Porten) -> None:
    """Each unusable token gets invalid_grant with its own reason."""
    account = await create_account(porten, "ada@example.org")
    expired = await tokens_at(porten, -7200).mint(account.user_id, ttl_s=3600, actor="test")
    revoked = await porten.hub.enrolment_tokens.mint(account.user_id, actor="test")
    await porten.hub.enrolment_tokens.revoke(account.user_id, revoked.state.token_id,
                                             actor="test")
    cases = {
        expired.token: "this enrolment token has expired; mint a new one under Earn → Add node",
        revoked.token: "this enrolment token was revoked by its owner",
        new_token("pn-enrol-"): "unknown enrolment token",
        expired.token[:-1] + ("A" if expired.token[-1] != "A" else "B"):
            "this is not an enrolment token (they start with pn-enrol- and were copied whole)",
    }
    for token, reason in cases.items():
        status, body = await agent_post(porten, "/agent/v1/enrol", {"token": token})
        assert (status, body) == (400, {"error": "invalid_grant", "error_description": reason})
    assert [n for n in porten.hub.projection.state.nodes.values()
            if n.owner_id == account.user_id] == []


async def test_starting_too_many_enrolments_from_one_address_is_slowed_down(
    porten: Porten,
) -> None:
    """Twenty starts per window per address; the next is a 429 slow_down saying when."""
    for _ in range(20):
        await start(porten)
    status, body = await agent_post(porten, "/agent/v1/device/code", {"name": "flood"})
    assert status == 429
    assert body["error"] == "slow_down"
    assert re.fullmatch(r"too many enrolment attempts from this address; retry in \d+ s",
                        body["error_description"])


async def test_bad_token_forms_are_refused_with_the_reason(porten: Porten) -> None:
    """An oversized name or a lifetime not offered is a 400 naming it; no token is minted."""
    account = await create_account(porten, "ada@example.org")
    async with signed_in(porten, "ada@example.org") as client:
        long_name = await client.submit("/earn/add", "/earn/tokens", name="n" * 201,
                                        ttl_s="3600")
        assert (long_name.status, long_name.notice()) == (
            400, "The token's name must be printable and at most 200 characters.")
        odd_ttl = await client.submit("/earn/add", "/earn/tokens", name="x", ttl_s="999999999")
        assert (odd_ttl.status, odd_ttl.notice()) == (
            400, "Pick how long the token is valid from the list.")
        injected = await client.submit("/earn/add", "/earn/tokens", name="<b>bold</b>",
                                       ttl_s="3600")
        assert injected.status == 200
        listing = await client.get("/earn/add")
        assert "<td>&lt;b&gt;bold&lt;/b&gt;</td>" in listing.text
    assert len(porten.hub.enrolment_tokens.owned_by(account.user_id)) == 1
