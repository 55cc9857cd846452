"""What every portal page shares: security headers, the viewer, cookies, forms with CSRF.

Portal handlers return HTML responses themselves (a 403 or 400 is a page a
person reads, not an OpenAI error body), so the API's error middleware
never sees them. Every response passes through :func:`secured`, which adds
a Content-Security-Policy with no inline script or style — so even a value
that slipped past escaping could not run — and the usual hardening headers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import urlsplit

import attrs
import msgspec
from aiohttp import web
from multidict import MultiDict

from porten.adapters.http.portal._session import (
    CSRF_COOKIE,
    CSRF_FIELD,
    SESSION_COOKIE,
    Expired,
    Session,
    Sessions,
)

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
#: Portal forms are small; anything larger is refused before it is read.
MAX_FORM_BYTES: Final = 64 * 1024


class Viewer(msgspec.Struct, frozen=True, kw_only=True):
    """The signed-in person a page is rendered for."""

    user_id: str
    email: str
    name: str = ""
    is_operator: bool = False


ViewerLookup = Callable[[web.Request, str], Viewer | None]


def _nobody(request: web.Request, user_id: str) -> Viewer | None:
    return None


@attrs.define
class Portal:
    """The portal's own parts: sessions, the clock, how a user id becomes a Viewer."""

    sessions: Sessions
    clock: Callable[[], float] = time.time
    #: Resolves a session's user to an active account (``None``: unknown or disabled).
    lookup: ViewerLookup = _nobody
    #: ``https://…`` when the portal is served over TLS (cookies then get ``Secure``).
    public_url: str | None = None


PORTAL: Final = web.AppKey("portal", Portal)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def secured(handler: Handler) -> Handler:
    """Wrap a portal handler so its response carries the security headers."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                raise
            response = exc  # redirects
        _harden(response, request)
        return response

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def _harden(response: web.StreamResponse, request: web.Request) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    _ensure_csrf_cookie(request, response)


# --- cookies ---------------------------------------------------------------------------


def is_https(request: web.Request) -> bool:
    """Whether the browser reached the portal over https (directly or per PORTEN_PUBLIC_URL)."""
    public = request.app[PORTAL].public_url
    return request.secure or (public is not None and public.startswith("https://"))


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str,
               max_age: float | None = None) -> None:
    """Set a portal cookie: HttpOnly, SameSite=Lax, Path=/, Secure over https."""
    response.set_cookie(
        name, value, path="/", httponly=True, samesite="Lax", secure=is_https(request),
        max_age=None if max_age is None else int(max_age),
    )


def clear_cookie(response: web.StreamResponse, request: web.Request, name: str) -> None:
    """Delete a portal cookie (same attributes, so the browser matches it)."""
    response.del_cookie(name, path="/", httponly=True, samesite="Lax",
                        secure=is_https(request))


_CSRF_VALUE: Final = web.RequestKey("porten_csrf_value", str)


def csrf_cookie(request: web.Request) -> str:
    """This browser's CSRF cookie value (minted on first use, set on the response)."""
    value = request.get(_CSRF_VALUE)
    if value is None:
        existing = request.cookies.get(CSRF_COOKIE, "")
        value = existing if 16 <= len(existing) <= 64 else Sessions.new_csrf_cookie()
        request[_CSRF_VALUE] = value
    return value


def _ensure_csrf_cookie(request: web.Request, response: web.StreamResponse) -> None:
    value = request.get(_CSRF_VALUE)
    if value is not None and request.cookies.get(CSRF_COOKIE) != value:
        set_cookie(response, request, CSRF_COOKIE, value)


# --- who is asking ---------------------------------------------------------------------


_SESSION: Final = web.RequestKey("porten_session", object)


def session_of(request: web.Request) -> Session | Expired | None:
    """The request's session cookie, read once (``Expired`` or ``None`` when unusable)."""
    if _SESSION not in request:
        portal = request.app[PORTAL]
        request[_SESSION] = portal.sessions.read(request.cookies.get(SESSION_COOKIE),
                                                 portal.clock())
    found = request[_SESSION]
    assert found is None or isinstance(found, Session | Expired)
    return found


def viewer_of(request: web.Request) -> Viewer | None:
    """Who is signed in, if anyone (an account disabled since sign-in is nobody)."""
    session = session_of(request)
    if not isinstance(session, Session):
        return None
    return request.app[PORTAL].lookup(request, session.user_id)


def csrf_token(request: web.Request) -> str:
    """The token a form on this page must carry back."""
    session = session_of(request)
    sid = session.session_id if isinstance(session, Session) else ""
    return request.app[PORTAL].sessions.csrf_token(csrf_cookie(request), sid)


class FormRejected(Exception):
    """A form post the portal refuses before looking at its fields (the page says why)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def same_origin(request: web.Request) -> bool:
    """Whether a browser's ``Origin`` (when it sends one) is this portal's own."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    public = request.app[PORTAL].public_url
    ours = {request.host} | ({urlsplit(public).netloc} if public else set())
    return parts.netloc in ours and parts.scheme in ("http", "https")


@attrs.frozen
class Form:
    """A posted form's text fields (files are ignored)."""

    fields: MultiDict[str]

    def get(self, name: str, default: str = "") -> str:
        """The first value of ``name``."""
        return self.fields.get(name, default)

    def getall(self, name: str) -> list[str]:
        """Every value of ``name`` (checkbox lists)."""
        return list(self.fields.getall(name, []))

    def longest(self) -> int:
        """The length of the longest value (to refuse oversized fields up front)."""
        return max((len(v) for v in self.fields.values()), default=0)


async def checked_form(request: web.Request) -> Form:
    """The posted form, once its size, origin and CSRF token have been checked."""
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise FormRejected(413, f"The form is larger than {MAX_FORM_BYTES // 1024} KiB.")
    if not same_origin(request):
        raise FormRejected(403, "Cross-site form posts are refused.")
    try:
        raw = await request.post()
    except (ValueError, web.HTTPException):
        raise FormRejected(400, "The form could not be read.") from None
    form = Form(MultiDict((k, v) for k, v in raw.items() if isinstance(v, str)))
    session = session_of(request)
    sid = session.session_id if isinstance(session, Session) else ""
    token = form.get(CSRF_FIELD)
    if not token:
        raise FormRejected(403, "The form's CSRF token is missing. Reload the page and retry.")
    sessions = request.app[PORTAL].sessions
    if not sessions.csrf_ok(request.cookies.get(CSRF_COOKIE), sid, token):
        raise FormRejected(403, "The form's CSRF token is invalid or expired. "
                                "Reload the page and retry.")
    return form
