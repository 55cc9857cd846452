"""The /v1 handlers' one call into the gate: admit a request or answer 429/503.

Kept apart from ``v1.py`` so the handlers stay decode → decide → relay: the
gate's refusals become OpenAI-shaped errors here, in one place.
"""

from __future__ import annotations

from aiohttp import web

from porten.adapters.http import errors
from porten.adapters.http.context import request_id_of
from porten.adapters.http.hubkeys import HUB
from porten.adapters.http.sse import estimate_tokens
from porten.domain.state import KeyState
from porten.domain.values import CatalogEntry
from porten.services.admission import Admission, LimitsUnavailable, Refused


async def admit(
    request: web.Request, key: KeyState, entry: CatalogEntry, *, prompt_bytes: int,
    completion_cap: int | None, completion: bool = True,
) -> Admission:
    """The request's admission, or 429 ``rate_limit_exceeded`` / 503 ``budget_unavailable``."""
    try:
        return await request.app[HUB].gate.admit(
            key, request_id_of(request), entry, prompt_tokens=estimate_tokens(prompt_bytes),
            completion_cap=completion_cap, completion=completion,
        )
    except Refused as exc:
        raise errors.rate_limit_exceeded(exc.retry_after_s, str(exc)) from None
    except LimitsUnavailable as exc:
        raise errors.budget_unavailable(exc.retry_after_s) from None
