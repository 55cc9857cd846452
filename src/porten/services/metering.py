"""Usage per key per day, and earnings per node owner: the reports built on metered requests.

Every request is metered exactly once as a ``request_served`` event carrying
its tokens, its cost at the prices of the catalog when it was admitted, the
key's account and the serving node's owner; never the prompt or the
completion. A report sums those events over whole UTC days:

* ``data`` — per day, key and model: requests, prompt and completion
  tokens, and what they cost (``cost_usd``);
* ``earnings`` — per day, node and model, for the nodes the account owned
  when they served: the same sums, as ``earned_usd`` (what requesters paid
  for that node's work; payouts and any platform share are applied
  elsewhere).

``GET /v1/usage`` (a key owner, their own account), ``GET /admin/v1/usage``
(an operator, any account) and ``porten usage`` all return a
:class:`UsageReport`; ``docs/usage.md`` documents the shape.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Final, Protocol

import msgspec

from porten.domain.state import FleetState

#: The longest period one report covers.
MAX_DAYS: Final = 366
#: The period when none is given: the last 30 days, today included.
DEFAULT_DAYS: Final = 30


class UsageLine(msgspec.Struct, frozen=True, kw_only=True):
    """One key's use of one model on one day."""

    date: str
    key_id: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class EarningLine(msgspec.Struct, frozen=True, kw_only=True):
    """What one node earned serving one model on one day."""

    date: str
    node_id: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    earned_usd: float


class Totals(msgspec.Struct, frozen=True, kw_only=True):
    """Sums over a report's lines."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float = 0.0


class UsageReport(msgspec.Struct, frozen=True, kw_only=True):
    """An account's usage and earnings over ``start``..``end`` (UTC dates, both included)."""

    object: str = "usage"
    account_id: str
    start: str
    end: str
    data: list[UsageLine]
    total: Totals
    earnings: list[EarningLine]
    earnings_total: Totals


class UsageQueries(Protocol):
    """Sums over the log's metered requests (a read model; Postgres implements it)."""

    async def usage_lines(
        self, key_ids: Sequence[str] | None, start: float, end: float
    ) -> list[UsageLine]:
        """Per (day, key, model) in ``[start, end)`` unix seconds (``None``: every key)."""
        ...

    async def earning_lines(self, owner_id: str, start: float, end: float) -> list[EarningLine]:
        """Per (day, node, model) of the nodes ``owner_id`` owned when they served."""
        ...


class BadPeriod(ValueError):
    """A report period that is not one; the message says what to send."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(message)


def parse_period(start: str | None, end: str | None, today: dt.date) -> tuple[dt.date, dt.date]:
    """``(start, end)`` dates from ``YYYY-MM-DD`` strings (defaults: the last 30 days)."""
    last = _date("end", end) if end else today
    first = _date("start", start) if start else last - dt.timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise BadPeriod("start", "'start' must not be after 'end'.")
    if (last - first).days + 1 > MAX_DAYS:
        raise BadPeriod("start", f"A report covers at most {MAX_DAYS} days.")
    return first, last


def _date(param: str, text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise BadPeriod(param, f"'{param}' must be a date like 2026-01-31.") from None


def _bounds(first: dt.date, last: dt.date) -> tuple[float, float]:
    start = dt.datetime.combine(first, dt.time(), dt.UTC).timestamp()
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()
    return start, end


async def usage_report(
    queries: UsageQueries, state: FleetState, account_id: str, first: dt.date, last: dt.date,
    *, key_id: str | None = None,
) -> UsageReport:
    """The account's report; ``key_id`` narrows usage to one of its keys."""
    keys = sorted(k.key_id for k in state.keys.values() if k.owner_id == account_id)
    if key_id is not None:
        keys = [k for k in keys if k == key_id]
    start, end = _bounds(first, last)
    lines = await queries.usage_lines(keys, start, end) if keys else []
    earnings = await queries.earning_lines(account_id, start, end)
    return UsageReport(
        account_id=account_id, start=first.isoformat(), end=last.isoformat(), data=lines,
        total=Totals(
            requests=sum(x.requests for x in lines),
            prompt_tokens=sum(x.prompt_tokens for x in lines),
            completion_tokens=sum(x.completion_tokens for x in lines),
            usd=round(sum(x.cost_usd for x in lines), 9),
        ),
        earnings=earnings,
        earnings_total=Totals(
            requests=sum(x.requests for x in earnings),
            prompt_tokens=sum(x.prompt_tokens for x in earnings),
            completion_tokens=sum(x.completion_tokens for x in earnings),
            usd=round(sum(x.earned_usd for x in earnings), 9),
        ),
    )
