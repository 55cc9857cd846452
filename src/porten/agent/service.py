"""``porten agent service``: run the agent at login, restarted if it dies, with its env baked in.

Linux gets a ``systemd --user`` unit (``~/.config/systemd/user/porten-agent.service``)
whose ``Environment=`` lines carry the agent's ``PORTEN_*`` settings and
``PATH`` (so ``llama-server`` and ``nvidia-smi`` are found as in the shell
that installed it); the node credential goes to an ``EnvironmentFile`` of
mode 0600 instead, so it never shows in ``systemctl show``. A user unit
stops at logout unless lingering is on, hence the ``loginctl enable-linger``
hint. macOS gets a launchd agent (``~/Library/LaunchAgents/dev.porten.agent.plist``,
mode 0600 since it holds the credential) loaded with ``launchctl bootstrap``.

Rendering is pure (:func:`systemd_unit`, :func:`launchd_plist`); installing
writes the files and then asks the service manager, through ``run``, so a
machine without systemd (a container, CI) still gets the files and a clear
message instead of a crash.
"""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final, Literal

import attrs

Manager = Literal["systemd", "launchd"]
UNIT: Final = "porten-agent.service"
LABEL: Final = "dev.porten.agent"
SECRET_VARS: Final = frozenset({"PORTEN_NODE_CREDENTIAL"})
#: Variables besides ``PORTEN_*`` the service needs to behave as the shell did.
CARRIED_VARS: Final = ("PATH", "LANG")
LINGER_HINT: Final = (
    "a user service stops when you log out; to keep this node serving, run once: "
    "loginctl enable-linger {user}"
)

#: Runs a service-manager command; returns (exit status, combined output).
Run = Callable[[Sequence[str]], tuple[int, str]]


