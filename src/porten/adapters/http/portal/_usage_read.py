"""Usage per key per day and earnings per day, summed from the log's ``request_served`` events.

A stop-gap read model for the portal's charts: it reads the period's
metered requests and sums them in Python. The keys branch's SQL read model
(``services/metering.py``) replaces it when it lands in main; the shapes
below are the portal's, so only this module changes then.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from typing import Final

import attrs

from porten.adapters.postgres.event_store import PostgresEventStore
from porten.domain import events as ev

DAYS: Final = 30
#: The most metered requests one report reads.
MAX_READ: Final = 200_000


@attrs.frozen
class DayLine:
    """One key's (or node's) use on one UTC day."""

    date: str
    subject: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    usd: float

    @property
    def tokens(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens


def days(today: dt.date, count: int = DAYS) -> list[str]:
    """The last ``count`` UTC dates up to ``today``, oldest first."""
    return [(today - dt.timedelta(days=i)).isoformat() for i in range(count - 1, -1, -1)]


def _sum(events: Iterable[ev.RequestServed], subject_of: dict[str, str], attr: str
         ) -> list[DayLine]:
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    for e in events:
        subject = subject_of.get(getattr(e, attr))
        if subject is None:
            continue
        date = dt.datetime.fromtimestamp(e.at, dt.UTC).date().isoformat()
        s = sums[(date, subject)]
        s[0] += 1
        s[1] += e.prompt_tokens
        s[2] += e.completion_tokens
        s[3] += e.cost_usd
    return [DayLine(date=d, subject=k, requests=int(s[0]), prompt_tokens=int(s[1]),
                    completion_tokens=int(s[2]), usd=round(s[3], 9))
            for (d, k), s in sorted(sums.items())]


async def _served(store: PostgresEventStore, since: float) -> list[ev.RequestServed]:
    records = await store.read_filtered(types=["request_served"], since=since, limit=MAX_READ)
    return [r.event for r in records if isinstance(r.event, ev.RequestServed)]


async def usage_lines(store: PostgresEventStore, key_names: dict[str, str], since: float
                      ) -> list[DayLine]:
    """Per day and key (``key_names``: key id → how to show it) since ``since``."""
    if not key_names:
        return []
    return _sum(await _served(store, since), key_names, "key_id")


async def earning_lines(store: PostgresEventStore, node_names: dict[str, str], since: float
                        ) -> list[DayLine]:
    """Per day and node (``node_names``: node id → how to show it) since ``since``."""
    if not node_names:
        return []
    return _sum(await _served(store, since), node_names, "node_id")


def per_day(lines: Iterable[DayLine], dates: list[str], value: str) -> list[tuple[str, float]]:
    """``(date, total of value)`` for each of ``dates`` (0 where nothing happened)."""
    totals: dict[str, float] = dict.fromkeys(dates, 0.0)
    for line in lines:
        if line.date in totals:
            totals[line.date] += float(getattr(line, value))
    return list(totals.items())
