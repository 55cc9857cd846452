"""``/device``: where an owner approves a machine running ``porten agent login`` (RFC 8628).

The agent prints a short code and this page's URL. The owner signs in (the
page sends them through sign-in and back, code kept), types or confirms
the code, sees which machine asked and with what region and trust class it
will join, and approves or denies. Approval binds the node to the account
the moment the agent next polls. Wrong codes count against the account
(:mod:`porten.services.enrolment` locks out guessing).
"""

from __future__ import annotations

from aiohttp import web

from porten.adapters.http.hubkeys import HUB
from porten.adapters.http.portal._guard import signed_in, signed_in_form
from porten.adapters.http.portal._html import Markup, html
from porten.adapters.http.portal._layout import error_page, notice, page
from porten.adapters.http.portal._session import CSRF_FIELD
from porten.adapters.http.portal._web import Viewer, csrf_token, secured
from porten.services.enrolment import ApprovalProblem, display_user_code, normalise_user_code

MAX_CODE_INPUT = 32


def _entry(request: web.Request, viewer: Viewer, code: str = "", message: Markup | str = "",
           status: int = 200) -> web.Response:
    body = html(
        '{message}<p>Enter the code your machine shows after <code>porten agent login</code>.'
        '</p><form method="post" action="/device" class="stack" id="device-form">'
        '<input type="hidden" name="{field}" value="{csrf}">'
        '<label>Code <input id="user-code" name="code" class="code" maxlength="{max}" '
        'autocomplete="off" autocapitalize="characters" spellcheck="false" required '
        'value="{code}" placeholder="BCDF-GHJK"></label>'
        '<div class="row"><button type="submit" id="continue">Continue</button></div></form>',
        message=message, field=CSRF_FIELD, csrf=csrf_token(request), max=MAX_CODE_INPUT,
        code=code[:MAX_CODE_INPUT],
    )
    return page(request, "Approve a machine", body, viewer=viewer, status=status)


@secured
async def device_page(request: web.Request) -> web.StreamResponse:
    """The code form (``?code=`` prefills it, as ``verification_uri_complete`` does)."""
    viewer = signed_in(request)
    if not isinstance(viewer, Viewer):
        return viewer
    return _entry(request, viewer, request.query.get("code", ""))


@secured
async def device_confirm(request: web.Request) -> web.StreamResponse:
    """Check the code and ask the owner to approve or deny that machine."""
    posted = await signed_in_form(request)
    if not isinstance(posted, tuple):
        return posted
    viewer, form = posted
    entered = form.get("code")[:MAX_CODE_INPUT]
    hub = request.app[HUB]
    try:
        grant = hub.device_flow.find(viewer.user_id, entered)
    except ApprovalProblem as exc:
        return _entry(request, viewer, entered, notice(exc.message, "error"), exc.status)
    region, trust = hub.accounts.node_defaults(viewer.user_id)
    code = display_user_code(normalise_user_code(entered) or "")
    body = html(
        '<p>The machine <strong id="client-name">{name}</strong> asks to join the fleet as '
        '<strong>your</strong> node (code <code>{code}</code>).</p>'
        '<p>It will serve in region <strong>{region}</strong> with trust class '
        '<strong>{trust}</strong> (your account\'s settings), and earn for you.</p>'
        '<p class="hint">Approve only if you just ran <code>porten agent login</code> on it.</p>'
        '<div class="row">'
        '<form method="post" action="/device/decide" class="inline">'
        '<input type="hidden" name="{field}" value="{csrf}">'
        '<input type="hidden" name="code" value="{code}">'
        '<button type="submit" name="decision" value="approve" id="approve">Approve</button> '
        '<button type="submit" name="decision" value="deny" class="danger" id="deny">Deny'
        '</button></form></div>',
        name=grant.client_name or "(unnamed)", code=code, region=region or "(none)",
        trust=trust, field=CSRF_FIELD, csrf=csrf_token(request),
    )
    return page(request, "Approve a machine", body, viewer=viewer)


@secured
async def device_decide(request: web.Request) -> web.StreamResponse:
    """Record the owner's decision."""
    posted = await signed_in_form(request)
    if not isinstance(posted, tuple):
        return posted
    viewer, form = posted
    decision = form.get("decision")
    if decision not in ("approve", "deny"):
        return error_page(request, 400, "Choose Approve or Deny.")
    flow = request.app[HUB].device_flow
    entered = form.get("code")[:MAX_CODE_INPUT]
    try:
        grant = flow.find(viewer.user_id, entered)
        if decision == "approve":
            await flow.approve(viewer.user_id, grant.grant_id)
        else:
            await flow.deny(viewer.user_id, grant.grant_id)
    except ApprovalProblem as exc:
        return _entry(request, viewer, entered, notice(exc.message, "error"), exc.status)
    if decision == "deny":
        return page(request, "Machine denied", notice(
            "Denied. The machine was told, and the code can no longer be used.", "ok"),
            viewer=viewer)
    body = html(
        '{ok}<p>Its agent picks up its credential within a few seconds; then it appears '
        'under <a href="/earn">Earn</a>.</p>',
        ok=notice(f"Approved. {grant.client_name or 'The machine'} is joining as your node.",
                  "ok"),
    )
    return page(request, "Machine approved", body, viewer=viewer)


def add_routes(app: web.Application) -> None:
    """Mount the approval pages."""
    app.router.add_get("/device", device_page)
    app.router.add_post("/device", device_confirm)
    app.router.add_post("/device/decide", device_decide)
