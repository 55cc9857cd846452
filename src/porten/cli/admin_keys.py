"""``porten admin keys …``: API keys and their policies, from the command line.

``create`` prints the new key's token once (only its keyed hash is kept).
Policy flags on ``create`` build the policy; on ``update`` they change only
what they name (``--any-region``, ``--any-model``, ``--no-rpm``,
``--no-tpm``, ``--no-budget`` lift a restriction). Every change is an
audited event with actor ``cli:<login>``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

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
from porten.cli.admin_users import resolve_user
from porten.domain.state import KeyState
from porten.domain.values import TRUST_ORDER, KeyPolicy
from porten.services.keys import KeyProblem, Keys


def register(asub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``admin keys …``."""
    parents = [data_options(), json_option()]
    keys = asub.add_parser("keys", help="API keys and their policies")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = ksub.add_parser("create", parents=parents, help="mint a key; prints it once")
    create.add_argument("--owner", required=True, help="the owning account (id or email)")
    create.add_argument("--name", default="", help="what the key is for")
    _policy_arguments(create)
    create.set_defaults(func=cmd_create)
    lst = ksub.add_parser("list", parents=parents, help="keys (never their tokens)")
    lst.add_argument("--owner", help="only this account's keys (id or email)")
    lst.set_defaults(func=cmd_list)
    update = ksub.add_parser("update", parents=parents, help="change a key's policy")
    update.add_argument("key", help="key id (key_…)")
    _policy_arguments(update)
    update.set_defaults(func=cmd_update)
    revoke = ksub.add_parser("revoke", parents=parents,
                             help="revoke a key: refused from the next request on")
    revoke.add_argument("key", help="key id (key_…)")
    revoke.add_argument("--reason", default="", help="recorded with the change")
    revoke.set_defaults(func=cmd_revoke)


def _policy_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("policy")
    g.add_argument("--region", action="append", dest="regions", metavar="REGION",
                   help="allow only nodes in this region (repeatable)")
    g.add_argument("--any-region", action="store_true", help="lift the region restriction")
    g.add_argument("--min-trust", choices=TRUST_ORDER, help="minimum node trust class")
    g.add_argument("--fleet", choices=("all", "own"),
                   help="all nodes, or only nodes the key's account owns")
    g.add_argument("--model", action="append", dest="models", metavar="MODEL",
                   help="allow only this model (repeatable)")
    g.add_argument("--any-model", action="store_true", help="lift the model restriction")
    g.add_argument("--rpm", type=int, help="requests per minute")
    g.add_argument("--no-rpm", action="store_true", help="no request rate limit")
    g.add_argument("--tpm", type=int, help="tokens per minute")
    g.add_argument("--no-tpm", action="store_true", help="no token rate limit")
    g.add_argument("--budget-usd", type=float, help="total spend allowed, in USD")
    g.add_argument("--no-budget", action="store_true", help="no spending budget")


def policy_from(args: argparse.Namespace, base: KeyPolicy) -> KeyPolicy:
    """``base`` with the policy flags in ``args`` applied."""
    changes: dict[str, Any] = {}
    if args.any_region:
        changes["regions"] = frozenset()
    if args.regions:
        changes["regions"] = frozenset(args.regions)
    if args.min_trust:
        changes["min_trust"] = args.min_trust
    if args.fleet:
        changes["fleet"] = args.fleet
    if args.any_model:
        changes["models"] = frozenset()
    if args.models:
        changes["models"] = frozenset(args.models)
    for name, flag, off in (("requests_per_min", "rpm", "no_rpm"),
                            ("tokens_per_min", "tpm", "no_tpm"),
                            ("budget_usd", "budget_usd", "no_budget")):
        if getattr(args, off):
            changes[name] = None
        if getattr(args, flag) is not None:
            changes[name] = getattr(args, flag)
    return msgspec.structs.replace(base, **changes)


def key_json(key: KeyState) -> dict[str, Any]:
    """A key for printing: never its token or hash."""
    p = key.policy
    return {
        "key_id": key.key_id, "owner_id": key.owner_id, "name": key.name, "prefix": key.prefix,
        "created_at": key.created_at, "revoked_at": key.revoked_at,
        "spent_usd": round(key.spent_usd, 9),
        "policy": {"regions": sorted(p.regions), "min_trust": p.min_trust, "fleet": p.fleet,
                   "models": sorted(p.models), "requests_per_min": p.requests_per_min,
                   "tokens_per_min": p.tokens_per_min, "budget_usd": p.budget_usd},
    }


def _describe(key: KeyState) -> str:
    p = key.policy
    limits = [f"regions={','.join(sorted(p.regions)) or 'any'}", f"min_trust={p.min_trust}",
              f"fleet={p.fleet}", f"models={','.join(sorted(p.models)) or 'any'}"]
    limits += [f"{n}={v}" for n, v in (("rpm", p.requests_per_min), ("tpm", p.tokens_per_min),
                                       ("budget_usd", p.budget_usd)) if v is not None]
    state = "revoked" if key.revoked_at is not None else "active"
    return f"{key.key_id}  {state:<7} {key.prefix:<16} {key.owner_id}  {key.name}  " + \
        " ".join(limits)


def _keys(ctl: CliControl) -> Keys:
    return Keys(log=ctl.log, server_secret=ctl.server_secret, clock=ctl.accounts.clock)


def cmd_create(args: argparse.Namespace) -> int:
    """Mint a key and print its token once."""
    settings = settings_from(args)

    async def go() -> tuple[str, KeyState]:
        async with control(settings) as ctl:
            owner = resolve_user(ctl, args.owner)
            try:
                minted = await _keys(ctl).create(
                    owner_id=owner.user_id, name=args.name,
                    policy=policy_from(args, KeyPolicy()), actor=cli_actor(), audit=True)
            except KeyProblem as exc:
                raise CommandError(str(exc)) from None
            return minted.token, minted.key

    token, key = run(go())
    if args.json:
        print_json({**key_json(key), "api_key": token})
        return 0
    sys.stdout.write(f"{token}\n")
    sys.stderr.write(f"{_describe(key)}\nThe key is shown once and cannot be shown again.\n")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print keys."""
    settings = settings_from(args)

    async def go() -> list[KeyState]:
        async with control(settings) as ctl:
            keys = _keys(ctl)
            if args.owner:
                return keys.owned_by(resolve_user(ctl, args.owner).user_id)
            return keys.all()

    keys = run(go())
    if args.json:
        print_jsonl(key_json(k) for k in keys)
    else:
        sys.stdout.writelines(_describe(k) + "\n" for k in keys)
    return 0


def _change(args: argparse.Namespace, revoke: bool) -> int:
    settings = settings_from(args)

    async def go() -> KeyState:
        async with control(settings) as ctl:
            keys = _keys(ctl)
            key = keys.get(args.key)
            if key is None:
                raise CommandError(f"no key with id {args.key!r} (see `porten admin keys list`)")
            try:
                if revoke:
                    return await keys.revoke(args.key, reason=args.reason, actor=cli_actor(),
                                             audit=True)
                return await keys.set_policy(args.key, policy_from(args, key.policy),
                                             actor=cli_actor(), audit=True)
            except KeyProblem as exc:
                raise CommandError(str(exc)) from None

    key = run(go())
    if args.json:
        print_json(key_json(key))
    else:
        sys.stderr.write(_describe(key) + "\n")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    """Change a key's policy (only what the flags name)."""
    return _change(args, revoke=False)


def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke a key."""
    return _change(args, revoke=True)
