"""``porten admin enrol-token create|list|revoke``: single-use node enrolment tokens for an owner.

For scripted fleets (cloud-init, many identical machines): the operator
mints a token for the owning account, bakes ``porten agent enroll <token>``
into the machine's setup, and the machine becomes that account's node. The
token is printed once; only its keyed hash is kept, and it enrols one node
(a second use is refused). Owners mint their own under **Earn → Add node**.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from porten.cli._common import (
    CommandError,
    data_options,
    json_option,
    print_json,
    print_jsonl,
    run,
    settings_from,
)
from porten.cli._control import cli_actor, control
from porten.cli.admin_users import resolve_user
from porten.domain.state import EnrolmentToken
from porten.services.enrolment_tokens import EnrolmentTokens, TokenProblem


def register(asub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``admin enrol-token …``."""
    parents = [data_options(), json_option()]
    top = asub.add_parser("enrol-token", help="single-use tokens that enrol a node for an owner")
    tsub = top.add_subparsers(dest="enrol_token_command", required=True, metavar="COMMAND")
    create = tsub.add_parser("create", parents=parents, help="mint a token (printed once)")
    create.add_argument("user", help="the owning account (id or email)")
    create.add_argument("--name", default="", help="a label, e.g. the machine or rack")
    create.add_argument("--ttl-hours", type=float, default=24.0,
                        help="how long it stays valid (default 24, at most 720)")
    create.set_defaults(func=cmd_create)
    lst = tsub.add_parser("list", parents=parents, help="an account's tokens")
    lst.add_argument("user", help="account id or email")
    lst.set_defaults(func=cmd_list)
    revoke = tsub.add_parser("revoke", parents=parents, help="withdraw an unused token")
    revoke.add_argument("user", help="account id or email")
    revoke.add_argument("token_id", help="the token's id (etok_…), from `list`")
    revoke.set_defaults(func=cmd_revoke)


def _json(t: EnrolmentToken) -> dict[str, Any]:
    return {"token_id": t.token_id, "owner_id": t.owner_id, "prefix": t.prefix, "name": t.name,
            "created_at": t.created_at, "expires_at": t.expires_at, "used_at": t.used_at,
            "node_id": t.node_id, "revoked_at": t.revoked_at}


def cmd_create(args: argparse.Namespace) -> int:
    """Mint a token for the account; print it once."""
    settings = settings_from(args)

    async def go() -> tuple[str, EnrolmentToken]:
        async with control(settings) as ctl:
            owner = resolve_user(ctl, args.user)
            tokens = EnrolmentTokens(log=ctl.log, accounts=ctl.accounts,
                                     server_secret=ctl.server_secret, clock=time.time)
            try:
                minted = await tokens.mint(owner.user_id, name=args.name,
                                           ttl_s=args.ttl_hours * 3600, actor=cli_actor())
            except TokenProblem as exc:
                raise CommandError(str(exc)) from None
            return minted.token, minted.state

    token, state = run(go())
    if args.json:
        print_json({**_json(state), "token": token})
    else:
        sys.stdout.write(f"{token}\n")
        sys.stderr.write(f"enrolment token {state.token_id} for {state.owner_id}: shown once, "
                         "enrols one node. On the machine: porten agent enroll <token> "
                         "--hub-url <hub>\n")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """An account's tokens (never the tokens themselves)."""
    settings = settings_from(args)

    async def go() -> list[EnrolmentToken]:
        async with control(settings) as ctl:
            owner = resolve_user(ctl, args.user)
            return EnrolmentTokens(log=ctl.log, accounts=ctl.accounts,
                                   server_secret=ctl.server_secret,
                                   clock=time.time).owned_by(owner.user_id)

    found = run(go())
    if args.json:
        print_jsonl(_json(t) for t in found)
        return 0
    for t in found:
        status = ("used by " + t.node_id if t.used_at is not None
                  else "revoked" if t.revoked_at is not None
                  else "expired" if time.time() >= t.expires_at else "unused")
        sys.stdout.write(f"{t.token_id}  {t.prefix:<18} {status:<24} {t.name}\n")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """Withdraw an unused token."""
    settings = settings_from(args)

    async def go() -> EnrolmentToken:
        async with control(settings) as ctl:
            owner = resolve_user(ctl, args.user)
            tokens = EnrolmentTokens(log=ctl.log, accounts=ctl.accounts,
                                     server_secret=ctl.server_secret, clock=time.time)
            try:
                return await tokens.revoke(owner.user_id, args.token_id, actor=cli_actor())
            except TokenProblem as exc:
                raise CommandError(str(exc)) from None

    state = run(go())
    if args.json:
        print_json(_json(state))
    else:
        sys.stderr.write(f"revoked {state.token_id}\n")
    return 0
