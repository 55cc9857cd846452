"""Build → API keys: create (the secret shown once), list, revoke, edit a key's policy.

Everything goes through the keys service (:class:`porten.services.keys.Keys`),
so the portal, the admin API and the CLI make the same events. A person
sees and changes only their own keys: another account's key id is "not
found", never "forbidden", so ids do not leak. The new key's secret is in
the response to the creating POST only (``Cache-Control: no-store``); the
list shows its display prefix.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from porten.adapters.http.hubkeys import HUB
from porten.adapters.http.portal._guard import signed_in, signed_in_form
from porten.adapters.http.portal._html import Markup, html, join, query_value
from porten.adapters.http.portal._layout import error_page, notice, page
from porten.adapters.http.portal._policy_form import (
    PolicyFormError,
    describe,
    parse_policy,
    policy_fields,
)
from porten.adapters.http.portal._session import CSRF_FIELD
from porten.adapters.http.portal._web import Viewer, csrf_token, secured
from porten.adapters.http.portal.fleet import when
from porten.domain.state import KeyState
from porten.domain.values import KeyPolicy
from porten.services.keys import MAX_NAME_LENGTH, KeyProblem

FLASH: Final = {"revoked": "Key {} revoked: requests with it now fail with 401.",
                "updated": "Policy of key {} saved; it applies from the next request."}


def _csrf(request: web.Request) -> Markup:
    return html('<input type="hidden" name="{f}" value="{v}">', f=CSRF_FIELD,
                v=csrf_token(request))


def _row(request: web.Request, key: KeyState) -> Markup:
    actions: Markup | str = "—"
    if key.active:
        actions = html(
            '<a href="/build/keys/{id}">Edit policy</a> '
            '<form method="post" action="/build/keys/{id}/revoke" class="inline" '
            'data-confirm="Revoke this key? Requests with it will fail at once.">{csrf}'
            '<button type="submit" class="danger" data-revoke="{id}">Revoke</button></form>',
            id=key.key_id, csrf=_csrf(request),
        )
    return html(
        '<tr data-key="{id}"><td>{name}</td><td><code>{prefix}</code></td><td>{created}</td>'
        '<td>{status}</td><td>{policy}</td><td>{actions}</td></tr>',
        id=key.key_id, name=key.name or "—", prefix=key.prefix, created=when(key.created_at),
        status=html('<span class="tag ready">active</span>') if key.active
        else html('<span class="tag disabled">revoked</span>'),
        policy=describe(key.policy), actions=actions,
    )


def _create_form(request: web.Request, name: str = "", policy: KeyPolicy | None = None) -> Markup:
    state = request.app[HUB].projection.state
    return html(
        '<h2>Create a key</h2><form method="post" action="/build/keys" class="stack" '
        'id="create-key">{csrf}<label>Name <input name="name" id="key-name" maxlength="{max}" '
        'value="{name}" placeholder="e.g. laptop, CI"></label>'
        '<details><summary>Restrict it (regions, trust, models, limits)</summary>{fields}'
        '</details><div class="row"><button type="submit" id="create">Create key</button></div>'
        '</form>',
        csrf=_csrf(request), max=MAX_NAME_LENGTH, name=name,
        fields=policy_fields(state, policy or KeyPolicy()),
    )


def _list_page(request: web.Request, viewer: Viewer, flash: Markup | str = "",
               form: Markup | None = None, status: int = 200) -> web.Response:
    keys = request.app[HUB].keys.owned_by(viewer.user_id)
    rows = join(_row(request, k) for k in reversed(keys))
    body = html(
        '{flash}<table id="keys"><thead><tr><th>name</th><th>key</th><th>created (UTC)</th>'
        '<th>status</th><th>policy</th><th></th></tr></thead><tbody>{rows}</tbody></table>'
        '{form}',
        flash=flash, rows=rows or html('<tr><td colspan="6">No keys yet.</td></tr>'),
        form=form if form is not None else _create_form(request),
    )
    return page(request, "API keys", body, viewer=viewer, status=status,
                scripts=("portal.js",))


@secured
async def keys_page(request: web.Request) -> web.StreamResponse:
    """The list of the viewer's keys and the create form."""
    viewer = signed_in(request)
    if not isinstance(viewer, Viewer):
        return viewer
    flash: Markup | str = ""
    for kind, template in FLASH.items():
        if kind in request.query:
            flash = notice(template.format(request.query[kind][:40]), "ok")
    return _list_page(request, viewer, flash)


def _check_name(name: str) -> None:
    if len(name) > MAX_NAME_LENGTH:
        raise PolicyFormError(f"The key's name must be at most {MAX_NAME_LENGTH} characters.")


