"""``Authorization`` headers to tokens: only ``Bearer <key>``, and an exact reason for the rest."""

from __future__ import annotations

import pytest

from porten.services.auth import Unauthenticated, bearer_token

KEY = "sk-porten-AbCdEfGhIjKlMnOpQrStUvWxYz012345abc123"
USE = "use 'Authorization: Bearer sk-porten-…'"
MISSING = "no API key: send it as 'Authorization: Bearer sk-porten-…'"
NOT_BEARER = f"the Authorization header must use the Bearer scheme: {USE}"
SPELLING = f"spell the scheme exactly 'Bearer': {USE}"
SPACING = f"put exactly one space between 'Bearer' and the key, and nothing around them: {USE}"
NO_TOKEN = f"the Authorization header has no usable token: {USE}"
TWO = f"send exactly one Authorization header: {USE}"


def test_the_exact_form_gives_the_token() -> None:
    """'Bearer', one space, the key: the key."""
    assert bearer_token([f"Bearer {KEY}"]) == KEY


@pytest.mark.parametrize(("headers", "reason"), [
    pytest.param([], MISSING, id="no header"),
    pytest.param([""], MISSING, id="empty"),
    pytest.param(["   "], MISSING, id="spaces only"),
    pytest.param(["\t \t"], MISSING, id="tabs and spaces only"),
    pytest.param([f"Bearer {KEY}", f"Bearer {KEY}"], TWO, id="two headers"),
    pytest.param([f"Bearer {KEY}", ""], TWO, id="two headers, one empty"),
    pytest.param(["Basic dXNlcjpwYXNzd29yZA=="], NOT_BEARER, id="basic"),
    pytest.param([KEY], NOT_BEARER, id="no scheme"),
    pytest.param([f"Token {KEY}"], NOT_BEARER, id="another scheme"),
    pytest.param([f"bearer {KEY}"], SPELLING, id="lowercase bearer"),
    pytest.param([f"BEARER {KEY}"], SPELLING, id="uppercase bearer"),
    pytest.param([f"bearer\t{KEY}"], SPELLING, id="lowercase bearer and a tab"),
    pytest.param([f"Bearer\t{KEY}"], SPACING, id="tab separator"),
    pytest.param([f"Bearer  {KEY}"], SPACING, id="two spaces"),
    pytest.param([f"Bearer \t{KEY}"], SPACING, id="space and tab"),
    pytest.param([f" Bearer {KEY}"], SPACING, id="leading space"),
    pytest.param([f"Bearer {KEY} "], SPACING, id="trailing space"),
    pytest.param([f"Bearer {KEY}\t"], SPACING, id="trailing tab"),
    pytest.param(["Bearer"], NO_TOKEN, id="scheme only"),
    pytest.param(["Bearer "], NO_TOKEN, id="scheme and a space"),
    pytest.param(["Bearer \t "], NO_TOKEN, id="whitespace token"),
    pytest.param([f"Bearer {KEY[:20]} {KEY[20:]}"], NO_TOKEN, id="a space inside the key"),
])
def test_every_other_form_is_refused_with_its_reason(headers: list[str], reason: str) -> None:
    """Each unusable header is refused with the exact reason, which never contains the key."""
    with pytest.raises(Unauthenticated) as refused:
        bearer_token(headers)
    assert refused.value.reason == reason
    assert KEY[10:] not in str(refused.value)
