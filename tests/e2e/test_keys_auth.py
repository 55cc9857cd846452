"""Authentication with API keys through the real hub: every bad credential is the exact 401.

Also: revocation and disabled accounts take effect on the next request, in
this hub process and in another one following the same log.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from keys_harness import bearer, keyed_account
from multidict import CIMultiDict
from v1_harness import CHAT, LOCAL, Porten, Reply, user

from porten.cli.hub import listening
from porten.config import Settings
from porten.services.credentials import new_api_key

pytestmark = pytest.mark.postgres

CHAT_PATH = "/v1/chat/completions"
USE = "use 'Authorization: Bearer sk-porten-…'"
MISSING = "no API key: send it as 'Authorization: Bearer sk-porten-…'"
NOT_BEARER = f"the Authorization header must use the Bearer scheme: {USE}"
SPELLING = f"spell the scheme exactly 'Bearer': {USE}"
SPACING = f"put exactly one space between 'Bearer' and the key, and nothing around them: {USE}"
NO_TOKEN = f"the Authorization header has no usable token: {USE}"
TWO = f"send exactly one Authorization header: {USE}"
FOREIGN = "this is not a Porten API key (they start with sk-porten-)"
MALFORMED = "malformed API key (its checksum does not match)"
UNKNOWN = "invalid or revoked API key"


def chat() -> dict[str, Any]:
    """A small chat request."""
    return {"model": CHAT, "messages": user("hello"), "max_tokens": 4}


def assert_401(reply: Reply, message: str) -> None:
    """``reply`` is exactly the 401 OpenAI clients expect, with ``message``."""
    assert reply.status == 401, reply.body
    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="porten"'
    assert reply.error == {"message": message, "type": "invalid_request_error", "param": None,
                           "code": "invalid_api_key"}


def headers(*values: str) -> CIMultiDict[str]:
    """One ``Authorization`` header per value."""
    return CIMultiDict(("Authorization", v) for v in values)


async def test_every_bad_authorization_is_the_exact_401(porten: Porten) -> None:
    """Missing, blank, other scheme, other spelling or spacing, duplicate, foreign, unknown: 401.

    Whitespace before or after the whole value is not part of it in HTTP (the
    server's parser drops it), so ``bearer_token``'s own tests cover that.
    """
    key = porten.api_key
    cases = {
        "missing": (CIMultiDict[str](), MISSING),
        "empty": (headers(""), MISSING),
        "blank": (headers("   "), MISSING),
        "tabs only": (headers("\t\t"), MISSING),
        "scheme only": (headers("Bearer"), NO_TOKEN),
        "whitespace token": (headers("Bearer \t "), NO_TOKEN),
        "token with a space": (headers(f"Bearer {key[:20]} {key[20:]}"), NO_TOKEN),
        "basic": (headers("Basic dXNlcjpwYXNzd29yZA=="), NOT_BEARER),
        "no scheme": (headers(key), NOT_BEARER),
        "lowercase bearer": (headers(f"bearer {key}"), SPELLING),
        "uppercase bearer": (headers(f"BEARER {key}"), SPELLING),
        "tab separator": (headers(f"Bearer\t{key}"), SPACING),
        "two spaces before the key": (headers(f"Bearer  {key}"), SPACING),
        "a space and a tab before the key": (headers(f"Bearer \t{key}"), SPACING),
        "duplicate": (headers(f"Bearer {key}", f"Bearer {key}"), TWO),
        "duplicate, one empty": (headers(f"Bearer {key}", ""), TWO),
        "openai key": (headers("Bearer sk-proj-" + "A1b2C3d4" * 6), FOREIGN),
        "mistyped key": (headers(f"Bearer {key[:-1]}X"), MALFORMED),
        "valid checksum, no such key": (headers(f"Bearer {new_api_key()}"), UNKNOWN),
    }
    for name, (sent, message) in cases.items():
        for path in (CHAT_PATH, "/v1/embeddings", "/v1/usage"):
            reply = await (porten.post(path, chat(), headers=sent) if path != "/v1/usage"
                           else porten.get(path, headers=sent))
            assert reply.status == 401, name
            assert_401(reply, message)
            assert key.encode() not in reply.body, name
    assert (await porten.sim_stats())["started"] == 0


async def test_only_the_exact_bearer_form_is_accepted(porten: Porten) -> None:
    """'Bearer <key>' is served; the same key lowercased-scheme or double-spaced is not."""
    reply = await porten.post(CHAT_PATH, chat(), headers=headers(f"Bearer {porten.api_key}"))
    assert reply.status == 200, reply.body
    assert reply.headers["X-Porten-Node"] == LOCAL
    for value, message in ((f"bearer {porten.api_key}", SPELLING),
                           (f"Bearer   {porten.api_key}", SPACING)):
        assert_401(await porten.post(CHAT_PATH, chat(), headers=headers(value)), message)
    assert (await porten.sim_stats())["started"] == 1


async def test_a_revoked_key_is_refused_on_its_next_request(porten: Porten) -> None:
    """Revoked between two requests: the first is served, the second is 401."""
    _, token = await keyed_account(porten, "r@example.org")
    assert (await porten.post(CHAT_PATH, chat(), headers=bearer(token))).status == 200
    [key] = [k for k in porten.hub.keys.all() if k.name == "test"]
    await porten.hub.keys.revoke(key.key_id, reason="leaked", actor="test")
    assert_401(await porten.post(CHAT_PATH, chat(), headers=bearer(token)), UNKNOWN)
    assert_401(await porten.get("/v1/models", headers=bearer(token)), UNKNOWN)


async def test_a_disabled_accounts_keys_stop_and_come_back(porten: Porten) -> None:
    """Disabling the account refuses its keys; enabling it restores them."""
    owner, token = await keyed_account(porten, "d@example.org")
    await porten.hub.accounts.disable(owner.user_id, actor="test")
    assert_401(await porten.post(CHAT_PATH, chat(), headers=bearer(token)), UNKNOWN)
    await porten.hub.accounts.enable(owner.user_id, actor="test")
    assert (await porten.post(CHAT_PATH, chat(), headers=bearer(token))).status == 200


async def test_revocation_reaches_every_hub_following_the_log(
    porten: Porten, settings: Settings
) -> None:
    """Revoked through one hub: the other refuses the key as soon as it has folded the event."""
    _, token = await keyed_account(porten, "x@example.org")
    async with listening(settings) as (other, url):
        await other.projection.wait_until(porten.hub.projection.position, 10.0)

        async def models_status() -> int:
            async with (
                aiohttp.ClientSession() as http,
                http.get(url + "/v1/models", headers=bearer(token)) as resp,
            ):
                return resp.status

        assert await models_status() == 200
        [key] = [k for k in porten.hub.keys.all() if k.name == "test"]
        await porten.hub.keys.revoke(key.key_id, actor="test")
        assert await other.projection.wait_until(porten.hub.projection.position, 10.0)
        assert await models_status() == 401
