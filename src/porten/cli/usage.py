"""``porten usage``: what your keys used and cost, and what your nodes earned, per day.

Two ways to ask. As a key owner: ``PORTEN_BASE_URL`` and ``PORTEN_API_KEY``
(what ``porten up`` prints) — the command calls ``GET /v1/usage`` on the hub
and shows the key's account. As an operator with the log's database at
hand: ``--account ID|EMAIL`` reads the log directly. Both print the same
report (``--json``: the API's document, see ``docs/usage.md``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

import aiohttp
import msgspec

from porten.adapters.postgres.usage import PostgresUsage
from porten.cli._common import (
    CommandError,
    data_options,
    json_option,
    print_json,
    run,
    settings_from,
)
from porten.cli._control import control
from porten.cli.admin_users import resolve_user
from porten.services.metering import BadPeriod, UsageReport, parse_period, usage_report


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``usage``."""
    p = sub.add_parser("usage", parents=[data_options(), json_option()],
                       help="usage and cost per key per day; earnings of your nodes")
    p.add_argument("--start", help="first UTC day, YYYY-MM-DD (default: 29 days before --end)")
    p.add_argument("--end", help="last UTC day, YYYY-MM-DD (default: today)")
    p.add_argument("--key", dest="key_id", help="only this key of the account (key id)")
    p.add_argument("--base-url", help="the hub's /v1 URL (env PORTEN_BASE_URL)")
    p.add_argument("--api-key", help="an API key of the account (env PORTEN_API_KEY)")
    p.add_argument("--account", help="operator: read the log directly for this account "
                                     "(id or email)")
    p.set_defaults(func=cmd_usage)


async def _from_hub(base_url: str, api_key: str, args: argparse.Namespace) -> UsageReport:
    params = {k: v for k, v in (("start", args.start), ("end", args.end),
                                ("key_id", args.key_id)) if v}
    headers = {"Authorization": f"Bearer {api_key}"}
    url = base_url.rstrip("/") + "/usage"
    try:
        async with aiohttp.ClientSession() as http, http.get(url, params=params,
                                                             headers=headers) as resp:
            body = await resp.read()
    except aiohttp.ClientError as exc:
        raise CommandError(f"cannot reach the hub at {base_url}: {exc}") from None
    if resp.status != 200:
        try:
            message = msgspec.json.decode(body)["error"]["message"]
        except (msgspec.DecodeError, KeyError, TypeError):
            message = body[:200].decode(errors="replace")
        raise CommandError(f"the hub answered {resp.status}: {message}")
    return msgspec.json.decode(body, type=UsageReport)


def cmd_usage(args: argparse.Namespace) -> int:
    """Print a usage report."""
    settings = settings_from(args)
    if args.account:
        try:
            first, last = parse_period(args.start, args.end, dt.datetime.now(dt.UTC).date())
        except BadPeriod as exc:
            raise CommandError(str(exc)) from None

        async def direct() -> UsageReport:
            async with control(settings) as ctl:
                account = resolve_user(ctl, args.account)
                return await usage_report(PostgresUsage(ctl.store), ctl.log.state,
                                          account.user_id, first, last, key_id=args.key_id)

        report = run(direct())
    else:
        base_url = args.base_url or os.environ.get("PORTEN_BASE_URL")
        api_key = args.api_key or os.environ.get("PORTEN_API_KEY")
        if not base_url or not api_key:
            raise CommandError("set PORTEN_BASE_URL and PORTEN_API_KEY (or --base-url and "
                               "--api-key), or give --account to read the log as an operator")
        report = run(_from_hub(base_url, api_key, args))
    if args.json:
        print_json(report)
    else:
        sys.stdout.write(render(report))
    return 0


def render(r: UsageReport) -> str:
    """The report as a table for people."""
    out = [f"usage of account {r.account_id}, {r.start} to {r.end} (UTC)\n"]
    out += [f"{x.date}  {x.key_id:<22} {x.model:<30} {x.requests:>7} req "
            f"{x.prompt_tokens:>10} in {x.completion_tokens:>10} out  ${x.cost_usd:.6f}\n"
            for x in r.data]
    out.append(f"total: {r.total.requests} requests, {r.total.prompt_tokens} input and "
               f"{r.total.completion_tokens} output tokens, ${r.total.usd:.6f}\n")
    if r.earnings:
        out.append("earnings of your nodes:\n")
        out += [f"{x.date}  {x.node_id:<22} {x.model:<30} {x.requests:>7} req  "
                f"${x.earned_usd:.6f}\n" for x in r.earnings]
        out.append(f"earned: ${r.earnings_total.usd:.6f}\n")
    return "".join(out)
