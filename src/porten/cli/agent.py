"""``porten agent run`` (a node's agent) and ``porten engine sim`` (the simulator as a server).

The agent reads its settings from ``PORTEN_*`` variables (that is what a
service unit bakes in); flags override them. The node credential is taken
only from the environment (``PORTEN_NODE_CREDENTIAL``), never from a flag,
so it does not show in ``ps``.
"""

from __future__ import annotations

import argparse
import os

from porten.cli import agent_login
from porten.cli._common import data_options, run, settings_from


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``agent`` and ``engine`` to the command line."""
    agent = sub.add_parser("agent", help="run this machine as a node of a hub")
    asub = agent.add_subparsers(dest="agent_command", required=True, metavar="COMMAND")
    run_p = asub.add_parser("run", parents=[data_options()],
                            help="connect to the hub and serve until interrupted")
    run_p.add_argument("--hub-url", help="the hub (env PORTEN_HUB_URL)")
    run_p.add_argument("--engine", help="sim or openai (env PORTEN_ENGINE)")
    run_p.add_argument("--engine-url", help="the engine's base URL (env PORTEN_ENGINE_URL)")
    run_p.add_argument(
        "--engine-models", help="comma-separated allow-list (env PORTEN_ENGINE_MODELS)"
    )
    run_p.add_argument("--vram-budget-mb", type=int, help="env PORTEN_VRAM_BUDGET_MB")
    run_p.add_argument("--disk-budget-mb", type=int, help="env PORTEN_AUTO_DOWNLOAD_MB")
    run_p.set_defaults(func=cmd_agent_run)
    agent_login.register(asub)

    engine = sub.add_parser("engine", help="run an engine on its own")
    esub = engine.add_subparsers(dest="engine_command", required=True, metavar="ENGINE")
    sim = esub.add_parser("sim", parents=[data_options()],
                          help="the deterministic simulator as an OpenAI-compatible server")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8081)
    sim.add_argument("--models", default="", help="comma-separated catalog ids (default: all)")
    sim.add_argument("--ttft-ms", type=float, default=50.0)
    sim.add_argument("--tokens-per-s", type=float, default=200.0)
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=cmd_engine_sim)


def cmd_agent_run(args: argparse.Namespace) -> int:
    """Run the agent in the foreground (what ``porten agent service`` installs)."""
    from porten.agent.runner import run_agent
    from porten.agent.settings import AgentSettings

    hub = settings_from(args)  # the shared flags: data dir, log level (and logging set up)
    models = None
    if args.engine_models is not None:
        models = tuple(m.strip() for m in args.engine_models.split(",") if m.strip())
    hub_url, credential = args.hub_url, None
    stored = agent_login.load_stored_node(hub.data_dir)  # from `porten agent login|enroll`
    if stored is not None and not os.environ.get("PORTEN_NODE_CREDENTIAL"):
        credential = stored.credential
        if not hub_url and not os.environ.get("PORTEN_HUB_URL"):
            hub_url = stored.hub_url
    settings = AgentSettings.from_env(
        hub_url=hub_url, credential=credential, engine=args.engine, engine_url=args.engine_url,
        engine_models=models, vram_budget_mb=args.vram_budget_mb,
        disk_budget_mb=args.disk_budget_mb, data_dir=hub.data_dir,
    )
    run(run_agent(settings))
    return 0


def cmd_engine_sim(args: argparse.Namespace) -> int:
    """Serve the sim engine over the OpenAI HTTP API until interrupted."""
    from porten.agent.engines.sim import SimModel, SimProfile
    from porten.agent.engines.sim_server import run as run_sim
    from porten.domain.catalog import DEFAULT_CATALOG

    settings_from(args)  # logging, from the shared flags and environment
    wanted = {m.strip() for m in args.models.split(",") if m.strip()}
    models = [SimModel.from_catalog(e) for e in DEFAULT_CATALOG if not wanted or e.id in wanted]
    models += [SimModel(id=m) for m in sorted(wanted - {e.id for e in DEFAULT_CATALOG})]
    profile = SimProfile(ttft_ms=args.ttft_ms, tokens_per_s=args.tokens_per_s, seed=args.seed)
    run_sim(args.host, args.port, models, profile)
    return 0
