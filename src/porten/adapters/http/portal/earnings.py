"""The earnings chart on ``/earn`` (fed by the usage read model once it is in the hub)."""

from __future__ import annotations

from aiohttp import web

from porten.adapters.http.hubkeys import HUB
from porten.adapters.http.portal._html import Markup, html
from porten.adapters.http.portal._web import Viewer
from porten.adapters.http.portal.charts import bar_chart


async def earnings_section(request: web.Request, viewer: Viewer) -> Markup:
    """Tokens served by the owner's nodes (totals; per-day earnings need the usage model)."""
    state = request.app[HUB].projection.state
    mine = sorted((n for n in state.nodes.values() if n.owner_id == viewer.user_id),
                  key=lambda n: n.node_id)
    bars = [(n.name or n.node_id, float(n.tokens_served)) for n in mine]
    return html('<h2>Tokens served</h2>{chart}',
                chart=bar_chart(bars, unit="tokens", chart_id="tokens-chart"))
