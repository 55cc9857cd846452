"""``/admin/v1`` through the real hub: operators only, every change audited, no secret kept."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from keys_harness import bearer, keyed_account
from v1_harness import CHAT, LOCAL, Porten, Reply, user

from porten.domain import events as ev
from porten.domain.values import KeyPolicy

pytestmark = pytest.mark.postgres


def chat() -> dict[str, Any]:
    """A small chat request."""
    return {"model": CHAT, "messages": user("hi"), "max_tokens": 4}


async def send(porten: Porten, method: str, path: str, token: str, body: Any = None) -> Reply:
    """An admin API call with ``token``."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, porten.url + path, headers=bearer(token),
                     data=None if body is None else json.dumps(body).encode()) as resp,
    ):
        return Reply(resp.status, resp.headers, await resp.read())


def error(reply: Reply, status: int, code: str, message: str, param: str | None = None) -> None:
    """``reply`` is exactly this OpenAI-shaped error."""
    assert reply.status == status, reply.body
    assert reply.error == {"message": message, "type": "invalid_request_error", "param": param,
                           "code": code}


@pytest.fixture
async def operator(porten: Porten) -> str:
    """An operator's API key."""
    _, token = await keyed_account(porten, "op@example.org", operator=True)
    return token


async def test_only_operators_may_use_the_admin_api(porten: Porten) -> None:
    """No key: 401. A user's key, or the local key of an account-less owner: 403."""
    _, user_key = await keyed_account(porten, "u@example.org")
    denied = "This API key's account is not an operator; the admin API is for operators."
    for token in (user_key, porten.api_key):
        for method, path in (("GET", "/admin/v1/keys"), ("POST", "/admin/v1/users"),
                             ("PATCH", f"/admin/v1/nodes/{LOCAL}")):
            error(await send(porten, method, path, token, {}), 403, "permission_denied", denied)
    reply = await porten.get("/admin/v1/keys", headers={})
    error(reply, 401, "invalid_api_key",
          "no API key: send it as 'Authorization: Bearer sk-porten-…'")


async def test_a_key_from_creation_to_revocation(porten: Porten, operator: str) -> None:
    """Create an account and a key, change its policy, revoke it: each step works and is audited."""
    made = await send(porten, "POST", "/admin/v1/users", operator, {"email": "dev@example.org"})
    assert made.status == 201, made.body
    account = made.json()
    assert len(account.pop("password")) >= 20
    minted = await send(porten, "POST", "/admin/v1/keys", operator, {
        "owner_id": account["id"], "name": "ci",
        "policy": {"regions": ["eu"], "min_trust": "verified", "requests_per_min": 60}})
    assert minted.status == 201, minted.body
    key = minted.json()
    token = key.pop("api_key")
    assert token.startswith("sk-porten-")
    assert key["policy"] == {"regions": ["eu"], "min_trust": "verified", "fleet": "all",
                             "models": [], "requests_per_min": 60, "tokens_per_min": None,
                             "budget_usd": None}
    assert (await porten.get("/v1/models", headers=bearer(token))).status == 200
    shown = await send(porten, "GET", f"/admin/v1/keys/{key['id']}", operator)
    assert token.encode() not in shown.body
    assert shown.json()["prefix"] == token[:14] + "…"
    changed = await send(porten, "PUT", f"/admin/v1/keys/{key['id']}/policy", operator,
                         {"fleet": "own"})
    assert changed.json()["policy"]["fleet"] == "own"
    assert changed.json()["policy"]["regions"] == []
    revoked = await send(porten, "POST", f"/admin/v1/keys/{key['id']}/revoke", operator,
                         {"reason": "rotated"})
    assert revoked.json()["revoked_at"] is not None
    error(await porten.post("/v1/chat/completions", chat(), headers=bearer(token)), 401,
          "invalid_api_key", "invalid or revoked API key")
    await porten.hub.writer.flush()
    records = await porten.hub.store.read_filtered(types=["admin"], limit=100)
    audit = [r.event for r in records if isinstance(r.event, ev.AdminActionTaken)]
    op_id = porten.hub.accounts.by_email("op@example.org")
    assert op_id is not None
    assert [(a.actor, a.action, a.target) for a in audit] == [
        (f"user:{op_id.user_id}", "user.create", account["id"]),
        (f"user:{op_id.user_id}", "key.create", key["id"]),
        (f"user:{op_id.user_id}", "key.policy", key["id"]),
        (f"user:{op_id.user_id}", "key.revoke", key["id"]),
    ]
    raw = b"".join(r.data for r in await porten.hub.store.read_raw(limit=100_000))
    assert token.encode() not in raw


