"""The agent's configuration from PORTEN_* variables, and the engine it selects."""

from __future__ import annotations

from pathlib import Path

import pytest

from porten.agent.engines import FACTORIES, create_engine
from porten.agent.engines.openai_engine import OpenAIEngine
from porten.agent.engines.sim import SimProfile
from porten.agent.engines.sim_engine import SimEngine
from porten.agent.settings import AgentSettings
from porten.config import ConfigError
from porten.services.credentials import new_node_credential


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    """Every documented variable is read, trimmed and typed."""
    credential = new_node_credential()
    settings = AgentSettings.from_env(
        {
            "PORTEN_HUB_URL": "https://porten.example/",
            "PORTEN_NODE_CREDENTIAL": f" {credential} ",
            "PORTEN_ENGINE": "OpenAI",
            "PORTEN_ENGINE_URL": "http://localhost:8000",
            "PORTEN_ENGINE_MODELS": "deepseek-v4-flash, qwen3 ,,deepseek-v4-flash",
            "PORTEN_VRAM_BUDGET_MB": "262144",
            "PORTEN_AUTO_DOWNLOAD_MB": "200000",
            "PORTEN_DATA_DIR": str(tmp_path),
            "PORTEN_SIM_PROFILE": '{"tokens_per_s": 50, "seed": 3}',
            "PORTEN_LLAMA_SERVER": " /opt/llama.cpp/llama-server ",
        }
    )
    assert settings.credential == credential
    assert settings.engine == "openai"
    assert settings.engine_url == "http://localhost:8000"
    assert settings.engine_models == ("deepseek-v4-flash", "qwen3")
    assert (settings.vram_budget_mb, settings.disk_budget_mb) == (262_144, 200_000)
    assert settings.data_dir == tmp_path
    assert settings.sim_profile == SimProfile(tokens_per_s=50, seed=3)
    assert settings.llama_server == "/opt/llama.cpp/llama-server"
    assert settings.connect_url == "wss://porten.example/agent/v1/connect"


@pytest.mark.parametrize(
    ("hub", "connect"),
    [
        ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/agent/v1/connect"),
        ("ws://hub:9000/", "ws://hub:9000/agent/v1/connect"),
        ("wss://porten.ai", "wss://porten.ai/agent/v1/connect"),
        ("https://example.org/porten", "wss://example.org/porten/agent/v1/connect"),
    ],
)
def test_the_connect_url_is_the_websocket_twin_of_the_hub_url(hub: str, connect: str) -> None:
    """http becomes ws, https becomes wss, and the connect path is appended once."""
    assert AgentSettings(hub_url=hub).connect_url == connect


def test_the_credential_never_shows_in_repr() -> None:
    """No log line or traceback that prints the settings can leak the credential."""
    credential = new_node_credential()
    assert credential not in repr(AgentSettings(credential=credential))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORTEN_HUB_URL", "ftp://hub"),
        ("PORTEN_HUB_URL", "not a url"),
        ("PORTEN_VRAM_BUDGET_MB", "lots"),
        ("PORTEN_AUTO_DOWNLOAD_MB", "-1"),
        ("PORTEN_SIM_PROFILE", '{"tokens_per_s": 0}'),
    ],
)
def test_unusable_values_name_their_variable(name: str, value: str) -> None:
    """A bad value is a ConfigError that names the variable to fix."""
    with pytest.raises(ConfigError, match=name):
        AgentSettings.from_env({name: value})


def test_the_engine_is_chosen_by_name() -> None:
    """Each built-in engine is built from the settings; anything else is a clear error."""
    sim = create_engine(AgentSettings(engine="sim", engine_models=("m1",)))
    assert isinstance(sim, SimEngine)
    openai = create_engine(
        AgentSettings(engine="openai", engine_url="http://x:1/v1", engine_models=("m",))
    )
    assert isinstance(openai, OpenAIEngine)
    assert openai.url == "http://x:1"
    assert sorted(FACTORIES) == ["builtin", "ollama", "openai", "sim"]
    with pytest.raises(ConfigError, match="PORTEN_ENGINE_URL"):
        create_engine(AgentSettings(engine="openai"))
    with pytest.raises(ConfigError, match=r"choose one of: builtin, ollama, openai, sim$"):
        create_engine(AgentSettings(engine="vllm"))
