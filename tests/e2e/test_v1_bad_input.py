"""Bad requests through the real hub: each gets the exact OpenAI-shaped error, nothing worse.

Every refusal is ``{"error": {message, type, param, code}}`` with the status
and code the API reference promises, so SDKs raise the right exception and a
client can tell its own mistake from a capacity problem.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
from multidict import CIMultiDict
from v1_harness import (
    CHAT,
    REASONING,
    VISION,
    Porten,
    Reply,
    data_url,
    plan_for,
    png,
    serving,
    user,
)

from porten.config import Settings
from porten.services.credentials import new_api_key

pytestmark = pytest.mark.postgres

CHAT_PATH = "/v1/chat/completions"
INVALID = "invalid_request_error"


def chat(**fields: Any) -> dict[str, Any]:
    """A valid chat body, with ``fields`` replaced."""
    return {"model": CHAT, "messages": user("hello"), **fields}


def assert_error(
    reply: Reply, status: int, code: str, param: str | None, error_type: str = INVALID
) -> str:
    """``reply`` is exactly this OpenAI error; its message."""
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    error = reply.error
    assert (error["type"], error["code"], error["param"]) == (error_type, code, param), error
    assert isinstance(error["message"], str)
    assert error["message"]
    return str(error["message"])


# --- the body ----------------------------------------------------------------------------


async def test_body_that_is_not_json(porten: Porten) -> None:
    """A body that does not parse is 400 invalid_json."""
    reply = await porten.post(CHAT_PATH, data=b'{"model": "x", "messages": [')
    message = assert_error(reply, 400, "invalid_json", None)
    assert "could not parse the JSON body" in message


async def test_empty_body(porten: Porten) -> None:
    """An empty body is 400 invalid_json, saying it is empty."""
    reply = await porten.post(CHAT_PATH, data=b"")
    assert assert_error(reply, 400, "invalid_json", None) == (
        "The request body is empty. Send a JSON object."
    )


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b'"x"', "a string"), (b"[]", "an array"), (b"42", "an integer"), (b"null", "null")],
)
async def test_json_that_is_not_an_object(porten: Porten, body: bytes, kind: str) -> None:
    """JSON that is not an object is 400 invalid_type naming what arrived."""
    reply = await porten.post(CHAT_PATH, data=body)
    assert assert_error(reply, 400, "invalid_type", None) == (
        f"The request body must be a JSON object, got {kind}."
    )


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"model": CHAT}, "missing_required_parameter", "messages"),
        ({"model": CHAT, "messages": None}, "missing_required_parameter", "messages"),
        ({"model": CHAT, "messages": []}, "invalid_value", "messages"),
        ({"messages": user("hi")}, "missing_required_parameter", "model"),
        (chat(messages=[{"role": 123, "content": "hi"}]), "invalid_type", "messages[0].role"),
        (chat(messages=[{"role": "robot", "content": "hi"}]), "invalid_value", "messages[0].role"),
        (chat(messages=[{"role": "user", "content": 5}]), "invalid_type", "messages[0].content"),
        (chat(messages=[{"role": "user"}]), "missing_required_parameter", "messages[0].content"),
        (chat(max_tokens=-1), "invalid_value", "max_tokens"),
        (chat(max_tokens=0), "invalid_value", "max_tokens"),
        (chat(temperature="hot"), "invalid_type", "temperature"),
        (chat(temperature=3), "invalid_value", "temperature"),
        (chat(stream="yes"), "invalid_type", "stream"),
        (chat(n=2), "unsupported_parameter", "n"),
        (chat(tool_choice="required"), "invalid_value", "tool_choice"),
    ],
    ids=[
        "messages-missing",
        "messages-null",
        "messages-empty",
        "model-missing",
        "role-number",
        "role-unknown",
        "content-number",
        "content-missing",
        "max_tokens-negative",
        "max_tokens-zero",
        "temperature-string",
        "temperature-too-high",
        "stream-string",
        "n-2",
        "tool_choice-without-tools",
    ],
)
async def test_invalid_parameter(
    porten: Porten, body: dict[str, Any], code: str, param: str
) -> None:
    """Each invalid parameter is a 400 with the code and the OpenAI-spelled param it names."""
    assert_error(await porten.post(CHAT_PATH, body), 400, code, param)


async def test_validation_messages_say_what_was_expected(porten: Porten) -> None:
    """The messages name the parameter, what was expected and what arrived."""
    temperature = await porten.post(CHAT_PATH, chat(temperature="hot"))
    assert temperature.error["message"] == (
        "Invalid type for 'temperature': expected a number, got a string."
    )
    max_tokens = await porten.post(CHAT_PATH, chat(max_tokens=-1))
    assert max_tokens.error["message"] == (
        "Invalid value for 'max_tokens': expected an integer >= 1, got -1."
    )
    n = await porten.post(CHAT_PATH, chat(n=2))
    assert n.error["message"].startswith("Only n=1 is supported, got n=2")
    missing = await porten.post(CHAT_PATH, {"model": CHAT})
    assert missing.error["message"] == "Missing required parameter: 'messages'."


async def test_unknown_model_is_404_model_not_found(porten: Porten) -> None:
    """A model id the catalog does not offer is 404 model_not_found on chat and embeddings."""
    reply = await porten.post(CHAT_PATH, chat(model="gpt-4o"))
    message = assert_error(reply, 404, "model_not_found", "model")
    assert "'gpt-4o'" in message
    embeddings = await porten.post("/v1/embeddings", {"model": "gpt-4o", "input": "x"})
    assert_error(embeddings, 404, "model_not_found", "model")


async def test_tools_to_a_model_without_tools_is_400_not_503(porten: Porten) -> None:
    """Tools sent to the reasoning model (no 'tools' capability) is a clear 400, not a 503."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    reply = await porten.post(CHAT_PATH, chat(model=REASONING, tools=[tool]))
    message = assert_error(reply, 400, "model_does_not_support_tools", "tools")
    assert message.startswith(f"The model '{REASONING}' does not support tools (function calling).")
    assert (await porten.sim_stats())["started"] == 0


