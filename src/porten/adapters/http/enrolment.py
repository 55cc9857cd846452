"""``/agent/v1/device/*`` and ``/agent/v1/enrol``: how an agent becomes a node of an account.

RFC 8628's two endpoints, spoken the OAuth way (form-encoded requests, JSON
answers, errors as ``{"error", "error_description"}`` with the RFC's codes),
because that is what its polling rules are written against:

* ``POST /agent/v1/device/code`` (``name`` = the machine's name) → ``device_code``,
  ``user_code``, ``verification_uri`` (the portal's ``/device``),
  ``verification_uri_complete``, ``expires_in``, ``interval``.
* ``POST /agent/v1/device/token`` (``grant_type=urn:ietf:params:oauth:grant-type:device_code``,
  ``device_code``) → ``authorization_pending`` / ``slow_down`` / ``access_denied`` /
  ``expired_token`` / ``invalid_grant`` until approved, then ``{node_id, credential}``, once.
* ``POST /agent/v1/enrol`` (``token``, ``name``) → ``{node_id, credential}`` for a
  single-use enrolment token.

Every answer is ``Cache-Control: no-store``: a credential must not sit in a cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec
from aiohttp import web

from porten.adapters.http.hubkeys import HUB, SETTINGS
from porten.services._enrol import DeviceFlowError, Enrolled
from porten.services.enrolment import display_user_code

DEVICE_GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:device_code"
MAX_BODY: Final = 8 * 1024
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class DeviceAuthorization(msgspec.Struct, frozen=True):
    """RFC 8628 §3.2's response."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int


class NodeCredential(msgspec.Struct, frozen=True):
    """What an agent stores to connect as its node."""

    node_id: str
    name: str
    owner_id: str
    credential: str
    token_type: str = "porten_node_credential"  # noqa: S105 (a type name, not a secret)


def _json(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(obj), status=status,
                        content_type="application/json", headers=_NO_STORE)


def oauth_error(error: str, description: str, *, status: int = 400,
                interval: int | None = None) -> web.Response:
    """An RFC 6749 §5.2 error body (plus the new ``interval`` after ``slow_down``)."""
    body: dict[str, object] = {"error": error, "error_description": description}
    if interval is not None:
        body["interval"] = interval
    return _json(body, status)


def _flow_error(exc: DeviceFlowError) -> web.Response:
    return oauth_error(exc.error, exc.description, status=exc.status, interval=exc.interval)


def portal_base(request: web.Request) -> str:
    """The URL people reach the portal at (PORTEN_PUBLIC_URL, else this request's host)."""
    return request.app[SETTINGS].public_url or f"{request.scheme}://{request.host}"


async def _form(request: web.Request) -> Mapping[str, str] | web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY:
        return oauth_error("invalid_request", "the request body is too large", status=413)
    if request.content_type != "application/x-www-form-urlencoded":
        return oauth_error("invalid_request",
                           "send the parameters as application/x-www-form-urlencoded")
    raw = await request.post()
    return {k: v for k, v in raw.items() if isinstance(v, str)}


def _credential(enrolled: Enrolled) -> web.Response:
    return _json(NodeCredential(node_id=enrolled.node_id, name=enrolled.name,
                                owner_id=enrolled.owner_id, credential=enrolled.credential))


async def device_code(request: web.Request) -> web.StreamResponse:
    """Start a browser enrolment: the codes the agent shows and polls with."""
    form = await _form(request)
    if isinstance(form, web.Response):
        return form
    try:
        started = await request.app[HUB].device_flow.start(
            client_name=form.get("name", ""), client_address=request.remote or "")
    except DeviceFlowError as exc:
        return _flow_error(exc)
    shown = display_user_code(started.user_code)
    uri = portal_base(request) + "/device"
    return _json(DeviceAuthorization(
        device_code=started.device_code, user_code=shown, verification_uri=uri,
        verification_uri_complete=f"{uri}?code={shown}", expires_in=started.expires_in,
        interval=started.interval,
    ))


async def device_token(request: web.Request) -> web.StreamResponse:
    """Poll for the credential of an approved device code."""
    form = await _form(request)
    if isinstance(form, web.Response):
        return form
    if form.get("grant_type") != DEVICE_GRANT_TYPE:
        return oauth_error("unsupported_grant_type", f"grant_type must be {DEVICE_GRANT_TYPE}")
    code = form.get("device_code", "")
    if not code or len(code) > 256:
        return oauth_error("invalid_request", "device_code is required")
    try:
        enrolled = await request.app[HUB].device_flow.poll(code)
    except DeviceFlowError as exc:
        return _flow_error(exc)
    return _credential(enrolled)


async def enrol_with_token(request: web.Request) -> web.StreamResponse:
    """Enrol with a single-use enrolment token."""
    form = await _form(request)
    if isinstance(form, web.Response):
        return form
    token = form.get("token", "").strip()
    if not token or len(token) > 256:
        return oauth_error("invalid_request", "token is required")
    try:
        enrolled = await request.app[HUB].enrolment_tokens.redeem(
            token, client_name=form.get("name", ""), client_address=request.remote or "")
    except DeviceFlowError as exc:
        return _flow_error(exc)
    return _credential(enrolled)


def add_routes(app: web.Application) -> None:
    """Mount the enrolment endpoints."""
    app.router.add_post("/agent/v1/device/code", device_code)
    app.router.add_post("/agent/v1/device/token", device_token)
    app.router.add_post("/agent/v1/enrol", enrol_with_token)
