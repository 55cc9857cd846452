"""``GET /v1/usage``: a key owner's usage and earnings, per day (shape: ``docs/usage.md``).

Authenticated with any active API key of the account; the report covers
every key of that account (``?key_id=`` narrows it to one) and the
account's nodes' earnings. ``?start=`` and ``?end=`` are UTC dates
(``YYYY-MM-DD``, both included; default: the last 30 days). Reports read
the log with SQL, not the fleet state: this is not on the inference path.
"""

from __future__ import annotations

import datetime as dt

import msgspec
from aiohttp import web

from porten.adapters.http import errors
from porten.adapters.http.hubkeys import HUB
from porten.adapters.http.v1 import authenticated_key
from porten.services.metering import BadPeriod, UsageReport, parse_period, usage_report


async def report_for(request: web.Request, account_id: str) -> UsageReport:
    """The report for ``account_id`` with the request's ``start``/``end``/``key_id``."""
    hub = request.app[HUB]
    state = hub.projection.state
    try:
        first, last = parse_period(request.query.get("start"), request.query.get("end"),
                                   dt.datetime.now(dt.UTC).date())
    except BadPeriod as exc:
        raise errors.invalid_value(exc.param, str(exc)) from None
    key_id = request.query.get("key_id")
    if key_id is not None:
        key = state.keys.get(key_id)
        if key is None or key.owner_id != account_id:
            raise errors.not_found(f"This account has no API key with id '{key_id}'.")
    return await usage_report(hub.usage, state, account_id, first, last, key_id=key_id)


async def usage(request: web.Request) -> web.Response:
    """``GET /v1/usage``: the calling key's account."""
    key = authenticated_key(request)
    report = await report_for(request, key.owner_id)
    return web.Response(body=msgspec.json.encode(report), content_type="application/json")


def add_routes(app: web.Application) -> None:
    """Mount ``/v1/usage``."""
    app.router.add_get("/v1/usage", usage)