async def test_embedding_model_refuses_chat(porten: Porten) -> None:
    """A chat request to the embedding model is a 400 that points at /v1/embeddings."""
    reply = await porten.post(CHAT_PATH, chat(model="nomic-embed-text"))
    message = assert_error(reply, 400, "model_does_not_support_chat", "model")
    assert "POST /v1/embeddings" in message


# --- size --------------------------------------------------------------------------------


async def test_body_over_the_size_limit_is_413(settings: Settings) -> None:
    """With max_body_mb=1 a body just over 1 MiB is 413 request_too_large, and nothing runs."""
    async with serving(attrs.evolve(settings, max_body_mb=1)) as porten:
        body = chat(messages=user("x" * (1024 * 1024)))
        reply = await porten.post(CHAT_PATH, body)
        assert assert_error(reply, 413, "request_too_large", None) == (
            "The request body is larger than the limit of 1048576 bytes."
        )
        assert (await porten.sim_stats())["started"] == 0
        small = await porten.post(CHAT_PATH, chat())
        assert small.status == 200


async def test_large_inline_image_under_the_default_limit_is_accepted(porten: Porten) -> None:
    """A ~400 KB inline image (under the default 32 MB limit) reaches the vision model."""
    image = data_url(png(330, 330, seed=3))
    assert len(image) > 400_000
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this noise."},
                {"type": "image_url", "image_url": {"url": image}},
            ],
        }
    ]
    plan = plan_for(VISION, {"messages": messages})
    reply = await porten.post(CHAT_PATH, {"model": VISION, "messages": messages})
    assert reply.status == 200, reply.body
    assert reply.json()["choices"][0]["message"]["content"] == plan.content


# --- remote images -----------------------------------------------------------------------


