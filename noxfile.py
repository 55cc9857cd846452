"""Nox sessions: ``tests`` (what CI runs), ``lint`` (ruff + mypy --strict) and ``bench``.

Sessions use the interpreter nox itself runs under, so the README's commands
work with whatever Python 3.11+ the machine has.
"""

from __future__ import annotations

import glob
import os
import shutil

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite against real Postgres, Redis and sockets."""
    session.install("-e", ".[test]")
    _system_chromium(session)
    session.run("pytest", *session.posargs)


def _system_chromium(session: nox.Session) -> None:
    """Make Debian's Chromium available to the portal's browser tests (never `playwright install`).

    As root with apt-get, a missing browser is installed and the browser tests
    are then required (``PORTEN_REQUIRE_BROWSER=1``: they fail rather than skip).
    Elsewhere they skip with a loud reason.
    """
    if os.environ.get("PORTEN_CHROMIUM") or shutil.which("chromium"):
        session.env["PORTEN_REQUIRE_BROWSER"] = "1"
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", "-q", external=True, env=env)
        session.run("apt-get", "install", "-y", "-q", "chromium", external=True, env=env)
        session.env["PORTEN_REQUIRE_BROWSER"] = "1"
        return
    session.warn(
        "BROWSER TESTS WILL BE SKIPPED: no `chromium` on PATH and not root to apt-get it. "
        "Install Debian's chromium (or set PORTEN_CHROMIUM) to run them."
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on everything, mypy --strict on src/."""
    session.install("-e", ".[lint,test]")
    session.run("ruff", "check", "src", "tests", "bench", "noxfile.py")
    session.run("mypy", "src")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks; each writes JSON under bench/results/ with its goals and ratios."""
    session.install("-e", ".[test]")
    scripts = sorted(glob.glob("bench/bench_*.py"))
    only = session.posargs
    for script in scripts:
        name = script.removeprefix("bench/bench_").removesuffix(".py")
        if only and name not in only:
            continue
        session.run("python", script, "--out", f"bench/results/{name}.json")
