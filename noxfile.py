"""Nox sessions: ``tests`` (what CI runs), ``lint`` (ruff + mypy --strict) and ``bench``.

Sessions use the interpreter nox itself runs under, so the README's commands
work with whatever Python 3.11+ the machine has.
"""

from __future__ import annotations

import glob

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite against real Postgres, Redis and sockets."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


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
