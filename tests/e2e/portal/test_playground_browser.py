"""The playground in a real browser: a cold model's load as a live bar, then the streamed answer."""

from __future__ import annotations

import re

from loading_harness import chat_body, loading_hub
from portal_browser import Browser
from v1_harness import SPARE, plan_for

from porten.agent.engines.sim import SimProfile
from porten.config import Settings

#: A 2 GB download in about 2.5 s (the bar has time to move), loading in about a second.
VISIBLE_LOAD = SimProfile(ttft_ms=1, tokens_per_s=400, download_mb_per_s=800, load_s_per_gb=0.3)

BAR_PHASE = "document.getElementById('warm-bar').dataset.phase"


async def test_a_cold_model_shows_download_then_loading_then_streams_the_answer(
    settings: Settings, browser: Browser
) -> None:
    """Download MB and % advance, then "loading into memory", then the answer, node and usage."""
    async with loading_hub(settings, profile=VISIBLE_LOAD) as porten:
        tab = await browser.tab()
        page = tab.page
        await tab.goto(f"{porten.url}/build/playground?model={SPARE}")
        assert "cold" in await page.locator("#model option:checked").inner_text()
        await page.fill("#api-key", porten.api_key)
        await page.fill("#prompt", "Tell me about loading models on demand.")
        await tab.shot("playground-cold-model")

        await page.click("#send")
        await tab.until(
            f"{BAR_PHASE} === 'downloading' && document.getElementById('warm-bar').value > 0 "
            "&& document.getElementById('warm-bar').value < 100"
        )
        detail = await page.inner_text("#warm-detail")
        assert re.fullmatch(r"\d+ of 2020 MB \(\d+%\)", detail), detail
        await tab.shot("downloading")
        await tab.until(f"{BAR_PHASE} === 'loading'")
        assert await page.inner_text("#warm-phase") == "loading into memory"
        await tab.shot("loading-into-memory")
        await tab.until("document.getElementById('status').textContent === 'Done.'")
        await tab.shot("answered")

        phases = await page.eval_on_selector_all(
            "#warm-log li", "items => items.map(li => li.dataset.phase)"
        )
        seen = [p for p in phases if p in ("downloading", "loading", "ready")]
        assert seen == ["downloading", "loading", "ready"], phases
        log = await page.locator("#warm-log li").all_inner_texts()
        assert any(re.fullmatch(r"downloading [1-9]\d*% \(\d+ / 2020 MB\)", line) for line in log)

        body = chat_body(SPARE, "Tell me about loading models on demand.")
        expected = plan_for(SPARE, body, VISIBLE_LOAD)
        assert await page.inner_text("#answer") == expected.content
        assert await page.inner_text("#served-by") == "local"
        usage = await page.inner_text("#usage")
        assert re.fullmatch(r"\d+ prompt \+ \d+ completion = \d+ tokens", usage), usage
        assert f"{len(expected.content_tokens)} completion" in usage


async def test_copy_as_curl_gives_the_request_the_page_sends(
    settings: Settings, browser: Browser
) -> None:
    """"Copy as curl" gives the page's request with $PORTEN_API_KEY, never the key itself."""
    async with loading_hub(settings, profile=VISIBLE_LOAD) as porten:
        tab = await browser.tab()
        await browser.context.grant_permissions(["clipboard-read", "clipboard-write"])
        page = tab.page
        await tab.goto(f"{porten.url}/build/playground?model={SPARE}")
        await page.fill("#api-key", porten.api_key)
        await page.fill("#prompt", "it's a test")
        await page.click("#copy-curl")
        copied = await page.evaluate("navigator.clipboard.readText()")
        await tab.shot("copy-as-curl")
        assert copied == await page.inner_text("#curl")
        assert copied.startswith(f"curl {porten.url}/v1/chat/completions")
        assert '-H "Authorization: Bearer $PORTEN_API_KEY"' in copied
        assert porten.api_key not in copied
        assert f'"model":"{SPARE}"' in copied
        assert "it'\\''s a test" in copied  # the shell quoting of the apostrophe
