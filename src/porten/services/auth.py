"""Who is calling: the ``Authorization`` header to an active key, from the folded state.

Nothing here waits on the database: the key index (hash → key id) is part of
the fleet state the hub holds, so a revocation folded by any hub process
takes effect on the next request. Every failure is the same
:class:`Unauthenticated` with a reason that never contains the token.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from porten.domain.state import FleetState, KeyState
from porten.services.credentials import API_KEY_PREFIX, token_hash, well_formed


class Unauthenticated(Exception):
    """The request carries no usable API key; ``reason`` is safe to show the caller."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def bearer_token(headers: Sequence[str]) -> str:
    """The token of exactly one ``Authorization: Bearer <token>`` header.

    The scheme is case-insensitive (RFC 7235); anything else — no header,
    two headers, another scheme, an empty or space-containing token — is refused.
    """
    if not headers:
        raise Unauthenticated(
            "no API key: send it as 'Authorization: Bearer sk-porten-…'"
        )
    if len(headers) > 1:
        raise Unauthenticated("send exactly one Authorization header")
    scheme, _, token = headers[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("the Authorization header must use the Bearer scheme")
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise Unauthenticated("the Authorization header has no usable token")
    return token


def authenticate(state: FleetState, server_secret: bytes, headers: Sequence[str]) -> KeyState:
    """The active key the request's ``Authorization`` header names."""
    token = bearer_token(headers)
    if not token.startswith(API_KEY_PREFIX):
        raise Unauthenticated("this is not a Porten API key (they start with sk-porten-)")
    if not well_formed(token, API_KEY_PREFIX):
        raise Unauthenticated("malformed API key (its checksum does not match)")
    digest = token_hash(server_secret, token)
    key_id = state.keys_by_hash.get(digest)
    key = state.keys.get(key_id) if key_id is not None else None
    if key is None or not key.active or not hmac.compare_digest(key.secret_hash, digest):
        raise Unauthenticated("invalid or revoked API key")
    owner = state.users.get(key.owner_id)
    if owner is not None and not owner.active:
        raise Unauthenticated("invalid or revoked API key")  # the account is disabled
    return key
