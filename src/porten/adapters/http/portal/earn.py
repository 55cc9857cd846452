"""Earn: the owner's nodes, what they served and earned, and adding a node.

``/earn`` lists the signed-in owner's nodes (online, region, trust class,
engine, VRAM used of budget, models loaded and on disk) with their tokens
served, and the earnings per day as a chart. ``/earn/add`` gives the
install line and the two ways to enrol: ``porten agent login`` (approve in
the browser at ``/device``) or a single-use enrolment token minted here for
scripted fleets (``porten agent enroll <token>``).
"""

from __future__ import annotations

from aiohttp import web

from porten.adapters.http.enrolment import portal_base
from porten.adapters.http.hubkeys import HUB
from porten.adapters.http.portal._guard import signed_in, signed_in_form
from porten.adapters.http.portal._html import Markup, html, join
from porten.adapters.http.portal._layout import notice, page
from porten.adapters.http.portal._session import CSRF_FIELD
from porten.adapters.http.portal._web import (
    PORTAL,
    Viewer,
    csrf_token,
    secured,
)
from porten.adapters.http.portal.earnings import earnings_section
from porten.adapters.http.portal.fleet import when
from porten.domain.state import EnrolmentToken, FleetState, NodeState, vram_used_mb
from porten.services.enrolment_tokens import MAX_NAME_LENGTH, TokenProblem

#: Lifetimes offered for a new enrolment token (label, seconds).
TOKEN_TTLS = (("1 hour", 3600), ("1 day", 86_400), ("7 days", 604_800), ("30 days", 2_592_000))


def _tag(text: str, kind: str) -> Markup:
    return html('<span class="tag {kind}">{text}</span>', kind=kind, text=text)


def _node_row(state: FleetState, n: NodeState) -> Markup:
    loaded = sorted(m for m, p in n.placements.items() if p.phase == "ready")
    return html(
        '<tr data-node="{id}"><td>{name}<br><span class="hint">{id}</span></td><td>{online}</td>'
        '<td>{region}</td><td>{trust}</td><td>{engine}</td><td class="num">{used} / {budget} MB'
        '</td><td>{loaded}</td><td>{disk}</td><td class="num">{tokens}</td></tr>',
        id=n.node_id, name=n.name, online=_tag("online", "online") if n.online
        else _tag("offline", "offline"), region=n.region or "—", trust=n.trust_class,
        engine=n.engine or "—", used=vram_used_mb(state, n), budget=n.vram_budget_mb,
        loaded=", ".join(loaded) or "—", disk=", ".join(sorted(n.on_disk)) or "—",
        tokens=f"{n.tokens_served:,}",
    )


@secured
async def earn(request: web.Request) -> web.StreamResponse:
    """The owner's nodes and earnings."""
    viewer = signed_in(request)
    if not isinstance(viewer, Viewer):
        return viewer
    state = request.app[HUB].projection.state
    mine = sorted((n for n in state.nodes.values() if n.owner_id == viewer.user_id),
                  key=lambda n: n.node_id)
    body = html(
        '<p><a href="/earn/add" id="add-node">Add a node</a></p><h2>Your nodes</h2>'
        '<table id="my-nodes"><thead><tr><th>node</th><th>state</th><th>region</th>'
        '<th>trust</th><th>engine</th><th class="num">VRAM used</th><th>loaded</th>'
        '<th>on disk</th><th class="num">tokens served</th></tr></thead><tbody>{rows}</tbody>'
        '</table>{earnings}',
        rows=join(_node_row(state, n) for n in mine)
        or html('<tr><td colspan="9">No nodes yet: <a href="/earn/add">add one</a>.</td></tr>'),
        earnings=await earnings_section(request, viewer),
    )
    return page(request, "Earn", body, viewer=viewer)


def _token_status(t: EnrolmentToken, now: float) -> str:
    if t.used_at is not None:
        return f"used by {t.node_id}"
    if t.revoked_at is not None:
        return "revoked"
    return "expired" if now >= t.expires_at else "unused"


def _token_row(request: web.Request, t: EnrolmentToken, now: float) -> Markup:
    status = _token_status(t, now)
    revoke: Markup | str = ""
    if status == "unused":
        revoke = html(
            '<form method="post" action="/earn/tokens/{id}/revoke" class="inline">'
            '<input type="hidden" name="{f}" value="{csrf}"><button type="submit" '
            'class="danger">Revoke</button></form>',
            id=t.token_id, f=CSRF_FIELD, csrf=csrf_token(request))
    return html('<tr data-token="{id}"><td><code>{prefix}</code></td><td>{name}</td>'
                '<td>{created}</td><td>{expires}</td><td>{status}</td><td>{revoke}</td></tr>',
                id=t.token_id, prefix=t.prefix, name=t.name or "—", created=when(t.created_at),
                expires=when(t.expires_at), status=status, revoke=revoke)


