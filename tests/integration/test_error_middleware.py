"""The error middleware over real sockets: every failure leaves in OpenAI's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Handler
from structlog.testing import capture_logs

from porten.adapters.http import errors
from porten.adapters.http.errors import ApiError, error_middleware
from porten.adapters.http.openai_validation import parse_chat_request

Client = TestClient[web.Request, web.Application]

SECRET = "sk-porten-leaked-secret"
BODY_LIMIT = 1024


def raising(err: Exception) -> Handler:
    """A handler that raises ``err``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        raise err

    return handler


async def chat(request: web.Request) -> web.Response:
    """Reads and validates the body like the real chat handler does."""
    parse_chat_request(await request.read())
    return web.json_response({"ok": True})


def make_app() -> web.Application:
    """A tiny app with the middleware, a body limit, and one route per failure."""
    app = web.Application(
        middlewares=[error_middleware(request_id=lambda request: "req_test")],
        client_max_size=BODY_LIMIT,
    )
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/model-not-found", raising(errors.model_not_found("nope")))
    app.router.add_get("/unauthorized", raising(errors.invalid_api_key()))
    app.router.add_get("/rate-limited", raising(errors.rate_limit_exceeded(2.5)))
    app.router.add_get("/no-node", raising(errors.no_available_node("m", 4)))
    app.router.add_get("/warming", raising(errors.model_warming("m", 0.1)))
    app.router.add_get("/boom", raising(RuntimeError(f"db password {SECRET}")))
    app.router.add_get("/gone", raising(web.HTTPGone(text="This thing is gone.")))
    app.router.add_get("/redirect", raising(web.HTTPFound("/model-not-found")))
    return app


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """A client talking to the app on 127.0.0.1 through a real socket."""
    async with TestClient(TestServer(make_app(), host="127.0.0.1")) as test_client:
        yield test_client


async def error_of(response: ClientResponse, status: int) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-shaped JSON error response with ``status``."""
    assert response.status == status
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


async def test_api_error_from_a_handler_becomes_its_response(client: Client) -> None:
    """An ApiError raised in a handler is rendered with its status and fields."""
    error = await error_of(await client.get("/model-not-found"), 404)
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model"
    assert "'nope' does not exist" in error["message"]


async def test_validation_error_reaches_the_client_with_its_param(
    client: Client,
) -> None:
    """A refused body is a 400 naming the offending field."""
    response = await client.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": 123, "content": "x"}]}
    )
    error = await error_of(response, 400)
    assert (error["code"], error["param"]) == ("invalid_type", "messages[0].role")


async def test_unknown_route_is_an_openai_404(client: Client) -> None:
    """A URL no route matches is a 404 ``not_found`` naming path but not query."""
    error = await error_of(await client.get("/v1/nope?key=" + SECRET), 404)
    assert error == {
        "message": "Invalid URL (GET /v1/nope).",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }


async def test_wrong_method_is_an_openai_405_with_allow(client: Client) -> None:
    """The wrong method is a 405 ``method_not_allowed`` listing the allowed ones."""
    response = await client.get("/v1/chat/completions")
    error = await error_of(response, 405)
    assert error["code"] == "method_not_allowed"
    assert response.headers["Allow"] == "POST"


async def test_body_over_the_limit_is_an_openai_413(client: Client) -> None:
    """A body over client_max_size is a 413 ``request_too_large`` naming the limit."""
    response = await client.post("/v1/chat/completions", data=b"x" * (4 * BODY_LIMIT))
    error = await error_of(response, 413)
    assert error["code"] == "request_too_large"
    assert str(BODY_LIMIT) in error["message"]


async def test_unexpected_exception_is_a_500_that_leaks_nothing(
    client: Client,
) -> None:
    """A crash is a 500 naming only the request id; the log has the traceback, not secrets."""
    with capture_logs() as logs:
        response = await client.get("/boom", headers={"Authorization": f"Bearer {SECRET}"})
        error = await error_of(response, 500)
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert "req_test" in error["message"]
    assert response.headers["X-Request-Id"] == "req_test"
    assert SECRET not in await response.text()
    assert "RuntimeError" not in await response.text()
    [entry] = [log for log in logs if log["event"] == "http.unhandled_error"]
    assert entry["request_id"] == "req_test"
    assert entry["path"] == "/boom"
    assert entry["exc_info"] is True
    assert SECRET not in repr({k: v for k, v in entry.items() if k != "exc_info"})


@pytest.mark.parametrize(
    ("path", "status", "code", "retry_after"),
    [
        ("/rate-limited", 429, "rate_limit_exceeded", "3"),
        ("/no-node", 503, "no_available_node", "4"),
        ("/warming", 503, "model_warming", "1"),
    ],
)
async def test_429_and_503_carry_retry_after(
    client: Client, path: str, status: int, code: str, retry_after: str
) -> None:
    """Throttling and unavailability tell the client when to retry, in whole seconds."""
    response = await client.get(path)
    error = await error_of(response, status)
    assert error["code"] == code
    assert response.headers["Retry-After"] == retry_after


async def test_401_carries_a_bearer_challenge(client: Client) -> None:
    """A bad key is a 401 ``invalid_api_key`` with ``WWW-Authenticate``."""
    response = await client.get("/unauthorized")
    error = await error_of(response, 401)
    assert error["code"] == "invalid_api_key"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_other_aiohttp_errors_keep_their_status_and_text(
    client: Client,
) -> None:
    """An aiohttp HTTP error raised by a handler keeps its status and text, reshaped."""
    error = await error_of(await client.get("/gone"), 410)
    assert error == {
        "message": "This thing is gone.",
        "type": "invalid_request_error",
        "param": None,
        "code": "gone",
    }


async def test_redirects_pass_through(client: Client) -> None:
    """Non-error HTTP exceptions (a 302) are not turned into errors."""
    response = await client.get("/redirect", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/model-not-found"


async def test_openai_sdk_reads_the_error(client: Client) -> None:
    """The official OpenAI SDK parses our body into its typed exception with the code."""
    openai = pytest.importorskip("openai")
    sdk = openai.AsyncOpenAI(
        api_key="sk-porten-test", base_url=str(client.make_url("/v1")), max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model="m", messages=[], n=1)
    assert info.value.code == "invalid_value"
    assert info.value.param == "messages"
    await sdk.close()


def test_api_error_rejects_non_error_statuses() -> None:
    """ApiError is only for 4xx and 5xx."""
    with pytest.raises(ValueError, match="4xx or 5xx"):
        ApiError(200, "fine")
