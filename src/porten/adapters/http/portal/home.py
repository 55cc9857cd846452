"""``/``: what Porten is, and where each kind of visitor goes next."""

from __future__ import annotations

from aiohttp import web

from porten.adapters.http.hubkeys import HUB
from porten.adapters.http.portal._html import html
from porten.adapters.http.portal._layout import page
from porten.adapters.http.portal._web import secured
from porten.domain.state import is_ready, offered_models


@secured
async def home(request: web.Request) -> web.StreamResponse:
    """The landing page, with a live count of the fleet."""
    state = request.app[HUB].projection.state
    models = offered_models(state)
    body = html(
        '<p>OpenAI-compatible inference, routed across a fleet of GPU nodes. Point any OpenAI '
        'SDK at <code>{base}/v1</code>, pick a model, and the fleet loads it on demand.</p>'
        '<ul><li><strong>Build</strong>: get an <a href="/build/keys">API key</a>, try a model '
        'in the <a href="/build/playground">playground</a>.</li>'
        '<li><strong>Earn</strong>: <a href="/earn">add a node</a> and serve models.</li>'
        '<li><strong>Read</strong>: the <a href="/docs">docs</a>, or '
        '<a href="/llms.txt">llms.txt</a> for machines.</li></ul>'
        '<p id="fleet-summary">{online} of {nodes} nodes online · {ready} of {offered} offered '
        'models ready now.</p>',
        base=f"{request.scheme}://{request.host}",
        online=sum(1 for n in state.nodes.values() if n.online), nodes=len(state.nodes),
        ready=sum(1 for m in models if is_ready(state, m.id)), offered=len(models),
    )
    return page(request, "Porten", body)


def add_routes(app: web.Application) -> None:
    """Mount ``/``."""
    app.router.add_get("/", home)
