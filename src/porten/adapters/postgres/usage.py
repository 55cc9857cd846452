"""Usage and earnings as SQL over the log's ``request_served`` rows (a read model, no copy).

Each ``request_served`` event is one metered request, written exactly once
(its stream ``request-<id>`` is created with an expected version of "no
stream"), so sums over them are the bill. Grouping is by UTC day. The
partial indexes of ``0003_usage_index.sql`` keep a report to the rows it
sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs

from porten.adapters.postgres.event_store import PostgresEventStore
from porten.services.metering import EarningLine, UsageLine

_DAY: Final = "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
_SUMS: Final = (
    "count(*), sum((data->>'prompt_tokens')::bigint), "
    "sum((data->>'completion_tokens')::bigint), "
    "sum(coalesce((data->>'cost_usd')::float8, 0))"
)


@attrs.define
class PostgresUsage:
    """:class:`~porten.services.metering.UsageQueries` on the Postgres event log."""

    store: PostgresEventStore

    async def _rows(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self.store.pool.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def usage_lines(
        self, key_ids: Sequence[str] | None, start: float, end: float
    ) -> list[UsageLine]:
        """Per (day, key, model): requests, tokens and cost in ``[start, end)``."""
        where = "type = 'request_served' AND at >= to_timestamp(%s) AND at < to_timestamp(%s)"
        params: list[Any] = [start, end]
        if key_ids is not None:
            where += " AND data->>'key_id' = ANY(%s)"
            params.append(list(key_ids))
        rows = await self._rows(
            f"SELECT {_DAY}, data->>'key_id', data->>'model_id', {_SUMS} FROM porten_events "
            f"WHERE {where} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            params,
        )
        return [
            UsageLine(date=day, key_id=key, model=model, requests=n, prompt_tokens=int(p),
                      completion_tokens=int(c), cost_usd=round(float(cost), 9))
            for day, key, model, n, p, c, cost in rows
        ]

    async def node_lines(
        self, node_ids: Sequence[str], start: float, end: float
    ) -> list[EarningLine]:
        """Per (day, node, model) for the nodes ``node_ids``, whoever owned them then."""
        rows = await self._rows(
            f"SELECT {_DAY}, data->>'node_id', data->>'model_id', {_SUMS} FROM porten_events "
            "WHERE type = 'request_served' AND data->>'node_id' = ANY(%s) "
            "AND at >= to_timestamp(%s) AND at < to_timestamp(%s) "
            "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            [list(node_ids), start, end],
        )
        return [
            EarningLine(date=day, node_id=node, model=model, requests=n, prompt_tokens=int(p),
                        completion_tokens=int(c), earned_usd=round(float(cost), 9))
            for day, node, model, n, p, c, cost in rows
        ]

    async def earning_lines(self, owner_id: str, start: float, end: float) -> list[EarningLine]:
        """Per (day, node, model) of the nodes ``owner_id`` owned when they served."""
        rows = await self._rows(
            f"SELECT {_DAY}, data->>'node_id', data->>'model_id', {_SUMS} FROM porten_events "
            "WHERE type = 'request_served' AND data->>'node_owner_id' = %s "
            "AND at >= to_timestamp(%s) AND at < to_timestamp(%s) "
            "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            [owner_id, start, end],
        )
        return [
            EarningLine(date=day, node_id=node, model=model, requests=n, prompt_tokens=int(p),
                        completion_tokens=int(c), earned_usd=round(float(cost), 9))
            for day, node, model, n, p, c, cost in rows
        ]