@secured
async def create_key(request: web.Request) -> web.StreamResponse:
    """Mint a key; the answer is the only page that ever shows its secret."""
    posted = await signed_in_form(request)
    if not isinstance(posted, tuple):
        return posted
    viewer, form = posted
    hub = request.app[HUB]
    name = form.get("name").strip()
    try:
        _check_name(name)
        policy = parse_policy(form, hub.projection.state)
        minted = await hub.keys.create(owner_id=viewer.user_id, name=name, policy=policy,
                                       actor=f"user:{viewer.user_id}")
    except (PolicyFormError, KeyProblem) as exc:
        return _list_page(request, viewer, notice(str(exc), "error"),
                          form=_create_form(request, name[:MAX_NAME_LENGTH]), status=400)
    body = html(
        '<p class="notice ok" role="status">Key {name} created. Copy it now: this is the only '
        'time it is shown.</p><p class="secret" id="new-key">{token}</p>'
        '<div class="row"><button type="button" data-copy-from="new-key" id="copy-key">Copy'
        '</button><button type="button" data-playground-key-from="new-key" id="try-key">'
        'Use it in the playground</button></div>'
        '<pre>export PORTEN_BASE_URL={base}/v1\nexport PORTEN_API_KEY=&lt;the key above&gt;'
        '</pre><p><a href="/build/keys">Back to your keys</a></p>',
        name=name or minted.key.key_id, token=minted.token,
        base=f"{request.scheme}://{request.host}",
    )
    return page(request, "Your new API key", body, viewer=viewer, scripts=("portal.js",))


def _own_key(request: web.Request, viewer: Viewer) -> KeyState | None:
    key = request.app[HUB].keys.get(request.match_info["key_id"])
    return key if key is not None and key.owner_id == viewer.user_id else None


def _edit_page(request: web.Request, viewer: Viewer, key: KeyState, *,
               flash: Markup | str = "", status: int = 200) -> web.Response:
    state = request.app[HUB].projection.state
    body = html(
        '{flash}<p>Key <code>{prefix}</code> {name}</p>'
        '<form method="post" action="/build/keys/{id}" class="stack" id="edit-policy">{csrf}'
        '{fields}<div class="row"><button type="submit" id="save-policy">Save policy</button>'
        '<a href="/build/keys">Cancel</a></div></form>',
        flash=flash, prefix=key.prefix, name=key.name, id=key.key_id, csrf=_csrf(request),
        fields=policy_fields(state, key.policy),
    )
    return page(request, "Edit key policy", body, viewer=viewer, status=status)


@secured
async def edit_key(request: web.Request) -> web.StreamResponse:
    """The policy form of one of the viewer's keys."""
    viewer = signed_in(request)
    if not isinstance(viewer, Viewer):
        return viewer
    key = _own_key(request, viewer)
    if key is None or not key.active:
        return error_page(request, 404, "You have no active key with that id.")
    return _edit_page(request, viewer, key)


@secured
async def save_policy(request: web.Request) -> web.StreamResponse:
    """Replace the key's policy."""
    posted = await signed_in_form(request)
    if not isinstance(posted, tuple):
        return posted
    viewer, form = posted
    key = _own_key(request, viewer)
    if key is None or not key.active:
        return error_page(request, 404, "You have no active key with that id.")
    hub = request.app[HUB]
    try:
        policy = parse_policy(form, hub.projection.state)
        await hub.keys.set_policy(key.key_id, policy, actor=f"user:{viewer.user_id}")
    except (PolicyFormError, KeyProblem) as exc:
        return _edit_page(request, viewer, key, flash=notice(str(exc), "error"), status=400)
    return web.Response(status=303,
                        headers={"Location": f"/build/keys?updated={query_value(key.prefix)}"})


@secured
async def revoke_key(request: web.Request) -> web.StreamResponse:
    """Revoke one of the viewer's keys."""
    posted = await signed_in_form(request)
    if not isinstance(posted, tuple):
        return posted
    viewer, _ = posted
    key = _own_key(request, viewer)
    if key is None or not key.active:
        return error_page(request, 404, "You have no active key with that id.")
    await request.app[HUB].keys.revoke(key.key_id, reason="revoked in the portal",
                                       actor=f"user:{viewer.user_id}")
    return web.Response(status=303,
                        headers={"Location": f"/build/keys?revoked={query_value(key.prefix)}"})


def add_routes(app: web.Application) -> None:
    """Mount the key pages."""
    app.router.add_get("/build/keys", keys_page)
    app.router.add_post("/build/keys", create_key)
    app.router.add_get("/build/keys/{key_id}", edit_key)
    app.router.add_post("/build/keys/{key_id}", save_policy)
    app.router.add_post("/build/keys/{key_id}/revoke", revoke_key)
