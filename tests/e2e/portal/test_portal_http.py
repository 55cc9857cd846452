"""The portal over plain HTTP: docs as Markdown, llms.txt, security headers, escaping."""

from __future__ import annotations

import re
import time
from pathlib import Path

import aiohttp
import attrs
from v1_harness import Porten, serving

from porten.adapters.http.portal._web import CSP
from porten.config import Settings
from porten.domain import events as ev
from porten.domain.values import CatalogEntry

REPO = Path(__file__).resolve().parents[3]
INJECTED = '<script>alert("pwned")</script>'
PAGES = ("/", "/docs", "/docs/overview", "/build/playground", "/signin")


async def fetch(porten: Porten, path: str) -> tuple[int, dict[str, str], str]:
    """GET ``path`` without following redirects: status, headers, text."""
    async with aiohttp.ClientSession() as http, http.get(
        porten.url + path, allow_redirects=False
    ) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def test_every_docs_page_is_served_as_markdown(porten: Porten) -> None:
    """README is /docs/overview.md and each docs/*.md is /docs/<name>.md, byte for byte."""
    status, headers, text = await fetch(porten, "/docs/overview.md")
    assert status == 200
    assert headers["Content-Type"] == "text/markdown; charset=utf-8"
    assert text == (REPO / "README.md").read_text()
    for path in sorted((REPO / "docs").glob("*.md")):
        status, _, text = await fetch(porten, f"/docs/{path.stem}.md")
        assert status == 200, path
        assert text == path.read_text()


async def test_llms_txt_indexes_every_page(porten: Porten) -> None:
    """/llms.txt links each page's Markdown by absolute URL; /llms-full.txt holds them all."""
    status, headers, text = await fetch(porten, "/llms.txt")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert text.startswith("# Porten\n\n> ")
    links = re.findall(r"^- \[[^\]]+\]\(([^)]+)\)", text, re.MULTILINE)
    names = ["overview", *sorted(p.stem for p in (REPO / "docs").glob("*.md"))]
    assert links[: len(names)] == [f"{porten.url}/docs/{n}.md" for n in names]
    _, _, full = await fetch(porten, "/llms-full.txt")
    assert (REPO / "README.md").read_text().strip() in full
    assert (REPO / "docs" / "architecture.md").read_text().strip() in full


async def test_unknown_docs_pages_are_404_pages(porten: Porten) -> None:
    """A page that does not exist, or a path that tries to climb out, is a 404 page."""
    for path in ("/docs/nope.md", "/docs/nope", "/docs/..%2FREADME.md", "/docs/.md"):
        status, headers, text = await fetch(porten, path)
        assert status == 404, path
        assert headers["Content-Type"].startswith("text/html")
        assert "There is no docs page called" in text


async def test_pages_carry_security_headers_and_no_inline_script(porten: Porten) -> None:
    """Every page has the CSP and hardening headers, and no inline script, handler or style."""
    for path in PAGES:
        status, headers, text = await fetch(porten, path)
        assert status == 200, path
        assert headers["Content-Security-Policy"] == CSP
        assert "'unsafe-inline'" not in CSP
        assert "'unsafe-eval'" not in CSP
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "same-origin"
        assert headers["Cache-Control"] == "no-store"
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), path
        assert not re.search(r"\son[a-z]+=", text), path
        assert not re.search(r"\sstyle=|<style", text), path


async def test_the_csrf_cookie_is_http_only_and_same_site(porten: Porten) -> None:
    """The first page view sets porten_csrf with HttpOnly and SameSite=Lax (no Secure on http)."""
    _, headers, _ = await fetch(porten, "/signin")
    cookie = headers["Set-Cookie"]
    assert cookie.startswith("porten_csrf=")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Path=/" in cookie
    assert "Secure" not in cookie


async def test_cookies_are_secure_when_the_portal_is_served_over_https(
    settings: Settings,
) -> None:
    """With PORTEN_PUBLIC_URL on https, the portal's cookies carry Secure."""
    https = attrs.evolve(settings, public_url="https://porten.example")
    async with serving(https, preloaded=()) as porten:
        _, headers, _ = await fetch(porten, "/signin")
        assert "Secure" in headers["Set-Cookie"]


async def test_a_script_injected_model_id_renders_as_text(porten: Porten) -> None:
    """A catalog id holding a script tag appears escaped in the playground, never as markup."""
    position = await porten.hub.writer.append([ev.ModelOffered(
        at=time.time(), actor="test", model=CatalogEntry(id=INJECTED, vram_mb=1, disk_mb=1),
    )])
    assert await porten.hub.projection.wait_until(position, 10.0)
    _, _, text = await fetch(porten, "/build/playground")
    assert INJECTED not in text
    escaped = "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;"
    assert f'<option value="{escaped}"' in text
