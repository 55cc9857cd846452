"""The hub's Authenticator: a cache of verified tokens that never hides a revocation."""

from __future__ import annotations

import pytest

from porten.domain import events as ev
from porten.domain.fold import evolve, fold
from porten.domain.state import FleetState
from porten.services.auth import Authenticator, Unauthenticated
from porten.services.credentials import new_api_key, token_hash

SECRET = b"s" * 32


def setup() -> tuple[list[str], FleetState]:
    """Three keys of one account, and the state that knows them."""
    tokens = [new_api_key() for _ in range(3)]
    state = fold([ev.UserCreated(at=0, actor="t", user_id="u1", email="a@x.org")] + [
        ev.KeyCreated(at=0, actor="t", key_id=f"k{i}", owner_id="u1",
                      secret_hash=token_hash(SECRET, t)) for i, t in enumerate(tokens)])
    return tokens, state


def test_a_cached_token_is_refused_once_its_key_is_revoked() -> None:
    """Revocation is read from the state on every request, cache or not."""
    tokens, state = setup()
    auth = Authenticator(SECRET)
    assert auth(state, [f"Bearer {tokens[0]}"]).key_id == "k0"  # now cached
    revoked = evolve(state, ev.KeyRevoked(at=1, actor="t", key_id="k0"))
    with pytest.raises(Unauthenticated, match=r"^invalid or revoked API key$"):
        auth(revoked, [f"Bearer {tokens[0]}"])
    disabled = evolve(state, ev.UserDisabled(at=1, actor="t", user_id="u1"))
    with pytest.raises(Unauthenticated):
        auth(disabled, [f"Bearer {tokens[1]}"])


def test_the_cache_only_remembers_exact_verified_tokens() -> None:
    """Another token, even one a character away, is verified from scratch (and refused)."""
    tokens, state = setup()
    auth = Authenticator(SECRET)
    auth(state, [f"Bearer {tokens[0]}"])
    near = tokens[0][:-1] + ("A" if tokens[0][-1] != "A" else "B")
    with pytest.raises(Unauthenticated, match="checksum"):
        auth(state, [f"Bearer {near}"])
    with pytest.raises(Unauthenticated, match=r"^invalid or revoked API key$"):
        auth(state, [f"Bearer {new_api_key()}"])


def test_a_full_cache_starts_over() -> None:
    """The cache never holds more than max_entries tokens."""
    tokens, state = setup()
    auth = Authenticator(SECRET, max_entries=2)
    for t in tokens:
        assert auth(state, [f"Bearer {t}"]).owner_id == "u1"
    assert len(auth._known) == 1
