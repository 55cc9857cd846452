"""The one place where a failure becomes an HTTP status and an OpenAI-shaped body.

Every error leaves the hub as ``{"error": {"message", "type", "param", "code"}}``
(``param`` and ``code`` are ``null`` when they do not apply), because OpenAI SDKs
parse exactly that shape into their exception types. Handlers raise
:class:`ApiError` built by one of the factories below; :func:`error_middleware`
renders it, and also renders aiohttp's own HTTP exceptions and any unexpected
exception in the same shape.

====  =====================  ============================  ==========================
HTTP  type                   code                          factory
====  =====================  ============================  ==========================
400   invalid_request_error  invalid_json                  :func:`invalid_json`
400   invalid_request_error  invalid_type                  :func:`invalid_type`
400   invalid_request_error  missing_required_parameter    :func:`missing_parameter`
400   invalid_request_error  invalid_value                 :func:`invalid_value`
400   invalid_request_error  unsupported_parameter         :func:`unsupported_parameter`
400   invalid_request_error  invalid_image_url             :func:`invalid_image_url`
400   invalid_request_error  model_does_not_support_<cap>  :func:`model_lacks_capability`
401   invalid_request_error  invalid_api_key               :func:`invalid_api_key`
403   invalid_request_error  model_not_allowed             :func:`model_not_allowed`
403   invalid_request_error  permission_denied             :func:`permission_denied`
404   invalid_request_error  model_not_found               :func:`model_not_found`
404   invalid_request_error  not_found                     :func:`route_not_found`
404   invalid_request_error  not_found                     :func:`not_found`
405   invalid_request_error  method_not_allowed            :func:`method_not_allowed`
413   invalid_request_error  request_too_large             :func:`request_too_large`
429   rate_limit_error       rate_limit_exceeded           :func:`rate_limit_exceeded`
500   server_error           internal_error                :func:`internal_error`
502   server_error           node_error                    :func:`node_error`
503   service_unavailable    no_available_node             :func:`no_available_node`
503   service_unavailable    model_warming                 :func:`model_warming`
503   service_unavailable    budget_unavailable            :func:`budget_unavailable`
504   server_error           gateway_timeout               :func:`gateway_timeout`
====  =====================  ============================  ==========================

401 uses ``invalid_request_error`` because that is what OpenAI itself returns for a
bad key, and clients match on it. 429 and 503 always carry an integer
``Retry-After`` of at least one second.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Final

import msgspec
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

_LOG: Final[structlog.typing.FilteringBoundLogger] = structlog.get_logger("porten.http")

INVALID_REQUEST: Final = "invalid_request_error"
RATE_LIMIT: Final = "rate_limit_error"
SERVER_ERROR: Final = "server_error"
SERVICE_UNAVAILABLE: Final = "service_unavailable"

#: Headers an error response must never copy from an aiohttp exception: the
#: body is replaced, so its framing headers are recomputed.
_FRAMING_HEADERS: Final = frozenset({"content-type", "content-length", "transfer-encoding"})


class ApiError(Exception):
    """A failure the client should see, carrying everything its response needs.

    ``retry_after`` is whole seconds (at least one) and becomes ``Retry-After``;
    ``headers`` are extra response headers such as ``Allow``.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = INVALID_REQUEST,
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"ApiError status must be 4xx or 5xx, not {status}")
        if retry_after is not None and retry_after < 1:
            raise ValueError(f"Retry-After must be at least 1 second, not {retry_after}")
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = error_type
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.headers: Mapping[str, str] = dict(headers or {})

    def __repr__(self) -> str:
        return f"ApiError({self.status}, code={self.code!r}, param={self.param!r})"


class _ErrorDetail(msgspec.Struct, frozen=True):
    message: str
    type: str
    param: str | None
    code: str | None


class _ErrorEnvelope(msgspec.Struct, frozen=True):
    error: _ErrorDetail


_ENCODER: Final = msgspec.json.Encoder()


def error_body(err: ApiError) -> bytes:
    """The JSON body OpenAI clients expect: ``{"error": {message, type, param, code}}``."""
    return _ENCODER.encode(_ErrorEnvelope(_ErrorDetail(err.message, err.type, err.param, err.code)))


def sse_error_event(err: ApiError) -> bytes:
    """An SSE event that ends a stream which failed after its headers went out.

    Once a stream has started, the status can no longer change; OpenAI clients
    instead raise on a ``data:`` event whose payload is an error object.
    """
    return b"data: " + error_body(err) + b"\n\n"


