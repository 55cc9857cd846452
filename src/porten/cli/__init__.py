"""The ``porten`` command: one entry point, one subcommand per job.

Every failure a user can act on (a busy data dir, an unreachable database,
a migration that failed, an event this version cannot read) ends as one
line on stderr naming the problem and what to do, and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import msgspec

from porten import __version__
from porten.cli import admin, agent, events, hub, sim, usage
from porten.cli._common import CommandError


def build_parser() -> argparse.ArgumentParser:
    """The full command line."""
    parser = argparse.ArgumentParser(
        prog="porten",
        description="Porten: an OpenAI-compatible inference hub for a fleet of GPU nodes.",
    )
    parser.add_argument("--version", action="version", version=f"porten {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    hub.register(sub)
    events.register(sub)
    agent.register(sub)
    sim.register(sub)
    admin.register(sub)
    usage.register(sub)
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    from porten.adapters.data_dir import DataDirInUse
    from porten.adapters.postgres.connect import DatabaseUnreachable
    from porten.adapters.postgres.embedded import EmbeddedPostgresError
    from porten.adapters.postgres.migrations import MigrationFailed
    from porten.config import ConfigError
    from porten.domain.codec import UndecodableEvent
    from porten.domain.ports import WrongExpectedVersion

    return (
        CommandError,
        ConfigError,
        DataDirInUse,
        DatabaseUnreachable,
        EmbeddedPostgresError,
        MigrationFailed,
        UndecodableEvent,
        WrongExpectedVersion,
        msgspec.DecodeError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``porten`` with ``argv``; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except _known_errors() as exc:
        message = " ".join(str(exc).split())  # one line, whatever the driver said
        sys.stderr.write(f"porten: error: {message}\n")
        return 1
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
