"""``porten agent service``: the unit and plist files, and what install/uninstall run.

The file contents are checked line by line; the service managers are
stand-ins on ``PATH`` that record their arguments, so nothing here needs
systemd or launchd.
"""

from __future__ import annotations

import json
import os
import plistlib
import subprocess
import sys
from pathlib import Path

import pytest
from stand_ins import calls, path_with, recorder

from porten.agent.service import (
    ServiceError,
    ServiceFiles,
    install,
    launchd_plist,
    service_env,
    systemd_unit,
)

CREDENTIAL = "pn-node-" + "x" * 38
ENV = {
    "PORTEN_HUB_URL": "https://hub.example:8443",
    "PORTEN_NODE_CREDENTIAL": CREDENTIAL,
    "PORTEN_ENGINE": "builtin",
    "PORTEN_AUTO_DOWNLOAD_MB": "50000",
    "PATH": "/usr/local/bin:/usr/bin",
}


def test_the_env_baked_in_is_porten_settings_and_path() -> None:
    """PORTEN_* and PATH are kept, flags win, unrelated variables are left out."""
    env = service_env({**ENV, "HOME": "/home/u", "SECRET_TOKEN": "t"},
                      {"PORTEN_ENGINE": "ollama", "PORTEN_ENGINE_URL": ""})
    assert env == {**ENV, "PORTEN_ENGINE": "ollama"}
    assert list(env) == sorted(env)


def test_the_systemd_unit_runs_the_agent_with_the_env_and_no_secret() -> None:
    """The unit restarts the agent, carries the env, and leaves the credential to a 0600 file."""
    unit = systemd_unit(["/opt/venv/bin/python", "-m", "porten", "agent", "run"],
                        {**ENV, "PORTEN_ENGINE_MODELS": "a,b 100%"},
                        Path("/home/u/.config/systemd/user/porten-agent.env"))
    assert unit.splitlines() == [
        "[Unit]",
        "Description=Porten node agent (serves this machine's models to a Porten hub)",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        'Environment="PORTEN_HUB_URL=https://hub.example:8443"',
        'Environment="PORTEN_ENGINE=builtin"',
        'Environment="PORTEN_AUTO_DOWNLOAD_MB=50000"',
        'Environment="PATH=/usr/local/bin:/usr/bin"',
        'Environment="PORTEN_ENGINE_MODELS=a,b 100%%"',
        "EnvironmentFile=-/home/u/.config/systemd/user/porten-agent.env",
        "ExecStart=/opt/venv/bin/python -m porten agent run",
        "Restart=always",
        "RestartSec=5",
        "KillMode=control-group",
        "TimeoutStopSec=30",
        "",
        "[Install]",
        "WantedBy=default.target",
    ]
    assert CREDENTIAL not in unit


def test_the_launchd_plist_runs_the_agent_at_login_with_the_env() -> None:
    """The plist keeps the agent alive, with every variable and its log file."""
    plist = plistlib.loads(launchd_plist(["/opt/venv/bin/python", "-m", "porten", "agent", "run"],
                                         ENV, Path("/Users/u/Library/Logs/porten-agent.log")))
    assert plist == {
        "Label": "dev.porten.agent",
        "ProgramArguments": ["/opt/venv/bin/python", "-m", "porten", "agent", "run"],
        "EnvironmentVariables": ENV,
        "RunAtLoad": True,
        "KeepAlive": True,
        "ProcessType": "Background",
        "StandardOutPath": "/Users/u/Library/Logs/porten-agent.log",
        "StandardErrorPath": "/Users/u/Library/Logs/porten-agent.log",
    }


def test_install_refuses_without_a_credential(tmp_path: Path) -> None:
    """A service that the hub would refuse is not installed."""
    with pytest.raises(ServiceError, match=r"^PORTEN_NODE_CREDENTIAL is not set"):
        install(ServiceFiles("systemd", tmp_path), {"PORTEN_HUB_URL": "http://h"},
                run=lambda argv: (0, ""))
    assert not (tmp_path / ".config").exists()