def _add_page(request: web.Request, viewer: Viewer, flash: Markup | str = "",
              status: int = 200) -> web.Response:
    hub = request.app[HUB]
    base = portal_base(request)
    now = request.app[PORTAL].clock()
    tokens = join(_token_row(request, t, now) for t in hub.enrolment_tokens.owned_by(
        viewer.user_id))
    ttls = join(html('<option value="{s}"{sel}>{label}</option>', s=s, label=label,
                     sel=Markup(" selected") if s == 86_400 else "") for label, s in TOKEN_TTLS)
    body = html(
        '{flash}<h2>1. Install</h2><pre id="install-line">pip install porten</pre>'
        '<h2>2. Enrol it through the browser</h2>'
        '<pre id="login-line">porten agent login --hub-url {base}</pre>'
        '<p>It prints a code and a link; open <a href="/device">{base}/device</a> here, enter the '
        'code and approve. Then run <code>porten agent run</code> (or install it as a service).'
        '</p><h2>Or: an enrolment token (scripted fleets)</h2>'
        '<form method="post" action="/earn/tokens" class="stack" id="mint-token">'
        '<input type="hidden" name="{f}" value="{csrf}">'
        '<label>Name <input name="name" id="token-name" maxlength="{max}" '
        'placeholder="e.g. rack 3"></label><label>Valid for <select name="ttl_s" id="token-ttl">'
        '{ttls}</select></label><div class="row"><button type="submit" id="mint">Mint a '
        'single-use token</button></div></form>'
        '<table id="tokens"><thead><tr><th>token</th><th>name</th><th>created (UTC)</th>'
        '<th>expires (UTC)</th><th>status</th><th></th></tr></thead><tbody>{tokens}</tbody>'
        '</table>',
        flash=flash, base=base, f=CSRF_FIELD, csrf=csrf_token(request), max=MAX_NAME_LENGTH,
        ttls=ttls, tokens=tokens or html('<tr><td colspan="6">No tokens.</td></tr>'),
    )
    return page(request, "Add a node", body, viewer=viewer, status=status)


@secured
async def add_node(request: web.Request) -> web.StreamResponse:
    """Install line, browser enrolment, and enrolment tokens."""
    viewer = signed_in(request)
    if not isinstance(viewer, Viewer):
        return viewer
    return _add_page(request, viewer)


@secured
async def mint_token(request: web.Request) -> web.StreamResponse:
    """Mint a single-use enrolment token; shown on this response only."""
    posted = await signed_in_form(request)
    if not isinstance(posted, tuple):
        return posted
    viewer, form = posted
    name = form.get("name").strip()
    ttl = form.get("ttl_s", "86400")
    if not ttl.isdigit() or int(ttl) not in {s for _, s in TOKEN_TTLS}:
        return _add_page(request, viewer, notice("Pick how long the token is valid from the "
                                                 "list.", "error"), 400)
    try:
        minted = await request.app[HUB].enrolment_tokens.mint(
            viewer.user_id, name=name, ttl_s=float(ttl), actor=f"user:{viewer.user_id}")
    except TokenProblem as exc:
        return _add_page(request, viewer, notice(f"{str(exc).capitalize()}.", "error"), 400)
    body = html(
        '<p class="notice ok" role="status">Token minted. Copy it now: this is the only time it '
        'is shown. It enrols one node, until {expires} UTC.</p>'
        '<p class="secret" id="new-token">{token}</p><div class="row"><button type="button" '
        'data-copy-from="enroll-line">Copy the command</button></div>'
        '<pre id="enroll-line">porten agent enroll {token} --hub-url {base}</pre>'
        '<p><a href="/earn/add">Back</a></p>',
        expires=when(minted.state.expires_at), token=minted.token, base=portal_base(request),
    )
    return page(request, "Your enrolment token", body, viewer=viewer, scripts=("portal.js",))


@secured
async def revoke_token(request: web.Request) -> web.StreamResponse:
    """Withdraw an unused token."""
    posted = await signed_in_form(request)
    if not isinstance(posted, tuple):
        return posted
    viewer, _ = posted
    try:
        await request.app[HUB].enrolment_tokens.revoke(
            viewer.user_id, request.match_info["token_id"], actor=f"user:{viewer.user_id}")
    except TokenProblem as exc:
        return _add_page(request, viewer, notice(f"{str(exc).capitalize()}.", "error"), 400)
    return web.Response(status=303, headers={"Location": "/earn/add"})


def add_routes(app: web.Application) -> None:
    """Mount the Earn pages."""
    app.router.add_get("/earn", earn)
    app.router.add_get("/earn/add", add_node)
    app.router.add_post("/earn/tokens", mint_token)
    app.router.add_post("/earn/tokens/{token_id}/revoke", revoke_token)
