"""Portal session cookies and CSRF tokens: genuine ones work, forged, expired or revoked do not."""

from __future__ import annotations

from porten.adapters.http.portal._session import Expired, Session, Sessions, derive_key

NOW = 1_700_000_000.0


def sessions(ttl: float = 3600.0) -> Sessions:
    """Sessions keyed from a fixed hub secret."""
    return Sessions(key=derive_key(b"hub secret"), ttl_s=ttl)


def test_an_issued_cookie_reads_back_until_it_expires() -> None:
    """The cookie names its user while valid and reads as Expired from its expiry on."""
    s = sessions()
    session, cookie = s.issue("usr_1", NOW)
    assert s.read(cookie, NOW + 3599) == session
    assert s.read(cookie, NOW + 3600) == Expired(user_id="usr_1")


def _flip(text: str) -> str:
    """``text`` with its middle character replaced by a different one."""
    i = len(text) // 2
    return text[:i] + ("B" if text[i] != "B" else "C") + text[i + 1 :]


def test_a_tampered_or_foreign_cookie_is_nobody() -> None:
    """Changing any byte, or a cookie from a hub with another secret, reads as no session."""
    s = sessions()
    _, cookie = s.issue("usr_1", NOW)
    body, mac = cookie.split(".")
    # Change a character in the middle: the last base64 character of a value can
    # carry unused bits, so changing it may not change a single decoded byte.
    assert s.read(f"{_flip(body)}.{mac}", NOW) is None
    assert s.read(f"{body}.{_flip(mac)}", NOW) is None
    other = Sessions(key=derive_key(b"another secret"))
    assert other.read(cookie, NOW) is None
    for junk in ("", "no-dot", "a.b.c", "!!.??", "x" * 5000):
        assert s.read(junk, NOW) is None


def test_sign_out_revokes_only_that_session() -> None:
    """A revoked session reads as nobody; another session of the same user still works."""
    s = sessions()
    first, cookie1 = s.issue("usr_1", NOW)
    _second, cookie2 = s.issue("usr_1", NOW)
    s.revoke(first, NOW)
    assert s.read(cookie1, NOW) is None
    assert isinstance(s.read(cookie2, NOW), Session)


def test_csrf_tokens_are_bound_to_cookie_and_session() -> None:
    """A token checks only with its own CSRF cookie and session id; missing ones never check."""
    s = sessions()
    token = s.csrf_token("cookie-a", "sid-1")
    assert s.csrf_ok("cookie-a", "sid-1", token)
    assert not s.csrf_ok("cookie-b", "sid-1", token)
    assert not s.csrf_ok("cookie-a", "sid-2", token)
    assert not s.csrf_ok("cookie-a", "sid-1", None)
    assert not s.csrf_ok(None, "sid-1", token)
    assert not s.csrf_ok("cookie-a", "sid-1", "")
