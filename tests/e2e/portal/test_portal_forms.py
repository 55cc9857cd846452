"""Sign-in, sessions, CSRF and the operator gate over plain HTTP, with every bad input named."""

from __future__ import annotations

import html
import time

from portal_harness import PASSWORD, create_account, portal_client, signed_in
from v1_harness import CHAT, SPARE, Porten

from porten.adapters.http.portal._session import Sessions, derive_key
from porten.domain import events as ev

CSRF_MISSING = "The form's CSRF token is missing. Reload the page and retry."
CSRF_INVALID = "The form's CSRF token is invalid or expired. Reload the page and retry."


async def test_signing_in_sets_a_hardened_session_cookie(porten: Porten) -> None:
    """A good password gives an HttpOnly, SameSite=Lax session cookie and goes to ``next``."""
    await create_account(porten, "ada@example.org")
    async with portal_client(porten) as client:
        page = await client.sign_in("ada@example.org", nxt="/earn")
        assert page.status == 303
        assert page.location == "/earn"
        cookies = page.headers["Set-Cookie"]
        assert "porten_session=" in cookies
        session_cookie = next(c for c in cookies.split(", porten") if "session=" in c)
        assert "HttpOnly" in session_cookie
        assert "SameSite=Lax" in session_cookie
        assert "Max-Age=43200" in session_cookie
        assert "Secure" not in session_cookie  # plain http here; https adds it
        keys = await client.get("/build/keys")
        assert keys.status == 200
        assert 'id="signed-in-as">ada@example.org<' in keys.text


async def test_wrong_password_and_unknown_email_read_the_same(porten: Porten) -> None:
    """Neither says which part was wrong (no account probing)."""
    await create_account(porten, "ada@example.org")
    async with portal_client(porten) as client:
        wrong = await client.sign_in("ada@example.org", "not the password at all")
        unknown = await client.sign_in("nobody@example.org")
        for page in (wrong, unknown):
            assert page.status == 401
            assert page.notice() == "Wrong email or password."
            assert "porten_session" not in page.headers.get("Set-Cookie", "")


async def test_missing_and_oversized_sign_in_fields(porten: Porten) -> None:
    """Missing fields are a 400 asking for both; oversized ones a 400; a huge form a 413."""
    async with portal_client(porten) as client:
        missing = await client.submit("/signin", "/signin", email="ada@example.org", password="")
        assert (missing.status, missing.notice()) == (400, "Enter your email and password.")
        huge = await client.submit("/signin", "/signin", email="ada@example.org",
                                   password="x" * 2000)
        assert (huge.status, huge.notice()) == (400, "That email or password is too long.")
        page = await client.get("/signin")
        too_big = await client.post("/signin", {"csrf": page.csrf, "email": "a" * 70_000})
        assert (too_big.status, too_big.notice()) == (413, "The form is larger than 64 KiB.")


async def test_a_form_without_a_valid_csrf_token_is_refused(porten: Porten) -> None:
    """No token, a made-up one, or one from another browser's cookie: 403, nothing happens."""
    await create_account(porten, "ada@example.org")
    async with portal_client(porten) as client, portal_client(porten) as other:
        await client.get("/signin")
        fields = {"email": "ada@example.org", "password": PASSWORD}
        missing = await client.post("/signin", fields)
        assert (missing.status, missing.notice()) == (403, CSRF_MISSING)
        forged = await client.post("/signin", {**fields, "csrf": "A" * 43})
        assert (forged.status, forged.notice()) == (403, CSRF_INVALID)
        foreign = (await other.get("/signin")).csrf
        stolen = await client.post("/signin", {**fields, "csrf": foreign})
        assert (stolen.status, stolen.notice()) == (403, CSRF_INVALID)
        assert client.cookie("porten_session") is None


async def test_a_cross_site_post_is_refused(porten: Porten) -> None:
    """A form posted from another origin is a 403 even with a valid token."""
    await create_account(porten, "ada@example.org")
    async with portal_client(porten) as client:
        page = await client.get("/signin")
        refused = await client.post(
            "/signin", {"csrf": page.csrf, "email": "ada@example.org", "password": PASSWORD},
            headers={"Origin": "https://evil.example"},
        )
        assert (refused.status, refused.notice()) == (403, "Cross-site form posts are refused.")


async def test_repeated_wrong_passwords_lock_the_account_out(porten: Porten) -> None:
    """After 10 failures even the right password is refused for a while (429)."""
    await create_account(porten, "ada@example.org")
    async with portal_client(porten) as client:
        for _ in range(10):
            assert (await client.sign_in("ada@example.org", "wrong password!")).status == 401
        locked = await client.sign_in("ada@example.org")
        assert locked.status == 429
        assert locked.notice() == ("Too many failed sign-ins for this account. Wait 15 minutes "
                                   "and try again.")