class ServiceError(Exception):
    """The service could not be installed or removed; the message says why and what to do."""


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """Run ``argv``; ``(127, why)`` when the command does not exist."""
    try:
        done = subprocess.run(  # noqa: S603 (argv is built here from constants and paths)
            list(argv), capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, str(exc)
    return done.returncode, (done.stdout + done.stderr).strip()


def default_manager(platform: str = sys.platform) -> Manager:
    """systemd on Linux, launchd on macOS; :class:`ServiceError` elsewhere."""
    if platform.startswith("linux"):
        return "systemd"
    if platform == "darwin":
        return "launchd"
    raise ServiceError(f"no service manager is supported on {platform}; run porten agent run")


def service_env(environ: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment baked into the service: ``PORTEN_*``, ``PATH``, ``LANG``, then overrides."""
    env = {k: v for k, v in environ.items() if k.startswith("PORTEN_") or k in CARRIED_VARS}
    env.update({k: v for k, v in overrides.items() if v})
    return dict(sorted(env.items()))


@attrs.frozen
class ServiceFiles:
    """Where a manager's files go under ``home``."""

    manager: Manager
    home: Path
    #: ``$XDG_CONFIG_HOME`` (default ``~/.config``), where systemd looks for user units.
    config_home: Path | None = None

    @property
    def definition(self) -> Path:
        """The unit or plist file."""
        if self.manager == "systemd":
            config = self.config_home or self.home / ".config"
            return config / "systemd" / "user" / UNIT
        return self.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"

    @property
    def secrets(self) -> Path:
        """The systemd ``EnvironmentFile`` holding the credential."""
        return self.definition.with_name("porten-agent.env")

    @property
    def log(self) -> Path:
        """Where launchd writes the agent's output (systemd uses the journal)."""
        return self.home / "Library" / "Logs" / "porten-agent.log"


def _systemd_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return escaped.replace("%", "%%").replace("$", "$$")


def systemd_unit(command: Sequence[str], env: Mapping[str, str], secrets: Path) -> str:
    """The ``systemd --user`` unit text (secret variables are left to ``secrets``)."""
    lines = [
        "[Unit]",
        "Description=Porten node agent (serves this machine's models to a Porten hub)",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        *(f'Environment="{k}={_systemd_quote(v)}"' for k, v in env.items()
          if k not in SECRET_VARS),
        f"EnvironmentFile=-{secrets}",
        "ExecStart=" + " ".join(_systemd_quote(part) for part in command),
        "Restart=always",
        "RestartSec=5",
        "KillMode=control-group",
        "TimeoutStopSec=30",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def secrets_file(env: Mapping[str, str]) -> str:
    """The ``EnvironmentFile`` text: one ``KEY=value`` per secret variable."""
    return "".join(f"{k}={v}\n" for k, v in env.items() if k in SECRET_VARS)


def launchd_plist(command: Sequence[str], env: Mapping[str, str], log: Path) -> bytes:
    """The launchd agent's plist (it carries every variable, the credential included)."""
    return plistlib.dumps({
        "Label": LABEL,
        "ProgramArguments": list(command),
        "EnvironmentVariables": dict(env),
        "RunAtLoad": True,
        "KeepAlive": True,
        "ProcessType": "Background",
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
    })


def agent_command(python: str = sys.executable) -> list[str]:
    """What the service runs: this interpreter's ``porten agent run``."""
    return [python, "-m", "porten", "agent", "run"]


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    tmp.replace(path)


def install(
    files: ServiceFiles, env: Mapping[str, str], *, run: Run = run_command,
    command: Sequence[str] | None = None, uid: int | None = None, user: str = "",
) -> list[str]:
    """Write the service files and enable them; the lines to tell the owner."""
    if not env.get("PORTEN_NODE_CREDENTIAL"):
        raise ServiceError(
            "PORTEN_NODE_CREDENTIAL is not set: the service would only be refused by the hub; "
            "export the node's credential and install again"
        )
    argv = list(command or agent_command())
    said = [f"wrote {files.definition}"]
    if files.manager == "systemd":
        _write_private(files.secrets, secrets_file(env).encode())
        _write_private(files.definition, systemd_unit(argv, env, files.secrets).encode())
        said.append(f"wrote {files.secrets} (mode 0600: the node credential)")
        steps = [["systemctl", "--user", "daemon-reload"],
                 ["systemctl", "--user", "enable", "--now", UNIT]]
        said += _run_steps(run, steps, f"systemctl --user enable --now {UNIT}")
        said.append(LINGER_HINT.format(user=user or os.environ.get("USER", "$USER")))
    else:
        files.log.parent.mkdir(parents=True, exist_ok=True)
        _write_private(files.definition, launchd_plist(argv, env, files.log))
        domain = f"gui/{os.getuid() if uid is None else uid}"
        run([*("launchctl", "bootout"), f"{domain}/{LABEL}"])  # a previous install, if any
        steps = [["launchctl", "bootstrap", domain, str(files.definition)]]
        said += _run_steps(run, steps, f"launchctl bootstrap {domain} {files.definition}")
    return said


def uninstall(files: ServiceFiles, *, run: Run = run_command, uid: int | None = None) -> list[str]:
    """Stop and disable the service and delete its files; the lines to tell the owner."""
    said: list[str] = []
    if files.manager == "systemd":
        said += _run_steps(run, [["systemctl", "--user", "disable", "--now", UNIT]], "")
    else:
        domain = f"gui/{os.getuid() if uid is None else uid}"
        said += _run_steps(run, [["launchctl", "bootout", f"{domain}/{LABEL}"]], "")
    for path in (files.definition, files.secrets):
        if path.exists():
            path.unlink()
            said.append(f"removed {path}")
    if files.manager == "systemd":
        run(["systemctl", "--user", "daemon-reload"])
    if not any(s.startswith("removed") for s in said):
        said.append("no porten agent service was installed")
    return said


def status(
    files: ServiceFiles, *, run: Run = run_command, uid: int | None = None
) -> dict[str, object]:
    """Whether the service is installed, enabled and running, as the manager says."""
    installed = files.definition.exists()
    if files.manager == "systemd":
        active_code, active = run(["systemctl", "--user", "is-active", UNIT])
        _, enabled = run(["systemctl", "--user", "is-enabled", UNIT])
        running = active_code == 0
        state = active or "unknown"
    else:
        domain = f"gui/{os.getuid() if uid is None else uid}"
        code, out = run(["launchctl", "print", f"{domain}/{LABEL}"])
        running = code == 0 and "state = running" in out
        state = "running" if running else ("loaded" if code == 0 else "not loaded")
        enabled = "enabled" if code == 0 else "disabled"
    return {
        "manager": files.manager,
        "installed": installed,
        "path": str(files.definition),
        "running": running,
        "state": state,
        "enabled": enabled or "unknown",
    }


def _run_steps(run: Run, steps: list[list[str]], manual: str) -> list[str]:
    for argv in steps:
        code, out = run(argv)
        if code != 0:
            detail = out.splitlines()[-1] if out else f"exit status {code}"
            hint = f"; once it works, run: {manual}" if manual else ""
            return [f"{' '.join(argv)} failed ({detail}){hint}"]
    return [f"ran {' '.join(s)}" for s in steps]
