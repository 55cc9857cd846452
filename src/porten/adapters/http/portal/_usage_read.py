"""Usage per key per day and earnings per day, for the portal's charts.

The sums are the SQL read model's (:class:`~porten.adapters.postgres.usage.PostgresUsage`,
indexed by key; nodes by id), regrouped here into the portal's shapes: one
line per day and shown name, models added together.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from typing import Final

import attrs

from porten.adapters.postgres.event_store import PostgresEventStore
from porten.adapters.postgres.usage import PostgresUsage

DAYS: Final = 30
#: The end of every period the portal shows: now and whatever is metered meanwhile.
_END: Final = float(2**40)


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


def _by_subject(lines: Iterable[tuple[str, str, int, int, int, float]],
                subject_of: dict[str, str]) -> list[DayLine]:
    """(date, id, requests, prompt, completion, usd) rows summed per (date, shown name)."""
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    for date, ident, requests, prompt, completion, usd in lines:
        subject = subject_of.get(ident)
        if subject is None:
            continue
        s = sums[(date, subject)]
        s[0] += requests
        s[1] += prompt
        s[2] += completion
        s[3] += usd
    return [DayLine(date=d, subject=k, requests=int(s[0]), prompt_tokens=int(s[1]),
                    completion_tokens=int(s[2]), usd=round(s[3], 9))
            for (d, k), s in sorted(sums.items())]


async def usage_lines(store: PostgresEventStore, key_names: dict[str, str], since: float
                      ) -> list[DayLine]:
    """Per day and key (``key_names``: key id → how to show it) since ``since``."""
    if not key_names:
        return []
    lines = await PostgresUsage(store).usage_lines(sorted(key_names), since, _END)
    return _by_subject(((x.date, x.key_id, x.requests, x.prompt_tokens, x.completion_tokens,
                         x.cost_usd) for x in lines), key_names)


async def earning_lines(store: PostgresEventStore, node_names: dict[str, str], since: float
                        ) -> list[DayLine]:
    """Per day and node (``node_names``: node id → how to show it) since ``since``."""
    if not node_names:
        return []
    lines = await PostgresUsage(store).node_lines(sorted(node_names), since, _END)
    return _by_subject(((x.date, x.node_id, x.requests, x.prompt_tokens, x.completion_tokens,
                         x.earned_usd) for x in lines), node_names)


def per_day(lines: Iterable[DayLine], dates: list[str], value: str) -> list[tuple[str, float]]:
    """``(date, total of value)`` for each of ``dates`` (0 where nothing happened)."""
    totals: dict[str, float] = dict.fromkeys(dates, 0.0)
    for line in lines:
        if line.date in totals:
            totals[line.date] += float(getattr(line, value))
    return list(totals.items())