def error_response(err: ApiError) -> web.Response:
    """The complete HTTP response for ``err``, ``Retry-After`` included when set."""
    headers = dict(err.headers)
    if err.retry_after is not None:
        headers["Retry-After"] = str(err.retry_after)
    return web.Response(
        status=err.status, body=error_body(err), content_type="application/json", headers=headers
    )


def retry_after_seconds(seconds: float) -> int:
    """Whole seconds for ``Retry-After``: rounded up, never below one.

    ``Retry-After: 0`` makes well-behaved clients retry in a tight loop.
    """
    if not math.isfinite(seconds):
        return 1
    return max(1, math.ceil(seconds))


# -- 400 ---------------------------------------------------------------------------------


def invalid_request(message: str, *, code: str | None = None, param: str | None = None) -> ApiError:
    """A 400 for a request the hub understood but cannot accept."""
    return ApiError(400, message, code=code, param=param)


def invalid_json(message: str) -> ApiError:
    """A 400 for a body that is not JSON at all."""
    return invalid_request(message, code="invalid_json")


def invalid_type(param: str | None, message: str) -> ApiError:
    """A 400 for a value of the wrong JSON type (a string where a number belongs)."""
    return invalid_request(message, code="invalid_type", param=param)


def missing_parameter(param: str) -> ApiError:
    """A 400 for a required parameter that is absent (or ``null``)."""
    return invalid_request(
        f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
    )


def invalid_value(param: str | None, message: str) -> ApiError:
    """A 400 for a value of the right type outside what is accepted."""
    return invalid_request(message, code="invalid_value", param=param)


def unsupported_parameter(param: str, message: str) -> ApiError:
    """A 400 for a parameter that would change the result but cannot be honoured."""
    return invalid_request(message, code="unsupported_parameter", param=param)


def invalid_image_url(param: str) -> ApiError:
    """A 400 for an image that is not inline; remote URLs are never fetched (SSRF)."""
    return invalid_request(
        "Image URLs must be inline base64 data URLs such as 'data:image/png;base64,...'. "
        "Porten never fetches remote images (http, https, file or any other scheme): "
        "download the image yourself and inline it as a data: URL.",
        code="invalid_image_url",
        param=param,
    )


def model_lacks_capability(capability: str, message: str, *, param: str) -> ApiError:
    """A 400 for a request the chosen model cannot serve: not a capacity problem."""
    return invalid_request(message, code=f"model_does_not_support_{capability}", param=param)


# -- 4xx outside validation --------------------------------------------------------------


def invalid_api_key(message: str | None = None) -> ApiError:
    """A 401; the key itself is never echoed, not even in part."""
    return ApiError(
        401,
        message
        or "Invalid API key. Send 'Authorization: Bearer sk-porten-...' with an active key.",
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="porten"'},
    )


def model_not_allowed(model: str, reason: str | None = None) -> ApiError:
    """A 403 for a model the key's policy (regions, trust, model list) excludes."""
    why = f" {reason}" if reason else ""
    return ApiError(
        403,
        f"This API key may not use the model '{model}'.{why}",
        code="model_not_allowed",
        param="model",
    )


def permission_denied(message: str) -> ApiError:
    """A 403 for a valid key that may not do this (a non-operator on the admin API)."""
    return ApiError(403, message, code="permission_denied")


def not_found(what: str) -> ApiError:
    """A 404 for a named thing (a key, a node, an account) that does not exist."""
    return ApiError(404, what, code="not_found")


def model_not_found(model: str) -> ApiError:
    """A 404 for a model id the catalog does not offer."""
    return ApiError(
        404,
        f"The model '{model}' does not exist. List the offered models with GET /v1/models "
        "and use an exact id.",
        code="model_not_found",
        param="model",
    )


def route_not_found(method: str, path: str) -> ApiError:
    """A 404 for a URL no route matches (only the path is echoed, never the query)."""
    shown = path if len(path) <= 200 else path[:200] + "..."
    return ApiError(404, f"Invalid URL ({method} {shown}).", code="not_found")


def method_not_allowed(method: str, allowed: Iterable[str]) -> ApiError:
    """A 405 that lists the allowed methods in ``Allow``, as HTTP requires."""
    allow = ", ".join(sorted(allowed))
    return ApiError(
        405,
        f"Method {method} is not allowed here; use {allow or 'another URL'}.",
        code="method_not_allowed",
        headers={"Allow": allow},
    )


def request_too_large(limit_bytes: int) -> ApiError:
    """A 413 for a body over the configured limit."""
    return ApiError(
        413,
        f"The request body is larger than the limit of {limit_bytes} bytes.",
        code="request_too_large",
    )


