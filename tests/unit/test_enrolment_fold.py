"""The enrolment state machine as the fold records it, and the user-code format."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from porten.domain import events as ev
from porten.domain.fold import fold
from porten.domain.fold_enrolment import GRANT_RETENTION_S
from porten.services._enrol import RateWindow
from porten.services.enrolment import (
    USER_CODE_ALPHABET,
    display_user_code,
    normalise_user_code,
)

T = 1_700_000_000.0


def issued(grant: str = "g1", at: float = T, code: str = "d1", user: str = "u1") -> ev.AnyEvent:
    """A grant issued at ``at`` that expires ten minutes later."""
    return ev.DeviceCodeIssued(at=at, actor="hub", grant_id=grant, device_code_hash=code,
                               user_code_hash=user, expires_at=at + 600)


def test_a_grant_is_decided_once_and_redeemed_only_after_approval() -> None:
    """Deny after approve is ignored; redeeming a pending grant is ignored; events are counted."""
    state = fold([
        issued(),
        ev.DeviceCodeRedeemed(at=T + 1, actor="x", grant_id="g1", node_id="n1"),
        ev.DeviceCodeApproved(at=T + 2, actor="user:a", grant_id="g1", owner_id="a"),
        ev.DeviceCodeDenied(at=T + 3, actor="user:b", grant_id="g1", owner_id="b"),
    ])
    grant = state.device_grants["g1"]
    assert (grant.status, grant.owner_id, grant.node_id, grant.events) == ("approved", "a", "", 4)
    state = fold([ev.DeviceCodeRedeemed(at=T + 4, actor="x", grant_id="g1", node_id="n1")],
                 state)
    assert (state.device_grants["g1"].status, state.device_grants["g1"].node_id) == (
        "redeemed", "n1")


def test_a_code_that_names_another_grant_is_not_taken_over() -> None:
    """A second grant reusing a code hash is ignored (lookups stay unambiguous)."""
    state = fold([issued("g1"), issued("g2", code="d2", user="u1")])
    assert set(state.device_grants) == {"g1"}
    assert state.grants_by_code["u1"] == "g1"


def test_long_expired_grants_are_dropped_when_a_new_one_arrives() -> None:
    """A grant a day past its expiry disappears, with its code index entries."""
    later = T + 600 + GRANT_RETENTION_S + 1
    state = fold([issued("g1"), issued("g2", at=later, code="d2", user="u2")])
    assert set(state.device_grants) == {"g2"}
    assert set(state.grants_by_code) == {"d2", "u2"}


def test_a_token_is_used_or_revoked_once() -> None:
    """Redeemed then revoked: stays redeemed; a second redemption keeps the first node."""
    state = fold([
        ev.EnrolmentTokenMinted(at=T, actor="u", token_id="t1", owner_id="a", token_hash="h",
                                expires_at=T + 60),
        ev.EnrolmentTokenRedeemed(at=T + 1, actor="x", token_id="t1", node_id="n1"),
        ev.EnrolmentTokenRevoked(at=T + 2, actor="u", token_id="t1"),
        ev.EnrolmentTokenRedeemed(at=T + 3, actor="x", token_id="t1", node_id="n2"),
    ])
    token = state.enrolment_tokens["t1"]
    assert (token.node_id, token.revoked_at, token.events) == ("n1", None, 4)


@given(st.text(USER_CODE_ALPHABET, min_size=8, max_size=8), st.sampled_from(["", "-", " "]))
def test_user_codes_read_back_however_they_are_typed(code: str, sep: str) -> None:
    """Lower case, a dash or a space in the middle: the same code."""
    typed = (code[:4] + sep + code[4:]).lower()
    assert normalise_user_code(typed) == code
    assert normalise_user_code(display_user_code(code)) == code


def test_codes_outside_the_alphabet_are_not_codes() -> None:
    """Vowels, digits, wrong lengths are refused before any lookup."""
    for bad in ("AAAA-AAAA", "BCDF-GHJ1", "BCDF-GHJ", "BCDF-GHJKL", "", "BCDF_GHJK"):
        assert normalise_user_code(bad) is None
    assert not set("AEIOU01") & set(USER_CODE_ALPHABET)


def test_a_rate_window_admits_the_limit_then_says_how_long_to_wait() -> None:
    """Three per minute: the fourth waits until the first leaves the window."""
    window = RateWindow(3, 60.0)
    assert [window.hit("k", T + i) for i in range(3)] == [0.0, 0.0, 0.0]
    assert window.hit("k", T + 10) == 50.0
    assert window.hit("other", T + 10) == 0.0
    assert window.hit("k", T + 60) == 0.0
