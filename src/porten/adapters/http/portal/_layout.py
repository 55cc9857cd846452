"""The frame every portal page shares: head, navigation, the signed-in account, messages."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from porten import __version__
from porten.adapters.http.portal._html import Markup, html, join
from porten.adapters.http.portal._session import CSRF_FIELD
from porten.adapters.http.portal._web import Viewer, csrf_token, viewer_of

#: (path, label, who sees it): "all", "signed-in" or "operator".
NAV: Final = (
    ("/build/keys", "API keys", "signed-in"),
    ("/build/playground", "Playground", "all"),
    ("/build/usage", "Usage", "signed-in"),
    ("/earn", "Earn", "signed-in"),
    ("/fleet", "Fleet", "operator"),
    ("/docs", "Docs", "all"),
)


def _visible(who: str, viewer: Viewer | None) -> bool:
    if who == "all":
        return True
    if who == "signed-in":
        return viewer is not None
    return viewer is not None and viewer.is_operator


def _nav(request: web.Request, viewer: Viewer | None) -> Markup:
    links = join(
        html('<a href="{path}"{current}>{label}</a>', path=path, label=label,
             current=Markup(' aria-current="page"') if request.path.startswith(path) else "")
        for path, label, who in NAV if _visible(who, viewer)
    )
    if viewer is None:
        account = html('<a class="signin" href="/signin">Sign in</a>')
    else:
        account = html(
            '<span class="who" id="signed-in-as">{email}</span>'
            '<form method="post" action="/signout" class="inline">'
            '<input type="hidden" name="{field}" value="{csrf}">'
            '<button type="submit" id="signout">Sign out</button></form>',
            email=viewer.email, field=CSRF_FIELD, csrf=csrf_token(request),
        )
    return html('<nav><a class="brand" href="/">Porten</a>{links}<span class="grow"></span>'
                '{account}</nav>', links=links, account=account)


def notice(text: str, kind: str = "info") -> Markup:
    """A message box (``info``, ``ok`` or ``error``) shown above a page's content."""
    role = "alert" if kind == "error" else "status"
    return html('<p class="notice {kind}" role="{role}">{text}</p>', kind=kind, role=role,
                text=text)


def page(
    request: web.Request, title: str, body: Markup, *, status: int = 200,
    viewer: Viewer | None = None, scripts: tuple[str, ...] = (),
) -> web.Response:
    """A whole HTML page: ``body`` inside the shared frame (``scripts`` from /static)."""
    if viewer is None:
        viewer = viewer_of(request)
    tags = join(html('<script src="/static/{name}" defer></script>', name=s) for s in scripts)
    doc = html(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<title>{title} · Porten</title><link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/static/portal.css">{scripts}</head>'
        '<body><header>{nav}</header><main><h1>{title}</h1>{body}</main>'
        '<footer>Porten {version} · <a href="/docs">docs</a> · '
        '<a href="/llms.txt">llms.txt</a></footer></body></html>\n',
        title=title, scripts=tags, nav=_nav(request, viewer), body=body, version=__version__,
    )
    return web.Response(text=doc, status=status, content_type="text/html", charset="utf-8")


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    """A page that says what went wrong, with the right status."""
    titles = {400: "Bad request", 403: "Forbidden", 404: "Not found", 413: "Too large",
              429: "Too many attempts"}
    return page(request, titles.get(status, "Error"), notice(message, "error"), status=status)
