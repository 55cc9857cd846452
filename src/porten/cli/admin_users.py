"""``porten admin create-user`` and ``porten admin users …``: accounts and the operator role.

``create-user --admin`` bootstraps the first operator. The credentials it
prints — the password (generated unless one comes on stdin) and, for an
operator, an API key for the admin API — are shown this once and never
again: only their hashes are kept. Every change is an audited event
(``admin_action_taken`` with actor ``cli:<login>``).
"""

from __future__ import annotations

import argparse
import secrets
import sys
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
from porten.cli._control import CliControl, cli_actor, control
from porten.domain.values import TRUST_ORDER
from porten.services.accounts import Account, AccountError
from porten.services.keys import KeyProblem, Keys


def register(asub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``admin create-user`` and ``admin users …``."""
    parents = [data_options(), json_option()]
    top = asub.add_parser("create-user", parents=parents,
                          help="open an account and print its credentials once")
    _create_arguments(top)
    users = asub.add_parser("users", help="accounts and the operator role")
    usub = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")
    create = usub.add_parser("create", parents=parents,
                             help="open an account and print its credentials once")
    _create_arguments(create)
    lst = usub.add_parser("list", parents=parents, help="every account")
    lst.set_defaults(func=cmd_list)
    role = usub.add_parser("set-role", parents=parents, help="make an account operator or user")
    role.add_argument("user", help="account id or email")
    role.add_argument("role", choices=("user", "operator"))
    role.set_defaults(func=cmd_set_role)
    disable = usub.add_parser("disable", parents=parents,
                              help="stop an account signing in; its keys stop working")
    disable.add_argument("user", help="account id or email")
    disable.add_argument("--reason", default="", help="recorded with the change")
    disable.set_defaults(func=cmd_disable)
    enable = usub.add_parser("enable", parents=parents, help="undo disable")
    enable.add_argument("user", help="account id or email")
    enable.set_defaults(func=cmd_enable)
    defaults = usub.add_parser("node-defaults", parents=parents,
                               help="region and trust class of the account's new nodes")
    defaults.add_argument("user", help="account id or email")
    defaults.add_argument("--region", required=True, help="e.g. eu (empty: none)")
    defaults.add_argument("--trust-class", required=True, choices=TRUST_ORDER)
    defaults.set_defaults(func=cmd_node_defaults)


def _create_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("email", help="the account's email (its sign-in name)")
    p.add_argument("--admin", action="store_true", help="make it an operator")
    p.add_argument("--name", default="", help="display name")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from stdin (default: generate one and print it)")
    p.add_argument("--no-key", action="store_true",
                   help="do not mint an API key for the new operator")
    p.set_defaults(func=cmd_create)


def _account_json(a: Account) -> dict[str, Any]:
    return {
        "user_id": a.user_id, "email": a.email, "name": a.name, "role": a.role,
        "disabled": a.disabled, "created_at": a.created_at, "node_region": a.node_region,
        "node_trust_class": a.node_trust_class,
    }


def resolve_user(ctl: CliControl, ref: str) -> Account:
    """The account ``ref`` names (an id or an email), or a :class:`CommandError`."""
    account = ctl.accounts.get(ref) or ctl.accounts.by_email(ref)
    if account is None:
        raise CommandError(f"no account {ref!r} (give its id or email; see `porten admin users "
                           "list`)")
    return account


def cmd_create(args: argparse.Namespace) -> int:
    """Open an account; print its password (and an operator's API key) once."""
    settings = settings_from(args)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        generated = False
    else:
        password = secrets.token_urlsafe(18)
        generated = True

    async def go() -> dict[str, Any]:
        async with control(settings) as ctl:
            actor = cli_actor()
            try:
                account = await ctl.accounts.create_user(
                    args.email, password, name=args.name, operator=args.admin, actor=actor,
                    audit=True,
                )
                out = _account_json(account)
                if args.admin and not args.no_key:
                    keys = Keys(log=ctl.log, server_secret=ctl.server_secret,
                                clock=ctl.accounts.clock)
                    minted = await keys.create(owner_id=account.user_id, name="operator",
                                               actor=actor, audit=True)
                    out["api_key"] = minted.token
                    out["key_id"] = minted.key.key_id
            except (AccountError, KeyProblem) as exc:
                raise CommandError(str(exc)) from None
            return out

    out = run(go())
    if generated:
        out["password"] = password
    if args.json:
        print_json(out)
        return 0
    sys.stdout.write(f"account {out['user_id']} ({out['email']}, {out['role']})\n")
    if generated:
        sys.stdout.write(f"password: {password}\n")
    if "api_key" in out:
        sys.stdout.write(f"api key:  {out['api_key']}   (id {out['key_id']})\n")
    sys.stderr.write("These credentials are shown once and cannot be shown again.\n")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print every account."""
    settings = settings_from(args)

    async def go() -> list[Account]:
        async with control(settings) as ctl:
            return ctl.accounts.all()

    accounts = run(go())
    if args.json:
        print_jsonl(_account_json(a) for a in accounts)
        return 0
    for a in accounts:
        state = "disabled" if a.disabled else "active"
        sys.stdout.write(f"{a.user_id}  {a.role:<8} {state:<8} {a.email}  {a.name}\n")
    return 0


def _change(args: argparse.Namespace, verb: str) -> int:
    settings = settings_from(args)

    async def go() -> Account:
        async with control(settings) as ctl:
            account = resolve_user(ctl, args.user)
            actor, uid = cli_actor(), account.user_id
            try:
                match verb:
                    case "role":
                        return await ctl.accounts.set_role(uid, args.role, actor=actor,
                                                           audit=True)
                    case "disable":
                        return await ctl.accounts.disable(uid, reason=args.reason, actor=actor,
                                                          audit=True)
                    case "enable":
                        return await ctl.accounts.enable(uid, actor=actor, audit=True)
                    case _:
                        return await ctl.accounts.set_node_defaults(
                            uid, region=args.region, trust_class=args.trust_class, actor=actor,
                            audit=True,
                        )
            except AccountError as exc:
                raise CommandError(str(exc)) from None

    account = run(go())
    if args.json:
        print_json(_account_json(account))
    else:
        sys.stderr.write(f"{account.user_id} ({account.email}): {account.role}, "
                         f"{'disabled' if account.disabled else 'active'}, new nodes in "
                         f"{account.node_region or '(no region)'} as "
                         f"{account.node_trust_class}\n")
    return 0


def cmd_set_role(args: argparse.Namespace) -> int:
    """Make an account an operator or a plain user."""
    return _change(args, "role")


def cmd_disable(args: argparse.Namespace) -> int:
    """Disable an account."""
    return _change(args, "disable")


def cmd_enable(args: argparse.Namespace) -> int:
    """Enable an account."""
    return _change(args, "enable")


def cmd_node_defaults(args: argparse.Namespace) -> int:
    """Set the region and trust class of an account's newly enrolled nodes."""
    return _change(args, "defaults")