def rate_limit_exceeded(retry_after_s: float, message: str | None = None) -> ApiError:
    """A 429 telling the client when its quota allows the next request."""
    return ApiError(
        429,
        message or "Rate limit exceeded for this API key. Retry after the Retry-After delay.",
        error_type=RATE_LIMIT,
        code="rate_limit_exceeded",
        retry_after=retry_after_seconds(retry_after_s),
    )


# -- 5xx ---------------------------------------------------------------------------------


def internal_error(request_id: str) -> ApiError:
    """A 500 whose message names only the request id: internals stay in the logs."""
    return ApiError(
        500,
        f"The server had an error processing your request (request id {request_id}). "
        "Retry, and quote the request id if it persists.",
        error_type=SERVER_ERROR,
        code="internal_error",
        headers={"X-Request-Id": request_id},
    )


def node_error(message: str | None = None) -> ApiError:
    """A 502 after every candidate node failed."""
    return ApiError(
        502,
        message or "Every node that could serve this model failed. Retry shortly.",
        error_type=SERVER_ERROR,
        code="node_error",
    )


def no_available_node(model: str, retry_after_s: float, reason: str | None = None) -> ApiError:
    """A 503 for an offered model with no free, healthy node right now (fail-closed)."""
    why = f" ({reason})" if reason else ""
    return ApiError(
        503,
        f"No node can serve the model '{model}' right now{why}. "
        "Retry after the Retry-After delay.",
        error_type=SERVICE_UNAVAILABLE,
        code="no_available_node",
        retry_after=retry_after_seconds(retry_after_s),
    )


def model_warming(model: str, retry_after_s: float) -> ApiError:
    """A 503 for a model still loading when the request's warm-up budget ran out."""
    return ApiError(
        503,
        f"The model '{model}' is still loading. Retry after the Retry-After delay; "
        "it will be ready shortly.",
        error_type=SERVICE_UNAVAILABLE,
        code="model_warming",
        retry_after=retry_after_seconds(retry_after_s),
    )


def budget_unavailable(retry_after_s: float) -> ApiError:
    """A 503 for a budgeted key while the shared limiter (Redis) cannot be reached.

    Fail-closed: a budget that cannot be checked is not spent.
    """
    return ApiError(
        503,
        "This API key has a spending budget, and the hub cannot check it right now. "
        "Retry after the Retry-After delay.",
        error_type=SERVICE_UNAVAILABLE,
        code="budget_unavailable",
        retry_after=retry_after_seconds(retry_after_s),
    )


def gateway_timeout(message: str | None = None) -> ApiError:
    """A 504 after the request's total time budget ran out."""
    return ApiError(
        504,
        message or "The request took longer than its total time limit.",
        error_type=SERVER_ERROR,
        code="gateway_timeout",
    )


# -- middleware --------------------------------------------------------------------------


def new_request_id(request: web.Request) -> str:
    """A fresh correlation id, for apps that assign none before errors are rendered."""
    return f"req_{uuid.uuid4().hex}"


def from_http_exception(exc: web.HTTPException, request: web.Request) -> ApiError:
    """Re-express one of aiohttp's own 4xx/5xx exceptions in OpenAI's shape."""
    from_router = request.match_info.http_exception is exc
    if from_router and isinstance(exc, web.HTTPMethodNotAllowed):
        return method_not_allowed(exc.method, exc.allowed_methods)
    if from_router and exc.status == 404:
        return route_not_found(request.method, request.path)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return request_too_large(request.client_max_size)
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in _FRAMING_HEADERS}
    return ApiError(
        exc.status,
        exc.text or exc.reason,
        error_type=INVALID_REQUEST if exc.status < 500 else SERVER_ERROR,
        code=exc.reason.lower().replace(" ", "_").replace("-", "_"),
        headers=headers,
    )


def error_middleware(*, request_id: Callable[[web.Request], str] = new_request_id) -> Middleware:
    """Middleware that answers every failure in OpenAI's error shape.

    ``request_id`` names the request in a 500's message and log line; pass the
    app's own correlation-id lookup so the two match. Neither bodies nor
    headers are logged: they carry prompts and API keys.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as err:
            if err.status >= 500:
                _LOG.warning(
                    "http.server_error",
                    request_id=request_id(request),
                    status=err.status,
                    code=err.code,
                    method=request.method,
                    path=request.path,
                )
            return error_response(err)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(from_http_exception(exc, request))
        except Exception:
            rid = request_id(request)
            _LOG.exception(
                "http.unhandled_error", request_id=rid, method=request.method, path=request.path
            )
            return error_response(internal_error(rid))

    return middleware
