"""The portal in a real browser, as people use it, with a screenshot of every page.

Sign in, create a key and see it once, chat with a cold model through the
playground while its load shows as a bar, revoke the key and watch the next
call fail with 401, approve a machine's device code; and an operator's
fleet page, a non-operator's 403, and a script-injected value that stays
text.
"""

from __future__ import annotations

import re

import aiohttp
from enrolment_harness import poll, start
from loading_harness import loading_hub
from portal_browser import Browser, Tab
from portal_harness import PASSWORD, create_account
from test_playground_browser import BAR_PHASE, VISIBLE_LOAD
from v1_harness import CHAT, SPARE, Porten, plan_for

from porten.config import Settings

PROMPT = "What does a cold start look like?"


async def sign_in(tab: Tab, porten: Porten, email: str, path: str) -> None:
    """Open ``path``, get sent to sign-in, sign in, and land back on ``path``."""
    await tab.goto(porten.url + path)
    assert tab.page.url.startswith(f"{porten.url}/signin?next=")
    await tab.page.fill("#email", email)
    await tab.page.fill("#password", PASSWORD)
    await tab.shot("sign-in")
    await tab.page.click("#signin")
    await tab.page.wait_for_url(porten.url + path)


async def api_status(porten: Porten, key: str) -> int:
    """The status of ``GET /v1/models`` with ``key``."""
    async with aiohttp.ClientSession() as http, http.get(
        porten.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        return resp.status


async def test_sign_in_key_playground_revoke_and_device_approval(
    settings: Settings, browser: Browser
) -> None:
    """The whole Build and Earn journey in one browser profile."""
    async with loading_hub(settings, profile=VISIBLE_LOAD) as porten:
        await create_account(porten, "ada@example.org")
        await browser.context.grant_permissions(["clipboard-read", "clipboard-write"])
        tab = await browser.tab(allow_errors=("status of 401",))  # the revoked key's call
        page = tab.page
        await sign_in(tab, porten, "ada@example.org", "/build/keys")
        assert await page.inner_text("#signed-in-as") == "ada@example.org"
        await tab.shot("keys-empty")

        # Create a key: shown once, copyable, then only its prefix.
        await page.fill("#key-name", "browser key")
        await page.click("#create")
        key = await page.inner_text("#new-key")
        assert re.fullmatch(r"sk-porten-[A-Za-z0-9]{38}", key)
        await page.click("#copy-key")
        assert await page.evaluate("navigator.clipboard.readText()") == key
        await tab.shot("key-shown-once")
        assert await api_status(porten, key) == 200

        # Use it in the playground against a cold model.
        await page.click("#try-key")
        await page.wait_for_url(porten.url + "/build/playground")
        assert await page.input_value("#api-key") == key
        await page.select_option("#model", SPARE)
        await page.fill("#prompt", PROMPT)
        await page.click("#send")
        await tab.until(f"{BAR_PHASE} === 'downloading' && "
                        "document.getElementById('warm-bar').value > 0")
        await tab.shot("playground-downloading")
        await tab.until(f"{BAR_PHASE} === 'loading'")
        await tab.shot("playground-loading-into-memory")
        await tab.until("document.getElementById('status').textContent === 'Done.'")
        await tab.shot("playground-answered")
        body = {"model": SPARE, "messages": [{"role": "user", "content": PROMPT}]}
        assert await page.inner_text("#answer") == plan_for(SPARE, body, VISIBLE_LOAD).content
        assert await page.inner_text("#served-by") == "local"

        # The list shows the prefix, never the secret; revoke it.
        await tab.goto(porten.url + "/build/keys")
        assert key not in await page.content()
        assert await page.inner_text("#keys tbody tr td:nth-child(2)") == key[:14] + "…"
        page.once("dialog", lambda dialog: dialog.accept())
        await page.click("[data-revoke]")
        await page.wait_for_url(re.compile(r".*/build/keys\?revoked=.*"))
        await tab.shot("key-revoked")
        assert await api_status(porten, key) == 401

        # The playground now says why the key no longer works.
        await tab.goto(f"{porten.url}/build/playground?model={CHAT}")
        await page.fill("#prompt", "still there?")
        await page.click("#send")
        await tab.until("document.getElementById('status').className === 'error'")
        assert await page.inner_text("#status") == "invalid or revoked API key"
        await tab.shot("playground-revoked-key-401")

        # Approve a machine's device code.
        started = await start(porten, "browser-box")
        await tab.goto(started["verification_uri_complete"])
        assert await page.input_value("#user-code") == started["user_code"]
        await tab.shot("device-enter-code")
        await page.click("#continue")
        assert await page.inner_text("#client-name") == "browser-box"
        await tab.shot("device-confirm")
        await page.click("#approve")
        assert (await page.inner_text("main .notice")).startswith("Approved.")
        await tab.shot("device-approved")
        status, node = await poll(porten, started["device_code"])
        assert status == 200, node

        await tab.goto(porten.url + "/earn")
        assert "browser-box" in await page.inner_text("#my-nodes")
        await tab.shot("earn")
        await tab.goto(porten.url + "/earn/add")
        await tab.shot("earn-add-node")
        await tab.goto(porten.url + "/docs")
        await tab.shot("docs")


async def test_operator_fleet_page_non_operator_403_and_injection_stays_text(
    settings: Settings, browser: Browser
) -> None:
    """An operator sees the fleet; a user gets 403; a script-injected key name never runs."""
    async with loading_hub(settings, profile=VISIBLE_LOAD) as porten:
        await create_account(porten, "op@example.org", operator=True)
        await create_account(porten, "eve@example.org")
        dialogs: list[str] = []

        eve = await browser.tab(allow_errors=("status of 403",))
        eve.page.on("dialog", lambda d: dialogs.append(d.message))
        await sign_in(eve, porten, "eve@example.org", "/build/keys")
        injected = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
        await eve.page.fill("#key-name", injected)
        await eve.page.click("#create")
        await eve.goto(porten.url + "/build/keys")
        assert await eve.page.inner_text("#keys tbody tr td:first-child") == injected
        await eve.shot("injected-name-as-text")
        response = await eve.goto(porten.url + "/fleet")
        assert response.status == 403
        assert await eve.page.inner_text("main .notice") == (
            "Only operators may open the fleet pages.")
        await eve.shot("fleet-403")
        assert dialogs == []

        await browser.context.clear_cookies()
        op = await browser.tab()
        await sign_in(op, porten, "op@example.org", "/fleet")
        assert await op.page.locator("#nodes tr[data-node='local']").count() == 1
        assert await op.page.locator(f"#catalog tr[data-model='{CHAT}']").count() == 1
        await op.shot("fleet")
        await op.page.click(f"#catalog tr[data-model='{SPARE}'] button[data-action='disable']")
        await op.page.wait_for_url(re.compile(r".*/fleet\?changed=.*"))
        assert not porten.hub.projection.state.catalog[SPARE].offered
        await op.shot("fleet-model-disabled")
