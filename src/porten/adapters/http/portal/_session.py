"""Portal sign-in sessions and CSRF tokens: signed cookies, nothing secret in the browser.

A session is a cookie ``porten_session`` holding ``{user, session id, issued,
expires}`` and an HMAC over it, keyed by a key derived from the hub's
secret — so every hub process sharing the secret accepts it, and nothing
needs storing per session. The cookie is ``HttpOnly`` (no script reads it),
``SameSite=Lax`` (not sent on cross-site form posts) and ``Secure`` when the
portal is served over https. A session ends at its expiry, at sign-out (its
id is remembered as revoked until it would have expired), or as soon as
its account is disabled (checked on every request against the folded state).

CSRF uses a second cookie, ``porten_csrf`` (random, HttpOnly), and a form
field that is an HMAC of that cookie and the session id: a forged form post
from another site has neither the cookie's value nor the key, and a token
lifted from one session is useless in another. Every state-changing form
carries it; a post without a valid one gets 403. Clocks are arguments.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from hashlib import sha256
from typing import Final

import attrs
import msgspec

SESSION_COOKIE: Final = "porten_session"
CSRF_COOKIE: Final = "porten_csrf"
CSRF_FIELD: Final = "csrf"
#: A signed-in browser stays signed in this long without signing in again.
DEFAULT_TTL_S: Final = 12 * 3600.0
_MAX_COOKIE: Final = 1024


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """Who a browser is signed in as, and until when."""

    user_id: str
    session_id: str
    issued_at: float
    expires_at: float


class Expired(msgspec.Struct, frozen=True, kw_only=True):
    """A genuine session cookie whose time is up (the page says so, then asks to sign in)."""

    user_id: str


_ENC: Final = msgspec.json.Encoder()
_DEC: Final = msgspec.json.Decoder(Session)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def derive_key(server_secret: bytes) -> bytes:
    """The portal's own key, derived from the hub secret (never the secret itself)."""
    return hmac.new(server_secret, b"porten portal cookies v1", sha256).digest()


@attrs.define
class Sessions:
    """Issues, reads and revokes session cookies; mints and checks CSRF tokens."""

    key: bytes = attrs.field(repr=False)
    ttl_s: float = DEFAULT_TTL_S
    #: session id → when it would have expired; sign-out puts it here.
    _revoked: dict[str, float] = attrs.field(factory=dict)

    def issue(self, user_id: str, now: float) -> tuple[Session, str]:
        """A new session for ``user_id`` and its cookie value."""
        session = Session(user_id=user_id, session_id=secrets.token_urlsafe(16),
                          issued_at=now, expires_at=now + self.ttl_s)
        payload = _ENC.encode(session)
        return session, f"{_b64(payload)}.{_b64(self._mac(b'session|' + payload))}"

    def read(self, cookie: str | None, now: float) -> Session | Expired | None:
        """The session ``cookie`` names: :class:`Expired` if its time is up, ``None`` if forged.

        A revoked (signed-out) session reads as ``None``: the browser simply is not signed in.
        """
        session = self._genuine(cookie)
        if session is None or session.session_id in self._revoked:
            return None
        if now >= session.expires_at:
            return Expired(user_id=session.user_id)
        return session

    def _genuine(self, cookie: str | None) -> Session | None:
        if not cookie or len(cookie) > _MAX_COOKIE or cookie.count(".") != 1:
            return None
        body, mac = cookie.split(".")
        try:
            payload, given = _unb64(body), _unb64(mac)
        except (ValueError, TypeError):
            return None
        if not hmac.compare_digest(given, self._mac(b"session|" + payload)):
            return None
        try:
            return _DEC.decode(payload)
        except msgspec.DecodeError:
            return None

    def revoke(self, session: Session, now: float) -> None:
        """End ``session`` now (sign-out); forgotten once it would have expired anyway."""
        self._revoked = {sid: exp for sid, exp in self._revoked.items() if exp > now}
        self._revoked[session.session_id] = session.expires_at

    # --- CSRF ----------------------------------------------------------------------------

    @staticmethod
    def new_csrf_cookie() -> str:
        """A fresh random value for the CSRF cookie."""
        return secrets.token_urlsafe(24)

    def csrf_token(self, csrf_cookie: str, session_id: str) -> str:
        """The form token that goes with ``csrf_cookie`` in session ``session_id`` ('' if none)."""
        return _b64(self._mac(f"csrf|{csrf_cookie}|{session_id}".encode()))

    def csrf_ok(self, csrf_cookie: str | None, session_id: str, token: str | None) -> bool:
        """Whether ``token`` is the one :meth:`csrf_token` gives for this cookie and session."""
        if not csrf_cookie or not token or len(token) > 128:
            return False
        return hmac.compare_digest(token, self.csrf_token(csrf_cookie, session_id))

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self.key, data, sha256).digest()
