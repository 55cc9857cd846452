"""``/admin/v1``: the operator's API — users, keys and their policies, nodes, the catalog, usage.

Authenticated like ``/v1`` (``Authorization: Bearer sk-porten-…``), and the
key's account must be an active operator: any other valid key gets 403
``permission_denied``. Handlers decode → call the service → encode; every
change goes through :mod:`porten.services.accounts`, :mod:`porten.services.keys`
or :mod:`porten.services.admin` with ``actor="user:<operator id>"`` and an
``admin_action_taken`` event (the audit trail). Secrets appear in a response
exactly once: a new key's token, a generated password.
"""

from __future__ import annotations

import secrets
from typing import Any

import msgspec
from aiohttp import web

from porten.adapters.http import errors
from porten.adapters.http.admin_types import (
    ModelChange,
    NewKey,
    NewUser,
    NodeChange,
    PolicyBody,
    Revocation,
    UserChange,
    Withdrawal,
    account_view,
    decode_body,
    key_view,
    model_view,
    node_view,
)
from porten.adapters.http.hubkeys import HUB
from porten.adapters.http.usage import report_for
from porten.adapters.http.v1 import authenticated_key
from porten.bootstrap import Hub
from porten.services.accounts import AccountError, UnknownUser
from porten.services.admin import AdminProblem, NotFound
from porten.services.keys import KeyProblem, UnknownKey

_ENCODER = msgspec.json.Encoder()


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_ENCODER.encode(obj), status=status,
                        content_type="application/json")


def _operator(request: web.Request) -> tuple[Hub, str]:
    """The hub and ``user:<id>`` of the operator calling, or 401/403."""
    key = authenticated_key(request)
    hub = request.app[HUB]
    if not hub.accounts.is_operator(key.owner_id):
        raise errors.permission_denied(
            "This API key's account is not an operator; the admin API is for operators.")
    return hub, f"user:{key.owner_id}"


def _problem(exc: Exception) -> errors.ApiError:
    if isinstance(exc, UnknownKey | UnknownUser | NotFound):
        return errors.not_found(str(exc))
    return errors.invalid_value(None, str(exc))


# --- users -----------------------------------------------------------------------------------


async def list_users(request: web.Request) -> web.Response:
    """``GET /admin/v1/users``."""
    hub, _ = _operator(request)
    return _json({"data": [account_view(a) for a in hub.accounts.all()]})


async def create_user(request: web.Request) -> web.Response:
    """``POST /admin/v1/users``: the account, and its password once if it was generated."""
    hub, actor = _operator(request)
    body = decode_body(await request.read(), NewUser)
    password = body.password if body.password is not None else secrets.token_urlsafe(18)
    try:
        account = await hub.accounts.create_user(
            body.email, password, name=body.name, operator=body.role == "operator",
            actor=actor, audit=True,
        )
    except AccountError as exc:
        raise _problem(exc) from None
    out = account_view(account)
    if body.password is None:
        out["password"] = password
    return _json(out, status=201)


async def change_user(request: web.Request) -> web.Response:
    """``PATCH /admin/v1/users/{id}``: role, disabled, node defaults."""
    hub, actor = _operator(request)
    user_id = request.match_info["id"]
    body = decode_body(await request.read(), UserChange)
    accounts = hub.accounts
    try:
        account = accounts.get(user_id)
        if account is None:
            raise UnknownUser(f"no account with id {user_id!r}")
        if body.role is not None:
            account = await accounts.set_role(user_id, body.role, actor=actor, audit=True)
        if body.disabled is True:
            account = await accounts.disable(user_id, reason=body.disabled_reason, actor=actor,
                                             audit=True)
        elif body.disabled is False:
            account = await accounts.enable(user_id, actor=actor, audit=True)
        if body.node_region is not None or body.node_trust_class is not None:
            account = await accounts.set_node_defaults(
                user_id, region=account.node_region if body.node_region is None
                else body.node_region,
                trust_class=body.node_trust_class or account.node_trust_class,
                actor=actor, audit=True,
            )
    except AccountError as exc:
        raise _problem(exc) from None
    return _json(account_view(account))


# --- keys ----------------------------------------------------------------------------------------


async def list_keys(request: web.Request) -> web.Response:
    """``GET /admin/v1/keys[?owner_id=]``."""
    hub, _ = _operator(request)
    owner = request.query.get("owner_id")
    keys = hub.keys.owned_by(owner) if owner is not None else hub.keys.all()
    return _json({"data": [key_view(k) for k in keys]})


async def get_key(request: web.Request) -> web.Response:
    """``GET /admin/v1/keys/{id}``."""
    hub, _ = _operator(request)
    key = hub.keys.get(request.match_info["id"])
    if key is None:
        raise errors.not_found(f"no key with id {request.match_info['id']!r}")
    return _json(key_view(key))


async def create_key(request: web.Request) -> web.Response:
    """``POST /admin/v1/keys``: the key, and its token (``api_key``) this once."""
    hub, actor = _operator(request)
    body = decode_body(await request.read(), NewKey)
    try:
        minted = await hub.keys.create(owner_id=body.owner_id, name=body.name,
                                       policy=body.policy.policy(), actor=actor, audit=True)
    except KeyProblem as exc:
        raise _problem(exc) from None
    return _json({**key_view(minted.key), "api_key": minted.token}, status=201)


