"""The earnings part of ``/earn``: tokens served and earned per day by the owner's nodes."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from porten.adapters.http.hubkeys import HUB
from porten.adapters.http.portal._html import Markup, html
from porten.adapters.http.portal._usage_read import DAYS, days, earning_lines, per_day
from porten.adapters.http.portal._web import PORTAL, Viewer
from porten.adapters.http.portal.charts import bar_chart


async def earnings_section(request: web.Request, viewer: Viewer) -> Markup:
    """Charts of the last 30 days: tokens the owner's nodes served, and what they earned."""
    hub = request.app[HUB]
    now = request.app[PORTAL].clock()
    dates = days(dt.datetime.fromtimestamp(now, dt.UTC).date())
    since = dt.datetime.fromisoformat(dates[0]).replace(tzinfo=dt.UTC).timestamp()
    names = {n.node_id: n.name or n.node_id for n in hub.projection.state.nodes.values()
             if n.owner_id == viewer.user_id}
    lines = await earning_lines(hub.store, names, since)
    return html(
        '<h2>Tokens served per day</h2>{tokens}<h2>Earnings per day</h2>'
        '<p>The last {n} days: <strong id="earned-total">${usd}</strong> for {count} tokens.'
        '</p>{earned}',
        tokens=bar_chart(per_day(lines, dates, "tokens"), unit="tokens", chart_id="tokens-chart"),
        n=DAYS, usd=f"{sum(x.usd for x in lines):.6f}",
        count=f"{sum(x.tokens for x in lines):,}",
        earned=bar_chart(per_day(lines, dates, "usd"), unit="USD", chart_id="earnings-chart"),
    )
