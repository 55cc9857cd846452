"""Who is calling: the ``Authorization`` header to an active key, from the folded state.

Nothing here waits on the database: the key index (hash → key id) is part of
the fleet state the hub holds, so a revocation folded by any hub process
takes effect on the next request. Every failure is the same
:class:`Unauthenticated` with a reason that never contains the token.

:class:`Authenticator` is what the hub calls per request: it remembers which
key a token verified as, so a returning token skips the checksum and the
HMAC (a few microseconds) and costs two dictionary lookups. The cache maps
a token to a key id only — whether that key is still active, and its
account enabled, is read from the current state on every request, so a
revocation is never hidden by the cache.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from typing import Final

import attrs

from porten.domain.state import FleetState, KeyState
from porten.services.credentials import API_KEY_PREFIX, token_hash, well_formed

_NO_SPACE: Final = re.compile(r"\S+")
#: The scheme, then whatever whitespace follows it (kept, to tell what is wrong with it).
_SCHEME: Final = re.compile(r"(\s+)")
#: How to send a key: every refusal of an unusable ``Authorization`` header ends with it.
_EXPECTED: Final = f"'Authorization: Bearer {API_KEY_PREFIX}…'"
#: Verified tokens the cache holds before it starts over (a few MB at most).
CACHE_ENTRIES: Final = 50_000


class Unauthenticated(Exception):
    """The request carries no usable API key; ``reason`` is safe to show the caller."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def bearer_token(headers: Sequence[str]) -> str:
    """The token of exactly one ``Authorization: Bearer <token>`` header, written exactly so.

    ``Bearer``, one space, the key, nothing else: what OpenAI's SDKs and
    every documented example send. Anything else — no header, two headers,
    another scheme, ``bearer`` in another case, a tab or extra spaces, an
    empty or space-containing token — is refused with a reason that says
    what to send instead (and never repeats the header's value).
    """
    if len(headers) == 1 and headers[0].startswith("Bearer "):
        token = headers[0][7:]
        if _NO_SPACE.fullmatch(token):
            return token
    if not headers or (len(headers) == 1 and not headers[0].strip()):
        raise Unauthenticated(f"no API key: send it as {_EXPECTED}")
    if len(headers) > 1:
        raise Unauthenticated(f"send exactly one Authorization header: use {_EXPECTED}")
    scheme, _, rest = [*_SCHEME.split(headers[0].strip(), maxsplit=1), "", ""][:3]
    if scheme.lower() != "bearer":
        raise Unauthenticated(f"the Authorization header must use the Bearer scheme: use "
                              f"{_EXPECTED}")
    if scheme != "Bearer":
        raise Unauthenticated(f"spell the scheme exactly 'Bearer': use {_EXPECTED}")
    if not _NO_SPACE.fullmatch(rest):
        raise Unauthenticated(f"the Authorization header has no usable token: use {_EXPECTED}")
    raise Unauthenticated("put exactly one space between 'Bearer' and the key, and nothing "
                          f"around them: use {_EXPECTED}")


def _verified(state: FleetState, server_secret: bytes, token: str) -> KeyState:
    """The key ``token`` is, checked from scratch (checksum, keyed hash, index)."""
    if not token.startswith(API_KEY_PREFIX):
        raise Unauthenticated("this is not a Porten API key (they start with sk-porten-)")
    if not well_formed(token, API_KEY_PREFIX):
        raise Unauthenticated("malformed API key (its checksum does not match)")
    digest = token_hash(server_secret, token)
    key_id = state.keys_by_hash.get(digest)
    key = state.keys.get(key_id) if key_id is not None else None
    if key is None or not hmac.compare_digest(key.secret_hash, digest):
        raise Unauthenticated("invalid or revoked API key")
    return key


def _usable(state: FleetState, key: KeyState) -> KeyState:
    """``key`` if it and its account are active now."""
    if not key.active:
        raise Unauthenticated("invalid or revoked API key")
    owner = state.users.get(key.owner_id)
    if owner is not None and not owner.active:
        raise Unauthenticated("invalid or revoked API key")  # the account is disabled
    return key


def authenticate(state: FleetState, server_secret: bytes, headers: Sequence[str]) -> KeyState:
    """The active key the request's ``Authorization`` header names."""
    return _usable(state, _verified(state, server_secret, bearer_token(headers)))


@attrs.define
class Authenticator:
    """:func:`authenticate` with a cache of tokens already verified (token → key id)."""

    server_secret: bytes = attrs.field(repr=False)
    max_entries: int = CACHE_ENTRIES
    _known: dict[str, str] = attrs.field(factory=dict, repr=False)

    def __call__(self, state: FleetState, headers: Sequence[str]) -> KeyState:
        """The active key the request's ``Authorization`` header names."""
        token = bearer_token(headers)
        key_id = self._known.get(token)
        key = state.keys.get(key_id) if key_id is not None else None
        if key is None:
            key = _verified(state, self.server_secret, token)
            if len(self._known) >= self.max_entries:
                self._known.clear()
            self._known[token] = key.key_id
        return _usable(state, key)