async def set_policy(request: web.Request) -> web.Response:
    """``PUT /admin/v1/keys/{id}/policy``: the whole policy, replaced."""
    hub, actor = _operator(request)
    body = decode_body(await request.read(), PolicyBody)
    try:
        key = await hub.keys.set_policy(request.match_info["id"], body.policy(), actor=actor,
                                        audit=True)
    except KeyProblem as exc:
        raise _problem(exc) from None
    return _json(key_view(key))


async def revoke_key(request: web.Request) -> web.Response:
    """``POST /admin/v1/keys/{id}/revoke``."""
    hub, actor = _operator(request)
    body = decode_body(await request.read(), Revocation)
    try:
        key = await hub.keys.revoke(request.match_info["id"], reason=body.reason, actor=actor,
                                    audit=True)
    except KeyProblem as exc:
        raise _problem(exc) from None
    return _json(key_view(key))


# --- nodes and catalog -------------------------------------------------------------------------


async def list_nodes(request: web.Request) -> web.Response:
    """``GET /admin/v1/nodes``."""
    hub, _ = _operator(request)
    return _json({"data": [node_view(n) for n in hub.admin.nodes()]})


async def change_node(request: web.Request) -> web.Response:
    """``PATCH /admin/v1/nodes/{id}``: region and/or trust class (operator-authoritative)."""
    hub, actor = _operator(request)
    body = decode_body(await request.read(), NodeChange)
    try:
        node = await hub.admin.set_node(request.match_info["id"], region=body.region,
                                        trust_class=body.trust_class, actor=actor)
    except AdminProblem as exc:
        raise _problem(exc) from None
    return _json(node_view(node))


async def list_catalog(request: web.Request) -> web.Response:
    """``GET /admin/v1/catalog``: every known model, offered or not."""
    hub, _ = _operator(request)
    return _json({"data": [model_view(c) for c in hub.admin.catalog()]})


async def enable_model(request: web.Request) -> web.Response:
    """``POST /admin/v1/catalog/{id}/enable``."""
    hub, actor = _operator(request)
    try:
        c = await hub.admin.enable_model(request.match_info["id"], actor=actor)
    except AdminProblem as exc:
        raise _problem(exc) from None
    return _json(model_view(c))


async def disable_model(request: web.Request) -> web.Response:
    """``POST /admin/v1/catalog/{id}/disable``."""
    hub, actor = _operator(request)
    body = decode_body(await request.read(), Withdrawal)
    try:
        c = await hub.admin.disable_model(request.match_info["id"], reason=body.reason,
                                          actor=actor)
    except AdminProblem as exc:
        raise _problem(exc) from None
    return _json(model_view(c))


async def change_model(request: web.Request) -> web.Response:
    """``PATCH /admin/v1/catalog/{id}``: prices per million tokens."""
    hub, actor = _operator(request)
    body = decode_body(await request.read(), ModelChange)
    try:
        c = await hub.admin.set_prices(request.match_info["id"],
                                       price_in_per_m=body.price_in_per_m,
                                       price_out_per_m=body.price_out_per_m, actor=actor)
    except AdminProblem as exc:
        raise _problem(exc) from None
    return _json(model_view(c))


async def account_usage(request: web.Request) -> web.Response:
    """``GET /admin/v1/usage?account_id=…``: any account's report."""
    hub, _ = _operator(request)
    account_id = request.query.get("account_id", "")
    if not account_id:
        raise errors.missing_parameter("account_id")
    if hub.accounts.get(account_id) is None and not any(
        k.owner_id == account_id for k in hub.keys.all()
    ):
        raise errors.not_found(f"no account with id {account_id!r}")
    report = await report_for(request, account_id)
    return web.Response(body=msgspec.json.encode(report), content_type="application/json")


def add_routes(app: web.Application) -> None:
    """Mount ``/admin/v1``."""
    r = app.router
    r.add_get("/admin/v1/users", list_users)
    r.add_post("/admin/v1/users", create_user)
    r.add_patch("/admin/v1/users/{id}", change_user)
    r.add_get("/admin/v1/keys", list_keys)
    r.add_post("/admin/v1/keys", create_key)
    r.add_get("/admin/v1/keys/{id}", get_key)
    r.add_put("/admin/v1/keys/{id}/policy", set_policy)
    r.add_post("/admin/v1/keys/{id}/revoke", revoke_key)
    r.add_get("/admin/v1/nodes", list_nodes)
    r.add_patch("/admin/v1/nodes/{id}", change_node)
    r.add_get("/admin/v1/catalog", list_catalog)
    r.add_post("/admin/v1/catalog/{id}/enable", enable_model)
    r.add_post("/admin/v1/catalog/{id}/disable", disable_model)
    r.add_patch("/admin/v1/catalog/{id}", change_model)
    r.add_get("/admin/v1/usage", account_usage)
