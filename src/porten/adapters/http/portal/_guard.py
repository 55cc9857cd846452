"""Who may open a page: signed-in people, operators, and what everyone else is shown.

Not signed in → redirected to sign-in (and back afterwards). A session that
ran out → the same, with "your session expired" said, and the stale cookie
cleared. Signed in but not an operator on an operator page → 403.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from porten.adapters.http.portal._layout import error_page
from porten.adapters.http.portal._session import SESSION_COOKIE, Expired
from porten.adapters.http.portal._web import (
    Form,
    FormRejected,
    Viewer,
    checked_form,
    clear_cookie,
    session_of,
    viewer_of,
)


def _to_signin(request: web.Request) -> web.Response:
    target = request.path_qs if request.method == "GET" else request.path
    expired = isinstance(session_of(request), Expired)
    location = f"/signin?next={quote(target, safe='')}" + ("&expired=1" if expired else "")
    response = web.Response(status=303, headers={"Location": location})
    if expired or request.cookies.get(SESSION_COOKIE):
        clear_cookie(response, request, SESSION_COOKIE)
    return response


def signed_in(request: web.Request) -> Viewer | web.Response:
    """The viewer, or the redirect to sign-in a page should return instead."""
    viewer = viewer_of(request)
    return viewer if viewer is not None else _to_signin(request)


def operator(request: web.Request) -> Viewer | web.Response:
    """The viewer if an active operator; else a redirect (not signed in) or a 403 page."""
    viewer = signed_in(request)
    if isinstance(viewer, Viewer) and not viewer.is_operator:
        return error_page(request, 403, "Only operators may open the fleet pages.")
    return viewer


async def signed_in_form(
    request: web.Request, *, operators_only: bool = False
) -> tuple[Viewer, Form] | web.Response:
    """The viewer and their checked form (CSRF, origin, size), or the page to answer instead.

    Every portal form post starts here, so none can skip the sign-in check or
    the CSRF check, and none runs them in another order.
    """
    viewer = operator(request) if operators_only else signed_in(request)
    if not isinstance(viewer, Viewer):
        return viewer
    try:
        return viewer, await checked_form(request)
    except FormRejected as exc:
        return error_page(request, exc.status, exc.message)
