"""Third-party engines: found through the ``porten.engines`` entry-point group, refused clearly.

A plugin is installed here as pip would leave it — a ``*.dist-info`` folder
with ``entry_points.txt`` on the import path — so discovery goes through
``importlib.metadata`` exactly as for a real install. The worked example
is ``tests/plugins/porten_echo`` (packaged by ``tests/plugins/pyproject.toml``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from agent_harness import Hub, chat_request, content_of, exchange_body, running_hub

from porten.agent.engines import available, create_engine
from porten.agent.settings import AgentSettings
from porten.config import ConfigError

PLUGINS = Path(__file__).parents[1] / "plugins"


def install_dist(site: Path, name: str, entry_points: str) -> Path:
    """A distribution's metadata as pip installs it, declaring ``entry_points``."""
    info = site / f"{name}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    return site


@pytest.fixture
def echo_site(tmp_path: Path) -> Path:
    """The echo plugin's metadata, as its pyproject.toml declares it."""
    return install_dist(tmp_path / "site", "porten_echo",
                        '[porten.engines]\necho = porten_echo:create\n')


def settings(engine: str, **env: str) -> AgentSettings:
    return AgentSettings.from_env({"PORTEN_ENGINE": engine, **env})


def test_an_installed_plugin_is_an_engine_choice(
    echo_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PORTEN_ENGINE=echo builds the plugin's engine from the agent's settings."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.syspath_prepend(str(echo_site))
    assert available() == ["builtin", "echo", "ollama", "openai", "sim"]
    engine = create_engine(settings("echo", PORTEN_ENGINE_MODELS="echo-1,echo-2"))
    assert (engine.kind, engine.provisionable) == ("echo", False)


def test_an_unknown_engine_lists_the_choices() -> None:
    """A typo names what exists instead."""
    with pytest.raises(ConfigError) as caught:
        create_engine(settings("ecoh"))
    assert str(caught.value) == (
        "PORTEN_ENGINE='ecoh' is not an engine here; choose one of: builtin, ollama, openai, sim"
    )


def test_a_broken_plugin_says_which_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin whose module is missing fails with its name and entry point."""
    site = install_dist(tmp_path / "site", "broken", '[porten.engines]\nbroken = nowhere:create\n')
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ConfigError) as caught:
        create_engine(settings("broken"))
    assert str(caught.value) == (
        "the 'broken' engine plugin (nowhere:create) cannot be loaded: No module named 'nowhere'"
    )


def test_a_plugin_that_returns_no_engine_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the factory returns must implement the Engine interface."""
    site = install_dist(tmp_path / "site", "odd", '[porten.engines]\nodd = builtins:repr\n')
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ConfigError) as caught:
        create_engine(settings("odd"))
    assert str(caught.value) == (
        "the 'odd' engine plugin returned a str, which does not implement "
        "porten.agent.engines.base.Engine"
    )


def test_a_plugin_cannot_replace_a_builtin_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin named like a built-in is ignored; the built-in is used."""
    site = install_dist(tmp_path / "site", "sneaky", '[porten.engines]\nsim = builtins:dict\n')
    monkeypatch.syspath_prepend(str(site))
    assert create_engine(settings("sim")).kind == "sim"


@pytest.mark.postgres
async def test_an_agent_process_serves_through_the_plugin(
    database_url: str, echo_site: Path, tmp_path: Path
) -> None:
    """``porten agent run`` with PORTEN_ENGINE=echo connects and answers through the hub."""
    async with running_hub(database_url) as hub:
        credential = await hub.enrol("echo-node")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(echo_site), str(PLUGINS)]),
            "PORTEN_HUB_URL": hub.url, "PORTEN_NODE_CREDENTIAL": credential,
            "PORTEN_ENGINE": "echo", "PORTEN_ENGINE_MODELS": "echo-1",
            "PORTEN_DATA_DIR": str(tmp_path / "node"), "PORTEN_LOG_LEVEL": "warning",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "porten", "agent", "run", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            link = await _link_or_exit(hub, proc)
            for stream in (False, True):
                request = chat_request("hello plugin world", stream=stream, model="echo-1")
                status, body = await exchange_body(link, request)
                assert status == 200
                assert content_of(body, stream=stream) == "hello plugin world"
        finally:
            proc.terminate()
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()


async def _link_or_exit(hub: Hub, proc: asyncio.subprocess.Process):  # type: ignore[no-untyped-def]
    waiting = asyncio.create_task(hub.live_link("echo-node"))
    exited = asyncio.create_task(proc.wait())
    done, _ = await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
    if exited in done:
        waiting.cancel()
        assert proc.stderr is not None
        raise AssertionError("the agent exited: " + (await proc.stderr.read()).decode())
    exited.cancel()
    return waiting.result()
