"""Every ``porten`` command says where the data is the same way."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from porten.cli import build_parser

#: Commands that print data (and so must take --json).
PRINTS_DATA = {
    "events tail",
    "events list",
    "events state",
    "events export",
    "events import",
    "events explain",
    "admin catalog list",
    "admin catalog enable",
    "admin catalog disable",
    "admin catalog add",
    "admin catalog seed",
    "admin create-user",
    "admin users create",
    "admin users list",
    "admin users set-role",
    "admin users disable",
    "admin users enable",
    "admin users node-defaults",
    "admin keys create",
    "admin keys list",
    "admin keys update",
    "admin keys revoke",
    "admin nodes list",
    "admin nodes set",
    "admin catalog price",
    "usage",
    "sim replay",
    "agent login",
    "admin enrol-token create",
    "admin enrol-token list",
    "admin enrol-token revoke",
    "agent enroll",
    "agent service status",
    "up",
}


def leaves(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(command path, parser) for every command that runs something."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix.strip(), parser
        return
    for name, child in subs[0].choices.items():
        yield from leaves(child, f"{prefix} {name}")


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


COMMANDS = list(leaves(build_parser()))


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_takes_data_dir_and_database_url(
    path: str, parser: argparse.ArgumentParser
) -> None:
    """--data-dir and --database-url are accepted everywhere, so scripts never guess."""
    assert {"--data-dir", "--database-url"} <= options(parser), path


@pytest.mark.parametrize("path", sorted(PRINTS_DATA))
def test_commands_that_print_data_take_json(path: str) -> None:
    """Every command that prints data can print it as JSON."""
    parser = dict(COMMANDS)[path]
    assert "--json" in options(parser), path