async def test_an_expired_session_is_sent_to_sign_in_with_a_notice(porten: Porten) -> None:
    """A genuine cookie past its expiry redirects to sign-in, says so, and is cleared."""
    account = await create_account(porten, "ada@example.org")
    sessions = Sessions(key=derive_key(porten.hub.server_secret),
                        ttl_s=porten.hub.settings.session_ttl_s)
    _, cookie = sessions.issue(account.user_id, time.time() - sessions.ttl_s - 1)
    async with portal_client(porten) as client:
        client.http.cookie_jar.update_cookies({"porten_session": cookie})
        page = await client.get("/build/keys")
        assert page.status == 303
        assert page.location == "/signin?next=%2Fbuild%2Fkeys&expired=1"
        assert 'porten_session=""' in page.headers["Set-Cookie"]
        notice = await client.get(page.location)
        assert notice.notice() == "Your session expired. Sign in again."


async def test_signing_out_revokes_the_session_itself(porten: Porten) -> None:
    """After sign-out a copy of the old cookie no longer signs anyone in."""
    await create_account(porten, "ada@example.org")
    async with signed_in(porten, "ada@example.org") as client, portal_client(porten) as thief:
        cookie = client.cookie("porten_session")
        assert cookie
        out = await client.submit("/build/keys", "/signout")
        assert (out.status, out.location) == (303, "/signin?signedout=1")
        thief.http.cookie_jar.update_cookies({"porten_session": cookie})
        page = await thief.get("/build/keys")
        assert (page.status, page.location) == (303, "/signin?next=%2Fbuild%2Fkeys")


async def test_a_disabled_account_is_signed_out_at_once(porten: Porten) -> None:
    """Disabling an account ends its sessions on their next request."""
    account = await create_account(porten, "ada@example.org")
    async with signed_in(porten, "ada@example.org") as client:
        await porten.hub.accounts.disable(account.user_id, actor="test")
        assert (await client.get("/build/keys")).status == 303


async def test_not_signed_in_goes_to_sign_in_and_back(porten: Porten) -> None:
    """A protected page redirects to sign-in and, after it, back; never to another site."""
    await create_account(porten, "op@example.org", operator=True)
    async with portal_client(porten) as client:
        page = await client.get("/fleet")
        assert (page.status, page.location) == (303, "/signin?next=%2Ffleet")
        back = await client.sign_in("op@example.org", nxt="/fleet")
        assert back.location == "/fleet"
        for target in ("//evil.example/x", "/\t/evil.example", "https://evil.example",
                       "/\\evil.example", "javascript:alert(1)"):
            elsewhere = await client.sign_in("op@example.org", nxt=target)
            assert elsewhere.location == "/build/keys", target


async def test_fleet_pages_are_forbidden_to_non_operators(porten: Porten) -> None:
    """A signed-in non-operator gets 403 on the fleet page and its catalog form."""
    await create_account(porten, "ada@example.org")
    async with signed_in(porten, "ada@example.org") as client:
        page = await client.get("/fleet")
        assert (page.status, page.notice()) == (403, "Only operators may open the fleet pages.")
        csrf = (await client.get("/build/keys")).csrf
        post = await client.post("/fleet/catalog", {"csrf": csrf, "model": CHAT,
                                                    "action": "disable"})
        assert post.status == 403
        assert porten.hub.projection.state.catalog[CHAT].offered


async def test_an_operator_sees_the_fleet_and_changes_the_catalog(porten: Porten) -> None:
    """Nodes, models, decisions; disabling a model is an audited event naming the operator."""
    op = await create_account(porten, "op@example.org", operator=True)
    async with signed_in(porten, "op@example.org") as client:
        page = await client.get("/fleet")
        assert page.status == 200
        assert '<tr data-node="local">' in page.text
        assert f'<tr data-model="{CHAT}">' in page.text
        assert 'id="decisions"' in page.text
        cold = await porten.post("/v1/chat/completions", {
            "model": SPARE, "messages": [{"role": "user", "content": "wake up"}]})
        assert cold.status == 200, cold.body
        [requested] = [r.event for r in await porten.hub.store.read_filtered(
            types=["load_requested"]) if isinstance(r.event, ev.LoadRequested)]
        decisions = await client.get("/fleet")
        assert (f"<td>load requested</td><td>local</td><td>{SPARE}</td>"
                f"<td>{html.escape(requested.reason)}</td>") in decisions.text
        done = await client.submit("/fleet", "/fleet/catalog", model=CHAT, action="disable")
        assert done.status == 303
        assert not porten.hub.projection.state.catalog[CHAT].offered
        after = await client.get(done.location)
        assert after.notice() == f"Catalog changed: {CHAT} disabled."
    await porten.hub.writer.flush()
    records = await porten.hub.store.read_filtered(types=["admin_action_taken",
                                                          "model_withdrawn"])
    audit = [r.event for r in records if isinstance(r.event, ev.AdminActionTaken)]
    assert [(a.actor, a.action, a.target) for a in audit] == [
        (f"user:{op.user_id}", "catalog.disable", CHAT)]
