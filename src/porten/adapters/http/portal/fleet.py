"""``/fleet`` (operators): every node and model, demand, recent placement decisions, the catalog.

Everything shown is read from the folded fleet state, except the recent
decisions, which are the log's own ``load_requested`` / ``model_unloaded``
/ ``load_failed`` events with the reasons the planner wrote. Enabling or
disabling a catalog model goes through the same audited service as
``porten admin catalog`` and the admin API: the change itself and an
``admin_action_taken`` naming the operator, in one transaction.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from aiohttp import web

from porten.adapters.http.hubkeys import HUB
from porten.adapters.http.portal._guard import operator, signed_in_form
from porten.adapters.http.portal._html import Markup, html, join, query_value
from porten.adapters.http.portal._layout import error_page, notice, page
from porten.adapters.http.portal._session import CSRF_FIELD
from porten.adapters.http.portal._web import (
    PORTAL,
    Viewer,
    csrf_token,
    secured,
)
from porten.domain import events as ev
from porten.domain.state import FleetState, NodeState, demand_in, vram_used_mb

DECISION_TYPES: Final = ("load_requested", "model_loaded", "model_unloaded", "load_failed")
RECENT: Final = 50
#: How far back (in log positions) the decisions list looks.
LOOKBACK: Final = 5_000
DEMAND_WINDOW_S: Final = 3600.0


def when(at: float) -> str:
    """A timestamp as operators read it (UTC, to the second)."""
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _tag(text: str, kind: str = "") -> Markup:
    return html('<span class="tag {kind}">{text}</span>', kind=kind or text, text=text)


def _node_row(state: FleetState, n: NodeState) -> Markup:
    placements = join(
        (_tag(m if p.phase == "ready" else f"{m} ({p.phase})", p.phase)
         for m, p in sorted(n.placements.items())), " ",
    )
    return html(
        '<tr data-node="{id}"><td>{id}<br><span class="hint">{name}</span></td><td>{owner}</td>'
        '<td>{online}</td><td>{region}</td><td>{trust}</td><td>{engine}</td>'
        '<td class="num">{used} / {budget} MB</td><td>{placements}</td><td>{disk}</td></tr>',
        id=n.node_id, name=n.name, owner=n.owner_id,
        online=_tag("online") if n.online else _tag("offline"),
        region=n.region or "—", trust=n.trust_class, engine=n.engine or "—",
        used=vram_used_mb(state, n), budget=n.vram_budget_mb, placements=placements or "—",
        disk=", ".join(sorted(n.on_disk)) or "—",
    )


def _catalog_row(request: web.Request, state: FleetState, model_id: str, now: float) -> Markup:
    c = state.catalog[model_id]
    phases = [n.placements[model_id].phase for n in state.nodes.values()
              if n.online and model_id in n.placements]
    served, unmet = demand_in(state, model_id, now - DEMAND_WINDOW_S)
    action = "disable" if c.offered else "enable"
    form = html(
        '<form method="post" action="/fleet/catalog" class="inline">'
        '<input type="hidden" name="{field}" value="{csrf}">'
        '<input type="hidden" name="model" value="{id}">'
        '<input type="hidden" name="action" value="{action}">'
        '<button type="submit" class="{cls}" data-action="{action}">{label}</button></form>',
        field=CSRF_FIELD, csrf=csrf_token(request), id=model_id, action=action,
        cls="danger" if c.offered else "", label=action.capitalize(),
    )
    return html(
        '<tr data-model="{id}"><td>{id}</td><td>{type}</td><td>{offered}</td>'
        '<td class="num">{ready}</td><td class="num">{loading}</td>'
        '<td class="num">{served}</td><td class="num">{unmet}</td>'
        '<td class="num">{vram} MB</td><td>{form}</td></tr>',
        id=model_id, type=c.entry.type,
        offered=_tag("offered", "ready") if c.offered else _tag("disabled"),
        ready=phases.count("ready"), loading=len(phases) - phases.count("ready"),
        served=served, unmet=unmet, vram=c.entry.vram_mb, form=form,
    )


def _describe(e: ev.AnyEvent) -> tuple[str, str, str, str]:
    match e:
        case ev.LoadRequested():
            return "load requested", e.node_id, e.model_id, e.reason
        case ev.ModelLoaded():
            return "loaded", e.node_id, e.model_id, ""
        case ev.ModelUnloaded():
            why = e.reason + (f" for {e.evicted_for}" if e.evicted_for else "")
            return "unloaded", e.node_id, e.model_id, f"{why}{': ' if e.detail else ''}{e.detail}"
        case ev.LoadFailed():
            return "load failed", e.node_id, e.model_id, e.error
    return type(e).__name__, "", "", ""


async def recent_decisions(request: web.Request) -> list[tuple[float, str, str, str, str]]:
    """The newest placement events, newest first: (at, what, node, model, reason)."""
    store = request.app[HUB].store
    head = await store.head()
    records = await store.read_filtered(after=max(0, head - LOOKBACK), limit=LOOKBACK,
                                        types=list(DECISION_TYPES))
    return [(r.event.at, *_describe(r.event)) for r in reversed(records[-RECENT:])]


def _decisions_table(rows: list[tuple[float, str, str, str, str]]) -> Markup:
    body = join(
        html('<tr><td>{at}</td><td>{what}</td><td>{node}</td><td>{model}</td>'
             '<td>{reason}</td></tr>', at=when(at), what=what, node=node, model=model,
             reason=reason)
        for at, what, node, model, reason in rows
    )
    return html('<table id="decisions"><thead><tr><th>when (UTC)</th><th>what</th><th>node</th>'
                '<th>model</th><th>reason</th></tr></thead><tbody>{body}</tbody></table>',
                body=body or html('<tr><td colspan="5">No placement decisions yet.</td></tr>'))


@secured
async def fleet(request: web.Request) -> web.StreamResponse:
    """The fleet page."""
    viewer = operator(request)
    if not isinstance(viewer, Viewer):
        return viewer
    hub = request.app[HUB]
    state = hub.projection.state
    now = request.app[PORTAL].clock()
    nodes = join(_node_row(state, n) for _, n in sorted(state.nodes.items()))
    catalog = join(_catalog_row(request, state, m, now) for m in sorted(state.catalog))
    changed = request.query.get("changed", "")
    body = html(
        '{flash}<h2>Nodes</h2><table id="nodes"><thead><tr><th>node</th><th>owner</th>'
        '<th>state</th><th>region</th><th>trust</th><th>engine</th><th class="num">VRAM used'
        '</th><th>models</th><th>on disk</th></tr></thead><tbody>{nodes}</tbody></table>'
        '<h2>Models and demand (last hour)</h2><table id="catalog"><thead><tr><th>model</th>'
        '<th>type</th><th>catalog</th><th class="num">ready on</th><th class="num">loading'
        '</th><th class="num">served</th><th class="num">unmet</th><th class="num">VRAM</th>'
        '<th></th></tr></thead><tbody>{catalog}</tbody></table>'
        '<h2>Recent placement decisions</h2>{decisions}',
        flash=notice(f"Catalog changed: {changed}.", "ok") if changed else "",
        nodes=nodes or html('<tr><td colspan="9">No nodes enrolled.</td></tr>'),
        catalog=catalog, decisions=_decisions_table(await recent_decisions(request)),
    )
    return page(request, "Fleet", body, viewer=viewer)


@secured
async def catalog_change(request: web.Request) -> web.StreamResponse:
    """``POST /fleet/catalog``: enable or disable a model, as events naming the operator."""
    posted = await signed_in_form(request, operators_only=True)
    if not isinstance(posted, tuple):
        return posted
    viewer, form = posted
    hub = request.app[HUB]
    model, action = form.get("model", ""), form.get("action", "")
    known = hub.projection.state.catalog.get(model)
    if known is None:
        return error_page(request, 400, "That model is not in the catalog.")
    if action not in ("enable", "disable"):
        return error_page(request, 400, "The action must be enable or disable.")
    actor = f"user:{viewer.user_id}"
    if action == "enable":
        await hub.admin.enable_model(model, actor=actor)
    else:
        await hub.admin.disable_model(model, reason="disabled in the portal", actor=actor)
    changed = query_value(f"{model} {action}d")
    return web.Response(status=303, headers={"Location": f"/fleet?changed={changed}"})



def add_routes(app: web.Application) -> None:
    """Mount the fleet pages."""
    app.router.add_get("/fleet", fleet)
    app.router.add_post("/fleet/catalog", catalog_change)