def cli(
    *args: str, home: Path, bin_dir: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    full = {
        "HOME": str(home), "PATH": path_with(bin_dir), "USER": "nodeowner",
        "PORTEN_LOG_LEVEL": "warning", **env,
    }
    full.pop("XDG_CONFIG_HOME", None)
    return subprocess.run([sys.executable, "-m", "porten", "agent", "service", *args],
                          env=full, capture_output=True, text=True, timeout=60, check=False)


def test_install_status_uninstall_with_systemd(tmp_path: Path) -> None:
    """install writes both files (secret 0600) and enables the unit; uninstall undoes it."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    recorder(bin_dir, "systemctl", output="active")
    env = {k: v for k, v in ENV.items() if k != "PATH"}
    done = cli("install", "--manager", "systemd", "--engine-models", "gemma3-270m",
               home=home, bin_dir=bin_dir, env=env)
    assert done.returncode == 0, done.stderr
    unit_dir = home / ".config" / "systemd" / "user"
    unit = (unit_dir / "porten-agent.service").read_text()
    assert 'Environment="PORTEN_ENGINE_MODELS=gemma3-270m"' in unit
    assert f'Environment="PATH={path_with(bin_dir)}"' in unit
    assert f"ExecStart={sys.executable} -m porten agent run" in unit
    secrets = unit_dir / "porten-agent.env"
    assert secrets.read_text() == f"PORTEN_NODE_CREDENTIAL={CREDENTIAL}\n"
    assert secrets.stat().st_mode & 0o777 == 0o600
    assert calls(bin_dir, "systemctl") == [
        "--user daemon-reload", "--user enable --now porten-agent.service",
    ]
    assert "loginctl enable-linger nodeowner" in done.stderr
    assert CREDENTIAL not in done.stderr + done.stdout

    status = cli("status", "--manager", "systemd", "--json", home=home, bin_dir=bin_dir, env={})
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert (report["installed"], report["running"], report["state"]) == (True, True, "active")

    gone = cli("uninstall", "--manager", "systemd", home=home, bin_dir=bin_dir, env={})
    assert gone.returncode == 0, gone.stderr
    assert not (unit_dir / "porten-agent.service").exists()
    assert not secrets.exists()
    assert calls(bin_dir, "systemctl")[-2:] == [
        "--user disable --now porten-agent.service", "--user daemon-reload",
    ]


def test_without_a_working_systemctl_the_files_are_written_and_the_step_named(
    tmp_path: Path,
) -> None:
    """No user bus (a container, CI): the unit is still written and the owner told what to run."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    recorder(bin_dir, "systemctl", output="Failed to connect to bus: No medium found", status=1)
    env = {k: v for k, v in ENV.items() if k != "PATH"}
    done = cli("install", "--manager", "systemd", home=home, bin_dir=bin_dir, env=env)
    assert done.returncode == 0, done.stderr
    assert (home / ".config" / "systemd" / "user" / "porten-agent.service").exists()
    assert ("systemctl --user daemon-reload failed (Failed to connect to bus: No medium found); "
            "once it works, run: systemctl --user enable --now porten-agent.service") in done.stderr


def test_install_with_launchd_writes_a_private_plist_and_bootstraps_it(tmp_path: Path) -> None:
    """On macOS the plist (which holds the credential) is 0600 and loaded into the GUI domain."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    recorder(bin_dir, "launchctl")
    env = {k: v for k, v in ENV.items() if k != "PATH"}
    done = cli("install", "--manager", "launchd", home=home, bin_dir=bin_dir, env=env)
    assert done.returncode == 0, done.stderr
    plist_path = home / "Library" / "LaunchAgents" / "dev.porten.agent.plist"
    plist = plistlib.loads(plist_path.read_bytes())
    assert plist["EnvironmentVariables"]["PORTEN_NODE_CREDENTIAL"] == CREDENTIAL
    assert plist_path.stat().st_mode & 0o777 == 0o600
    uid = os.getuid()
    assert calls(bin_dir, "launchctl") == [
        f"bootout gui/{uid}/dev.porten.agent", f"bootstrap gui/{uid} {plist_path}",
    ]


def test_install_refuses_settings_the_agent_would_refuse(tmp_path: Path) -> None:
    """A bad PORTEN_* value is caught at install, not in a restart loop."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    recorder(bin_dir, "systemctl")
    done = cli("install", "--manager", "systemd", home=home, bin_dir=bin_dir,
               env={**ENV, "PORTEN_HUB_URL": "hub.example"})
    assert done.returncode == 1
    assert "PORTEN_HUB_URL='hub.example' must be an http(s):// or ws(s):// URL" in done.stderr
    assert calls(bin_dir, "systemctl") == []