@attrs.define
class Listener:
    """A loopback TCP server that only counts the connections it is offered."""

    url: str
    connections: list[int]


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    """A loopback port that records any attempt to reach it (HTTP, TLS or otherwise)."""
    connections: list[int] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Listener(f"127.0.0.1:{port}", connections)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("scheme", ["http://", "https://", "file://", "HTTP://", "ftp://"])
async def test_remote_image_urls_are_refused_and_never_fetched(
    porten: Porten, listener: Listener, scheme: str
) -> None:
    """A non-inline image URL is 400 invalid_image_url and the hub connects nowhere."""
    url = "file:///etc/passwd" if scheme == "file://" else f"{scheme}{listener.url}/cat.png"
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]
    for stream in (False, True):
        reply = await porten.post(
            CHAT_PATH, {"model": VISION, "messages": messages, "stream": stream}
        )
        param = "messages[0].content[1].image_url.url"
        message = assert_error(reply, 400, "invalid_image_url", param)
        assert "never fetches remote images" in message
    assert listener.connections == []
    assert (await porten.sim_stats())["started"] == 0


# --- authorization -----------------------------------------------------------------------


def _headers(*values: str) -> CIMultiDict[str]:
    return CIMultiDict(("Authorization", v) for v in values)


async def test_authorization_header_variants(porten: Porten) -> None:
    """Malformed, foreign or unknown keys are 401 invalid_api_key and never echoed back."""
    key = porten.api_key
    unknown = new_api_key()
    openai_key = "sk-proj-" + "A1b2C3d4" * 6
    refused = {
        "missing": CIMultiDict[str](),
        "empty": _headers(""),
        "basic": _headers("Basic dXNlcjpwYXNzd29yZA=="),
        "lowercase-bearer": _headers(f"bearer {key}"),
        "whitespace-token": _headers("Bearer    "),
        "two-headers": _headers(f"Bearer {key}", f"Bearer {key}"),
        "openai-key": _headers(f"Bearer {openai_key}"),
        "unknown-porten-key": _headers(f"Bearer {unknown}"),
        "key-without-scheme": _headers(key),
        "truncated-key": _headers(f"Bearer {key[:-1]}"),
    }
    for name, headers in refused.items():
        reply = await porten.post(CHAT_PATH, chat(), headers=headers)
        assert_error(reply, 401, "invalid_api_key", None)
        assert reply.headers["WWW-Authenticate"] == 'Bearer realm="porten"', name
        for secret in (key, unknown, openai_key, key[:-1], key[len("sk-porten-") :]):
            assert secret.encode() not in reply.body, name
            assert all(secret not in v for v in reply.headers.values()), name
    listing = await porten.get("/v1/models", headers=_headers(f"Bearer {unknown}"))
    assert_error(listing, 401, "invalid_api_key", None)
    assert (await porten.sim_stats())["started"] == 0


async def test_auth_is_checked_before_the_body(porten: Porten) -> None:
    """Without a key even an unparseable body is 401: nothing is revealed before auth."""
    reply = await porten.post(CHAT_PATH, data=b"{not json", headers={})
    assert_error(reply, 401, "invalid_api_key", None)


async def test_the_sdk_maps_errors_to_its_exceptions(porten: Porten) -> None:
    """The openai SDK raises its typed exceptions with our code and param."""
    import openai

    client = porten.client()
    with pytest.raises(openai.NotFoundError) as not_found:
        await client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert not_found.value.code == "model_not_found"
    assert not_found.value.param == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model=CHAT, messages=user("hi"), n=2)
    assert (bad.value.code, bad.value.param) == ("unsupported_parameter", "n")
    bad_key = porten.client(api_key=new_api_key())
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        await bad_key.models.list()
    assert unauthorized.value.code == "invalid_api_key"
    assert isinstance(unauthorized.value.body, dict)
    assert json.dumps(unauthorized.value.body).find("sk-porten-") == -1
