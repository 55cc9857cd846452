"""``/build/playground``: chat with any offered model, and watch a cold one load.

The page is plain HTML; ``static/playground.js`` does the talking, with the
same public API any client uses: ``POST /v1/chat/completions`` (streamed,
with the API key the person types in or just created) and, for a model
that is not ready, the warm-up progress stream
``/public/v1/models/warming/stream`` that feeds the progress bar
(downloading with MB and %, then "loading into memory", then the answer
streams). Nothing here talks to a node or the database.
"""

from __future__ import annotations

from aiohttp import web

from porten.adapters.http.hubkeys import HUB
from porten.adapters.http.portal._html import Markup, html, join
from porten.adapters.http.portal._layout import page
from porten.adapters.http.portal._web import secured
from porten.adapters.http.public import warming_status
from porten.domain.state import FleetState, offered_models

MAX_PROMPT_CHARS = 20_000


def _options(state: FleetState, chosen: str) -> Markup:
    options = []
    for entry in offered_models(state):
        if entry.type != "chat":
            continue
        status = warming_status(state, entry.id)
        label = "ready" if status.ready else (
            "cold — loads on first request" if status.phase == "cold" else f"{status.phase}…"
        )
        options.append(html(
            '<option value="{id}" data-ready="{ready}"{selected}>{id} · {label}</option>',
            id=entry.id, ready="true" if status.ready else "false", label=label,
            selected=Markup(" selected") if entry.id == chosen else "",
        ))
    return join(options)


@secured
async def playground(request: web.Request) -> web.StreamResponse:
    """The playground page (``?model=`` preselects a model)."""
    state = request.app[HUB].projection.state
    body = html(
        '<form id="chat-form" class="stack" autocomplete="off">'
        '<label>Model <select id="model" name="model" required>{options}</select></label>'
        '<label>API key <input id="api-key" name="api_key" type="password" '
        'placeholder="sk-porten-…" maxlength="200" required spellcheck="false"></label>'
        '<p class="hint">Create one under <a href="/build/keys">API keys</a>. It stays in this '
        'tab only.</p>'
        '<label>Message <textarea id="prompt" name="prompt" rows="4" maxlength="{max}" required>'
        '</textarea></label>'
        '<div class="row"><button id="send" type="submit">Send</button>'
        '<button id="stop" type="button" disabled>Stop</button>'
        '<button id="copy-curl" type="button">Copy as curl</button></div>'
        '</form>'
        '<p id="status" role="status"></p>'
        '<section id="warming" hidden><h2>Loading the model</h2>'
        '<progress id="warm-bar" max="100" value="0"></progress> '
        '<span id="warm-phase"></span> <span id="warm-detail"></span>'
        '<ol id="warm-log"></ol></section>'
        '<section id="reply"><h2>Answer</h2><pre id="reasoning" hidden></pre>'
        '<pre id="answer" aria-live="polite"></pre>'
        '<dl class="meta"><dt>Served by node</dt><dd id="served-by">—</dd>'
        '<dt>Usage</dt><dd id="usage">—</dd></dl></section>'
        '<section><h2>The same request with curl</h2><pre id="curl"></pre></section>',
        options=_options(state, request.query.get("model", "")), max=MAX_PROMPT_CHARS,
    )
    return page(request, "Playground", body, scripts=("playground.js",))


def add_routes(app: web.Application) -> None:
    """Mount the playground."""
    app.router.add_get("/build/playground", playground)
