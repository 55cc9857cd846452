"""``/signin`` and ``/signout``: a session cookie for an account's email and password.

Accounts are made by operators (``porten admin create-user``); the portal
only signs them in. A failed sign-in says the same thing whether the email
or the password was wrong, and :data:`FAILURES_PER_WINDOW` failures for one
email lock it out for a while (so a password cannot be guessed online). A
successful one issues a fresh session and a fresh CSRF cookie (a session
never inherits tokens minted before it), then returns to the page that
asked for it — only ever a path on this site.
"""

from __future__ import annotations

import math
from typing import Final

from aiohttp import web

from porten.adapters.http.hubkeys import HUB
from porten.adapters.http.portal._html import Markup, html
from porten.adapters.http.portal._layout import error_page, notice, page
from porten.adapters.http.portal._session import CSRF_COOKIE, CSRF_FIELD, SESSION_COOKIE, Session
from porten.adapters.http.portal._web import (
    PORTAL,
    FormRejected,
    Viewer,
    checked_form,
    clear_cookie,
    csrf_token,
    secured,
    session_of,
    set_cookie,
)
from porten.services._enrol import RateWindow
from porten.services.accounts import MAX_EMAIL_LENGTH
from porten.services.passwords import MAX_PASSWORD_LENGTH

FAILURES_PER_WINDOW: Final = 10
WINDOW_S: Final = 900.0
DEFAULT_NEXT: Final = "/build/keys"
_FAILURES: Final = web.AppKey("porten_signin_failures", RateWindow)


def account_viewer(request: web.Request, user_id: str) -> Viewer | None:
    """The active account ``user_id`` as a Viewer (``None`` if unknown or disabled)."""
    account = request.app[HUB].accounts.get(user_id)
    if account is None or account.disabled:
        return None
    return Viewer(user_id=account.user_id, email=account.email, name=account.name,
                  is_operator=account.is_operator)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a local path, never another site."""
    if (
        not target
        or len(target) > 2000
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(c.isspace() or not c.isprintable() for c in target)  # "/\t/evil" is "//evil"
    ):
        return DEFAULT_NEXT
    return target


def _form(request: web.Request, target: str, email: str = "", message: Markup | str = "",
          status: int = 200) -> web.Response:
    body = html(
        '{message}<form method="post" action="/signin" class="stack" id="signin-form">'
        '<input type="hidden" name="{field}" value="{csrf}">'
        '<input type="hidden" name="next" value="{target}">'
        '<label>Email <input id="email" name="email" type="email" autocomplete="username" '
        'maxlength="{max_email}" required value="{email}"></label>'
        '<label>Password <input id="password" name="password" type="password" '
        'autocomplete="current-password" maxlength="{max_password}" required></label>'
        '<div class="row"><button type="submit" id="signin">Sign in</button></div></form>'
        '<p class="hint">No account yet? An operator creates one with '
        '<code>porten admin create-user</code>.</p>',
        message=message, field=CSRF_FIELD, csrf=csrf_token(request), target=target,
        email=email, max_email=MAX_EMAIL_LENGTH, max_password=MAX_PASSWORD_LENGTH,
    )
    return page(request, "Sign in", body, status=status, viewer=None)


@secured
async def signin_page(request: web.Request) -> web.StreamResponse:
    """The sign-in form (says so when the previous session expired)."""
    message: Markup | str = ""
    if request.query.get("expired") == "1":
        message = notice("Your session expired. Sign in again.", "info")
    elif request.query.get("signedout") == "1":
        message = notice("You are signed out.", "ok")
    response = _form(request, safe_next(request.query.get("next")), message=message)
    if request.query.get("expired") == "1":
        clear_cookie(response, request, SESSION_COOKIE)
    return response


@secured
async def signin(request: web.Request) -> web.StreamResponse:
    """Check the email and password; on success, a new session and back to ``next``."""
    try:
        form = await checked_form(request)
    except FormRejected as exc:
        return error_page(request, exc.status, exc.message)
    target = safe_next(form.get("next"))
    email, password = form.get("email", "").strip(), form.get("password", "")
    if not email or not password:
        return _form(request, target, email, notice("Enter your email and password.", "error"),
                     status=400)
    if len(email) > MAX_EMAIL_LENGTH or len(password) > MAX_PASSWORD_LENGTH:
        return _form(request, target, "", notice("That email or password is too long.", "error"),
                     status=400)
    portal = request.app[PORTAL]
    failures = request.app[_FAILURES]
    now = portal.clock()
    wait = failures.blocked(email.lower(), now)
    if wait:
        return _form(request, target, email, notice(
            "Too many failed sign-ins for this account. Wait "
            f"{math.ceil(wait / 60)} minutes and try again.", "error"), status=429)
    account = await request.app[HUB].accounts.verify_password(email, password)
    if account is None:
        failures.hit(email.lower(), now)
        return _form(request, target, email, notice("Wrong email or password.", "error"),
                     status=401)
    _, cookie = portal.sessions.issue(account.user_id, now)
    response = web.Response(status=303, headers={"Location": target})
    set_cookie(response, request, SESSION_COOKIE, cookie, max_age=portal.sessions.ttl_s)
    set_cookie(response, request, CSRF_COOKIE, portal.sessions.new_csrf_cookie())
    return response


@secured
async def signout(request: web.Request) -> web.StreamResponse:
    """End this browser's session (the cookie is revoked, not just forgotten)."""
    try:
        await checked_form(request)
    except FormRejected as exc:
        return error_page(request, exc.status, exc.message)
    session = session_of(request)
    portal = request.app[PORTAL]
    if isinstance(session, Session):
        portal.sessions.revoke(session, portal.clock())
    response = web.Response(status=303, headers={"Location": "/signin?signedout=1"})
    clear_cookie(response, request, SESSION_COOKIE)
    return response


def add_routes(app: web.Application) -> None:
    """Mount sign-in and sign-out."""
    app[_FAILURES] = RateWindow(FAILURES_PER_WINDOW, WINDOW_S)
    app.router.add_get("/signin", signin_page)
    app.router.add_post("/signin", signin)
    app.router.add_post("/signout", signout)
