"""Build → API keys over HTTP: shown once, listed by prefix, policies edited, revoked; bad input."""

from __future__ import annotations

import re

from portal_harness import Page, PortalClient, create_account, signed_in
from v1_harness import CHAT, REASONING, Porten

from porten.domain.values import KeyPolicy

TOKEN = re.compile(r'<p class="secret" id="new-key">(sk-porten-[A-Za-z0-9]+)</p>')
INJECTED = "<script>alert('key')</script>"


async def create_key(client: PortalClient, **fields: object) -> tuple[Page, str]:
    """Create a key through the form; the page and the secret it shows."""
    page = await client.submit("/build/keys", "/build/keys", **fields)
    assert page.status == 200, page.text[:2000]
    found = TOKEN.search(page.text)
    assert found, page.text[:2000]
    return page, found.group(1)


async def models_status(porten: Porten, token: str) -> int:
    """The status of ``GET /v1/models`` with ``token``."""
    reply = await porten.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
    return reply.status


async def test_a_new_key_is_shown_once_and_then_only_by_prefix(porten: Porten) -> None:
    """The creating response holds the secret (no-store); the list shows only its prefix."""
    await create_account(porten, "ada@example.org")
    async with signed_in(porten, "ada@example.org") as client:
        page, token = await create_key(client, name="laptop")
        assert page.headers["Cache-Control"] == "no-store"
        assert await models_status(porten, token) == 200
        listing = await client.get("/build/keys")
        assert token not in listing.text
        assert f"<code>{token[:14]}…</code>" in listing.text
        assert "<td>laptop</td>" in listing.text


async def test_bad_key_forms_are_refused_with_the_reason(porten: Porten) -> None:
    """Each bad field is a 400 naming it, and no key is made."""
    account = await create_account(porten, "ada@example.org")
    cases = {
        "The key's name must be at most 200 characters.": {"name": "n" * 201},
        "Requests per minute must be a whole number of at least 1, or empty for no limit.":
            {"requests_per_min": "abc"},
        "Tokens per minute must be a whole number of at least 1, or empty for no limit.":
            {"tokens_per_min": "0"},
        "The budget must be an amount of at least 0, or empty for none.": {"budget_usd": "-1"},
        "Regions are names of at most 64 characters without spaces.":
            {"regions_other": "e u"},
        "Pick a minimum trust class from the list.": {"min_trust": "root"},
        "Unknown model: no-such-model.": {"models": "no-such-model"},
        "A field is longer than 2000 characters.": {"regions_other": "x" * 2001},
    }
    async with signed_in(porten, "ada@example.org") as client:
        for message, fields in cases.items():
            page = await client.submit("/build/keys", "/build/keys", **fields)
            assert (page.status, page.notice()) == (400, message), fields
    assert porten.hub.keys.owned_by(account.user_id) == []


async def test_a_script_injected_key_name_renders_as_text(porten: Porten) -> None:
    """A key named with a script tag is listed escaped, never as markup."""
    await create_account(porten, "ada@example.org")
    async with signed_in(porten, "ada@example.org") as client:
        await create_key(client, name=INJECTED)
        listing = await client.get("/build/keys")
        assert INJECTED not in listing.text
        assert "<td>&lt;script&gt;alert(&#x27;key&#x27;)&lt;/script&gt;</td>" in listing.text


async def test_editing_the_policy_changes_what_the_key_may_do(porten: Porten) -> None:
    """Regions, trust, own nodes, models and limits are saved as one policy and enforced."""
    account = await create_account(porten, "ada@example.org")
    async with signed_in(porten, "ada@example.org") as client:
        _, token = await create_key(client, name="ci")
        [key] = porten.hub.keys.owned_by(account.user_id)
        saved = await client.submit(
            f"/build/keys/{key.key_id}", f"/build/keys/{key.key_id}",
            regions="local", regions_other="eu, de", min_trust="verified", own_nodes="1",
            models=[CHAT], requests_per_min="60", tokens_per_min="", budget_usd="2.5",
        )
        assert saved.status == 303
        assert (await client.get(saved.location)).notice().startswith("Policy of key sk-porten-")
        assert porten.hub.keys.get(key.key_id).policy == KeyPolicy(
            regions=frozenset({"local", "eu", "de"}), min_trust="verified", fleet="own",
            models=frozenset({CHAT}), requests_per_min=60, budget_usd=2.5,
        )
        reply = await porten.post("/v1/chat/completions", {
            "model": REASONING, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {token}"})
        assert reply.status == 403
        assert reply.error["code"] == "model_not_allowed"


async def test_revoking_a_key_makes_its_next_call_fail_with_401(porten: Porten) -> None:
    """Revoke in the portal, and the very next API call with the key is refused."""
    account = await create_account(porten, "ada@example.org")
    async with signed_in(porten, "ada@example.org") as client:
        _, token = await create_key(client, name="leaked")
        [key] = porten.hub.keys.owned_by(account.user_id)
        assert await models_status(porten, token) == 200
        done = await client.submit("/build/keys", f"/build/keys/{key.key_id}/revoke")
        assert done.status == 303
        assert await models_status(porten, token) == 401
        listing = await client.get(done.location)
        assert listing.notice().endswith("revoked: requests with it now fail with 401.")
        assert '<span class="tag disabled">revoked</span>' in listing.text


async def test_another_accounts_key_is_not_found(porten: Porten) -> None:
    """Nobody sees, edits or revokes a key of another account; its id is simply unknown."""
    ada = await create_account(porten, "ada@example.org")
    await create_account(porten, "bob@example.org")
    async with signed_in(porten, "ada@example.org") as ada_client:
        await create_key(ada_client, name="ada's")
    [key] = porten.hub.keys.owned_by(ada.user_id)
    async with signed_in(porten, "bob@example.org") as bob:
        page = await bob.get(f"/build/keys/{key.key_id}")
        assert (page.status, page.notice()) == (404, "You have no active key with that id.")
        revoke = await bob.submit("/build/keys", f"/build/keys/{key.key_id}/revoke")
        assert revoke.status == 404
        assert "ada&#x27;s" not in (await bob.get("/build/keys")).text
    assert porten.hub.keys.get(key.key_id).active
