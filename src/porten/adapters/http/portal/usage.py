"""Build → Usage: tokens and cost per key per day, with a chart of the last 30 days."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from porten.adapters.http.hubkeys import HUB
from porten.adapters.http.portal._guard import signed_in
from porten.adapters.http.portal._html import html, join
from porten.adapters.http.portal._layout import page
from porten.adapters.http.portal._usage_read import DAYS, days, per_day, usage_lines
from porten.adapters.http.portal._web import PORTAL, Viewer, secured
from porten.adapters.http.portal.charts import bar_chart


@secured
async def usage(request: web.Request) -> web.StreamResponse:
    """The viewer's usage per key per day."""
    viewer = signed_in(request)
    if not isinstance(viewer, Viewer):
        return viewer
    hub = request.app[HUB]
    now = request.app[PORTAL].clock()
    dates = days(dt.datetime.fromtimestamp(now, dt.UTC).date())
    since = dt.datetime.fromisoformat(dates[0]).replace(tzinfo=dt.UTC).timestamp()
    names = {k.key_id: f"{k.name or '(unnamed)'} ({k.prefix})"
             for k in hub.keys.owned_by(viewer.user_id)}
    lines = await usage_lines(hub.store, names, since)
    rows = join(
        html('<tr><td>{date}</td><td>{key}</td><td class="num">{requests}</td>'
             '<td class="num">{prompt}</td><td class="num">{completion}</td>'
             '<td class="num">${usd}</td></tr>',
             date=x.date, key=x.subject, requests=x.requests, prompt=f"{x.prompt_tokens:,}",
             completion=f"{x.completion_tokens:,}", usd=f"{x.usd:.6f}")
        for x in reversed(lines)
    )
    total_usd = sum(x.usd for x in lines)
    body = html(
        '<p>The last {n} days (UTC), all your keys: <strong id="usage-total">{tokens} tokens, '
        '${usd}</strong>.</p><h2>Tokens per day</h2>{chart}<h2>Cost per day</h2>{cost}'
        '<h2>Per key per day</h2><table id="usage"><thead><tr><th>date</th><th>key</th>'
        '<th class="num">requests</th><th class="num">prompt tokens</th>'
        '<th class="num">completion tokens</th><th class="num">cost</th></tr></thead>'
        '<tbody>{rows}</tbody></table>',
        n=DAYS, tokens=f"{sum(x.tokens for x in lines):,}", usd=f"{total_usd:.6f}",
        chart=bar_chart(per_day(lines, dates, "tokens"), unit="tokens", chart_id="usage-chart"),
        cost=bar_chart(per_day(lines, dates, "usd"), unit="USD", chart_id="cost-chart"),
        rows=rows or html('<tr><td colspan="6">No requests in this period.</td></tr>'),
    )
    return page(request, "Usage", body, viewer=viewer)


def add_routes(app: web.Application) -> None:
    """Mount the usage page."""
    app.router.add_get("/build/usage", usage)
