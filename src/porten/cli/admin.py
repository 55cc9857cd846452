"""``porten admin catalog …``: the operator's curated catalog, changed only through events.

These commands write to the event log directly, so they need the log's
database (the same ``--data-dir``/``--database-url`` as the hub; a running
hub picks the change up within moments). Every change is recorded twice
over: the catalog event itself and an ``admin_action_taken`` naming who
(``cli:<login>``) — the audit trail ``porten events list --type admin``
shows.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path

import msgspec

from porten.bootstrap import open_event_store
from porten.cli import admin_users
from porten.cli._common import (
    CommandError,
    data_options,
    json_option,
    print_json,
    run,
    settings_from,
)
from porten.domain import events as ev
from porten.domain.catalog import DEFAULT_CATALOG
from porten.domain.values import CatalogEntry
from porten.services.projection import state_at


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``admin`` and its ``catalog`` commands."""
    admin = sub.add_parser("admin", help="operator commands (users, keys, nodes, catalog)")
    asub = admin.add_subparsers(dest="admin_command", required=True, metavar="AREA")
    admin_users.register(asub)
    catalog = asub.add_parser("catalog", help="the curated model catalog")
    csub = catalog.add_subparsers(dest="catalog_command", required=True, metavar="COMMAND")
    parents = [data_options(), json_option()]

    lst = csub.add_parser("list", parents=parents, help="every known model and whether offered")
    lst.set_defaults(func=cmd_list)
    for name, helptext in (("enable", "offer a known model"), ("disable", "withdraw a model")):
        p = csub.add_parser(name, parents=parents, help=helptext)
        p.add_argument("model", help="canonical model id")
        p.add_argument("--reason", default="", help="recorded with the change")
        p.set_defaults(func=cmd_enable if name == "enable" else cmd_disable)
    add = csub.add_parser("add", parents=parents,
                          help="offer a new or changed entry from a JSON file")
    add.add_argument("file", type=Path, help="a JSON CatalogEntry (id, vram_mb, disk_mb, …)")
    add.set_defaults(func=cmd_add)
    seed = csub.add_parser("seed", parents=parents,
                           help="offer the default catalog's models not yet known")
    seed.set_defaults(func=cmd_seed)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def _append(args: argparse.Namespace, events: list[ev.AnyEvent]) -> int:
    settings = settings_from(args)

    async def go() -> int:
        async with open_event_store(settings) as store:
            return await store.append(events)

    return run(go())


def _state(args: argparse.Namespace) -> dict[str, tuple[CatalogEntry, bool]]:
    settings = settings_from(args)

    async def go() -> dict[str, tuple[CatalogEntry, bool]]:
        async with open_event_store(settings) as store:
            state = await state_at(store)
        return {m: (c.entry, c.offered) for m, c in sorted(state.catalog.items())}

    return run(go())


def cmd_list(args: argparse.Namespace) -> int:
    """Print the catalog."""
    catalog = _state(args)
    if args.json:
        print_json([{"offered": offered, **msgspec.to_builtins(entry)}
                    for entry, offered in catalog.values()])
        return 0
    for entry, offered in catalog.values():
        caps = ",".join(sorted(entry.capabilities))
        sys.stdout.write(
            f"{'offered ' if offered else 'disabled'}  {entry.id:<32} {entry.type:<9} "
            f"ctx={entry.ctx:<7} vram={entry.vram_mb} MB  disk={entry.disk_mb} MB  {caps}\n"
        )
    return 0


def _change(args: argparse.Namespace, action: str, event: ev.AnyEvent, target: str) -> int:
    now = time.time()
    actor = _actor()
    position = _append(args, [
        ev.AdminActionTaken(at=now, actor=actor, action=action, target=target,
                            detail={"reason": getattr(args, "reason", "")}),
        event,
    ])
    if args.json:
        print_json({"action": action, "target": target, "position": position})
    else:
        sys.stderr.write(f"{action} {target} (log position {position})\n")
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    """Offer a model the catalog already knows."""
    known = _state(args).get(args.model)
    if known is None:
        raise CommandError(
            f"{args.model!r} is not in the catalog; add it with `porten admin catalog add FILE`"
        )
    event = ev.ModelOffered(at=time.time(), actor=_actor(), model=known[0])
    return _change(args, "catalog.enable", event, args.model)


def cmd_disable(args: argparse.Namespace) -> int:
    """Withdraw a model: new requests for it get model_not_found."""
    if args.model not in _state(args):
        raise CommandError(f"{args.model!r} is not in the catalog")
    event = ev.ModelWithdrawn(at=time.time(), actor=_actor(), model_id=args.model,
                              reason=args.reason)
    return _change(args, "catalog.disable", event, args.model)


def cmd_add(args: argparse.Namespace) -> int:
    """Offer (or update) an entry read from a JSON file."""
    try:
        entry = msgspec.json.decode(args.file.read_bytes(), type=CatalogEntry)
    except (OSError, msgspec.DecodeError) as exc:
        raise CommandError(f"{args.file}: not a catalog entry: {exc}") from None
    if entry.vram_mb <= 0 or entry.disk_mb <= 0:
        raise CommandError(f"{args.file}: vram_mb and disk_mb must be positive")
    event = ev.ModelOffered(at=time.time(), actor=_actor(), model=entry)
    return _change(args, "catalog.add", event, entry.id)


def cmd_seed(args: argparse.Namespace) -> int:
    """Offer every default-catalog model the log does not know yet."""
    known = _state(args)
    now, actor = time.time(), _actor()
    events: list[ev.AnyEvent] = [
        ev.ModelOffered(at=now, actor=actor, model=e) for e in DEFAULT_CATALOG if e.id not in known
    ]
    if events:
        events.insert(0, ev.AdminActionTaken(at=now, actor=actor, action="catalog.seed",
                                             target=",".join(e.model.id for e in events
                                                             if isinstance(e, ev.ModelOffered))))
        _append(args, events)
    if args.json:
        print_json({"offered": len(events) - 1 if events else 0})
    else:
        sys.stderr.write(f"offered {max(len(events) - 1, 0)} default models\n")
    return 0