async def test_a_misspelt_policy_field_is_refused(porten: Porten, operator: str) -> None:
    """'region' for 'regions' is a 400, never a key that allows every region."""
    owner = porten.hub.accounts.by_email("op@example.org")
    assert owner is not None
    reply = await send(porten, "POST", "/admin/v1/keys", operator,
                       {"owner_id": owner.user_id, "policy": {"region": ["eu"]}})
    error(reply, 400, "invalid_value",
          "Invalid request body: Object contains unknown field `region` - at `$.policy`")
    assert porten.hub.keys.owned_by(owner.user_id)[1:] == []


@pytest.mark.parametrize(("policy", "message"), [
    ({"requests_per_min": 0}, "invalid policy: requests_per_min must be at least 1 (omit it "
                              "for no limit; revoke a key to stop it)"),
    ({"budget_usd": -1.0}, "invalid policy: budget_usd must be a finite amount of at least 0"),
    ({"regions": [""]}, "invalid policy: regions must be non-empty names without spaces"),
    ({"min_trust": "secret"}, "Invalid request body: Invalid enum value 'secret' - at "
                              "`$.min_trust`"),
])
async def test_nonsensical_policies_are_refused(
    porten: Porten, operator: str, policy: dict[str, Any], message: str
) -> None:
    """Limits below 1, negative budgets, empty regions, unknown trust classes: 400."""
    key = porten.hub.keys.all()[-1]
    reply = await send(porten, "PUT", f"/admin/v1/keys/{key.key_id}/policy", operator, policy)
    error(reply, 400, "invalid_value", message)


async def test_unknown_things_are_404(porten: Porten, operator: str) -> None:
    """A key, node, account or model that does not exist: 404 not_found naming it."""
    cases = [
        ("POST", "/admin/v1/keys/key_nope/revoke", "no key with id 'key_nope'"),
        ("PATCH", "/admin/v1/nodes/nope", "no node with id 'nope'"),
        ("PATCH", "/admin/v1/users/usr_nope", "no account with id 'usr_nope'"),
        ("POST", "/admin/v1/catalog/nope/enable", "no model 'nope' in the catalog"),
    ]
    for method, path, message in cases:
        body = {"region": "eu"} if "nodes" in path else {}
        error(await send(porten, method, path, operator, body), 404, "not_found", message)


async def test_operators_set_region_and_trust(porten: Porten, operator: str) -> None:
    """PATCH a node into eu/confidential: an eu-only, confidential-only key may now use it."""
    _, pinned = await keyed_account(porten, "eu@example.org", KeyPolicy(
        regions=frozenset({"eu"}), min_trust="confidential"))
    assert (await porten.post("/v1/chat/completions", chat(), headers=bearer(pinned))).status \
        == 503
    reply = await send(porten, "PATCH", f"/admin/v1/nodes/{LOCAL}", operator,
                       {"region": "eu", "trust_class": "confidential"})
    assert reply.status == 200, reply.body
    assert (reply.json()["region"], reply.json()["trust_class"]) == ("eu", "confidential")
    served = await porten.post("/v1/chat/completions", chat(), headers=bearer(pinned))
    assert served.status == 200
    assert served.headers["X-Porten-Node"] == LOCAL
    bad = await send(porten, "PATCH", f"/admin/v1/nodes/{LOCAL}", operator,
                     {"region": "e u"})
    error(bad, 400, "invalid_value",
          "a region is a name of at most 64 characters without spaces")


async def test_operators_withdraw_offer_and_price_models(porten: Porten, operator: str) -> None:
    """Disable → 404 for requests; enable → served; a new price is what the next request costs."""
    off = await send(porten, "POST", f"/admin/v1/catalog/{CHAT}/disable", operator,
                     {"reason": "superseded"})
    assert off.json()["offered"] is False
    reply = await porten.post("/v1/chat/completions", chat())
    assert reply.status == 404
    on = await send(porten, "POST", f"/admin/v1/catalog/{CHAT}/enable", operator)
    assert on.json()["offered"] is True
    priced = await send(porten, "PATCH", f"/admin/v1/catalog/{CHAT}", operator,
                        {"price_in_per_m": 1000.0, "price_out_per_m": 2000.0})
    assert (priced.json()["price_in_per_m"], priced.json()["price_out_per_m"]) == (1000.0, 2000.0)
    reply = await porten.post("/v1/chat/completions", chat(), headers={
        **porten.auth(), "X-Request-Id": "priced-1"})
    assert reply.status == 200
    served = await porten.served_once("priced-1")
    assert served.cost_usd == pytest.approx(
        (served.prompt_tokens * 1000 + served.completion_tokens * 2000) / 1e6)
    listing = await send(porten, "GET", "/admin/v1/catalog", operator)
    assert {m["id"] for m in listing.json()["data"]} >= {CHAT}
