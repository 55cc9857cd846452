"""Stand-ins for third-party programs the agent runs, as real executables on disk.

Each helper writes a small executable into a test's temporary directory: a
``llama-server`` (:mod:`llama_server` run by this interpreter), an
``nvidia-smi`` or a service manager (``systemctl``, ``launchctl``) that
records its arguments. They are real processes found the way the product
finds them — by path or on ``PATH`` — standing in for software that cannot
be installed here; none of Porten's own code is replaced.
"""

from __future__ import annotations

import hashlib
import os
import random
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

HERE = Path(__file__).parent


def executable(path: Path, script: str) -> Path:
    """Write ``script`` (a POSIX shell script body) to ``path``, executable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def llama_server(directory: Path, env: Mapping[str, str] | None = None) -> Path:
    """A ``llama-server`` stand-in in ``directory`` (its switches set by ``env``)."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (env or {}).items())
    command = f"exec {shlex.quote(sys.executable)} {shlex.quote(str(HERE / 'llama_server.py'))}"
    return executable(directory / "llama-server", f'{exports}{command} "$@"\n')


def recorder(directory: Path, name: str, output: str = "", status: int = 0) -> Path:
    """A ``name`` command that appends its arguments to ``<directory>/<name>.calls``."""
    calls = directory / f"{name}.calls"
    script = (
        f'echo "$@" >> {shlex.quote(str(calls))}\n'
        f"printf %s {shlex.quote(output)}\n"
        f"exit {status}\n"
    )
    return executable(directory / name, script)


def calls(directory: Path, name: str) -> list[str]:
    """The argument lines a :func:`recorder` saw, in order."""
    path = directory / f"{name}.calls"
    return path.read_text().splitlines() if path.exists() else []


def path_with(directory: Path) -> str:
    """``PATH`` with ``directory`` first."""
    return f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"


def gguf(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that start like a GGUF file (random after the magic)."""
    rng = random.Random(seed)
    return b"GGUF" + rng.randbytes(max(0, size - 4))


def sha256(data: bytes) -> str:
    """The hex digest the catalog would carry for ``data``."""
    return hashlib.sha256(data).hexdigest()
