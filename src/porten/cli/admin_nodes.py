"""``porten admin nodes …`` and ``porten admin catalog price``: operator-set node and model facts.

A node's region and trust class are the operator's word, never the agent's:
this is where they are set (and, at enrolment, from the owning account's
defaults: ``porten admin users node-defaults``). Every change is an audited
event with actor ``cli:<login>``.
"""

from __future__ import annotations

import argparse
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
from porten.cli._control import cli_actor, control
from porten.domain.state import CatalogModel, NodeState
from porten.domain.values import TRUST_ORDER
from porten.services.admin import Admin, AdminProblem


def register(asub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``admin nodes …``."""
    parents = [data_options(), json_option()]
    nodes = asub.add_parser("nodes", help="nodes: region and trust class")
    nsub = nodes.add_subparsers(dest="nodes_command", required=True, metavar="COMMAND")
    lst = nsub.add_parser("list", parents=parents, help="every enrolled node")
    lst.set_defaults(func=cmd_list)
    set_ = nsub.add_parser("set", parents=parents, help="set a node's region and/or trust class")
    set_.add_argument("node", help="node id")
    set_.add_argument("--region", help="e.g. eu ('' for none)")
    set_.add_argument("--trust-class", choices=TRUST_ORDER)
    set_.set_defaults(func=cmd_set)


def register_price(csub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``admin catalog price``."""
    price = csub.add_parser("price", parents=[data_options(), json_option()],
                            help="set a model's prices (USD per million tokens)")
    price.add_argument("model", help="canonical model id")
    price.add_argument("--input", type=float, dest="price_in", help="per million input tokens")
    price.add_argument("--output", type=float, dest="price_out",
                       help="per million output tokens")
    price.set_defaults(func=cmd_price)


def node_json(n: NodeState) -> dict[str, Any]:
    """A node for printing."""
    return {"node_id": n.node_id, "owner_id": n.owner_id, "name": n.name, "region": n.region,
            "trust_class": n.trust_class, "online": n.online,
            "models_ready": sorted(n.ready_models())}


def cmd_list(args: argparse.Namespace) -> int:
    """Print every node."""
    settings = settings_from(args)

    async def go() -> list[NodeState]:
        async with control(settings) as ctl:
            return Admin(log=ctl.log, clock=ctl.accounts.clock).nodes()

    nodes = run(go())
    if args.json:
        print_jsonl(node_json(n) for n in nodes)
        return 0
    for n in nodes:
        sys.stdout.write(f"{n.node_id:<16} {'online ' if n.online else 'offline'} "
                         f"region={n.region or '-':<8} trust={n.trust_class:<12} "
                         f"owner={n.owner_id}\n")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    """Set a node's region and/or trust class."""
    settings = settings_from(args)

    async def go() -> NodeState:
        async with control(settings) as ctl:
            try:
                return await Admin(log=ctl.log, clock=ctl.accounts.clock).set_node(
                    args.node, region=args.region, trust_class=args.trust_class,
                    actor=cli_actor())
            except AdminProblem as exc:
                raise CommandError(str(exc)) from None

    node = run(go())
    if args.json:
        print_json(node_json(node))
    else:
        sys.stderr.write(f"{node.node_id}: region={node.region or '-'} "
                         f"trust={node.trust_class}\n")
    return 0


def cmd_price(args: argparse.Namespace) -> int:
    """Set a model's prices."""
    settings = settings_from(args)

    async def go() -> CatalogModel:
        async with control(settings) as ctl:
            try:
                return await Admin(log=ctl.log, clock=ctl.accounts.clock).set_prices(
                    args.model, price_in_per_m=args.price_in, price_out_per_m=args.price_out,
                    actor=cli_actor())
            except AdminProblem as exc:
                raise CommandError(str(exc)) from None

    c = run(go())
    if args.json:
        print_json({"model": c.entry.id, "price_in_per_m": c.entry.price_in_per_m,
                    "price_out_per_m": c.entry.price_out_per_m})
    else:
        sys.stderr.write(f"{c.entry.id}: ${c.entry.price_in_per_m:g} in, "
                         f"${c.entry.price_out_per_m:g} out per million tokens\n")
    return 0
