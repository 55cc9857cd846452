"""A person at the portal, over plain HTTP: a cookie jar, forms with their CSRF token.

:class:`PortalClient` keeps cookies like a browser (``unsafe=True``: the
hub listens on 127.0.0.1, and aiohttp's jar otherwise drops cookies for IP
hosts), never follows redirects (tests assert them), and :meth:`submit`
posts a form with the CSRF token of the page it came from — so a test that
wants the token missing or wrong says so explicitly.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import attrs
from v1_harness import Porten

from porten.services.accounts import Account

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


@attrs.frozen
class Page:
    """A portal response: status, headers, body text."""

    status: int
    headers: Mapping[str, str]
    text: str

    @property
    def location(self) -> str:
        """Where a redirect points."""
        return self.headers["Location"]

    @property
    def csrf(self) -> str:
        """The CSRF token of the page's first form."""
        found = _CSRF.search(self.text)
        assert found, "the page has no form with a CSRF token"
        return html.unescape(found.group(1))

    def notice(self) -> str:
        """The text of the page's first notice (unescaped)."""
        found = re.search(r'<p class="notice [a-z]+" role="[a-z]+">(.*?)</p>', self.text)
        assert found, self.text[:2000]
        return html.unescape(found.group(1))


async def create_account(porten: Porten, email: str, *, operator: bool = False) -> Account:
    """A fresh account with :data:`PASSWORD`."""
    return await porten.hub.accounts.create_user(email, PASSWORD, name=email.partition("@")[0],
                                                 operator=operator, actor="test")


@attrs.define
class PortalClient:
    """One browser's worth of cookies against the hub."""

    base: str
    http: aiohttp.ClientSession

    async def get(self, path: str) -> Page:
        """GET ``path`` (no redirects followed)."""
        async with self.http.get(self.base + path, allow_redirects=False) as resp:
            return Page(resp.status, dict(resp.headers), await resp.text())

    async def post(self, path: str, fields: Sequence[tuple[str, str]] | Mapping[str, str],
                   *, headers: Mapping[str, str] | None = None) -> Page:
        """POST ``fields`` form-encoded, exactly as given (no token added)."""
        data = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
        async with self.http.post(self.base + path, data=data, allow_redirects=False,
                                  headers=dict(headers or {})) as resp:
            return Page(resp.status, dict(resp.headers), await resp.text())

    async def submit(self, page_path: str, action: str, /, **fields: Any) -> Page:
        """Open ``page_path``, then post its form to ``action`` with its CSRF token."""
        page = await self.get(page_path)
        assert page.status == 200, (page.status, page.text[:500])
        data: list[tuple[str, str]] = [("csrf", page.csrf)]
        for name, value in fields.items():
            values = value if isinstance(value, list | tuple) else [value]
            data += [(name, str(v)) for v in values]
        return await self.post(action, data)

    async def sign_in(self, email: str, password: str = PASSWORD, nxt: str = "/") -> Page:
        """Sign in through the form."""
        return await self.submit("/signin", "/signin", email=email, password=password, next=nxt)

    def cookie(self, name: str) -> str | None:
        """A cookie's value in the jar."""
        for c in self.http.cookie_jar:
            if c.key == name:
                return c.value
        return None


@asynccontextmanager
async def portal_client(porten: Porten) -> AsyncIterator[PortalClient]:
    """A client with an empty cookie jar."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield PortalClient(porten.url, http)


@asynccontextmanager
async def signed_in(porten: Porten, email: str) -> AsyncIterator[PortalClient]:
    """A client signed in as the (existing) account ``email``."""
    async with portal_client(porten) as client:
        page = await client.sign_in(email)
        assert page.status == 303, page.text[:1000]
        yield client
