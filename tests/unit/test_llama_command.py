"""Which llama.cpp server the builtin engine runs, and with what flags."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from rich.console import Console

from porten.agent.engines.base import EngineError
from porten.agent.engines.llama_process import find_server, free_port, server_command
from porten.agent.progress_bar import DownloadBars

MODEL = Path("/cache/gemma3-270m.gguf")
HINTS = {"chat_format": "gemma", "chat_template": "gemma"}


def test_llama_server_on_path_is_preferred() -> None:
    """With llama-server on PATH it runs, with llama-server's flags and the template hint."""
    argv = server_command(MODEL, port=4567, alias="gemma3-270m", ctx=8192, hints=HINTS,
                          which=lambda name: f"/usr/bin/{name}")
    assert argv == [
        "/usr/bin/llama-server", "-m", str(MODEL), "--host", "127.0.0.1", "--port", "4567",
        "--alias", "gemma3-270m", "-c", "8192", "-ngl", "999", "--chat-template", "gemma",
    ]


def test_without_llama_server_the_python_server_runs() -> None:
    """Otherwise llama-cpp-python's OpenAI server, with its own flag names and the format hint."""
    argv = server_command(MODEL, port=4567, alias="gemma3-270m", ctx=8192, hints=HINTS,
                          which=lambda name: None)
    assert argv == [
        sys.executable, "-m", "llama_cpp.server", "--model", str(MODEL), "--host", "127.0.0.1",
        "--port", "4567", "--model_alias", "gemma3-270m", "--n_ctx", "8192",
        "--n_gpu_layers", "-1", "--chat_format", "gemma",
    ]


def test_an_explicit_server_is_used_or_refused() -> None:
    """PORTEN_LLAMA_SERVER wins over PATH; a name that is not there is a clear error."""
    assert find_server("my-llama", which=lambda name: f"/opt/{name}") == "/opt/my-llama"
    with pytest.raises(EngineError) as caught:
        find_server("/nope/llama-server", which=lambda name: None)
    assert str(caught.value) == (
        "PORTEN_LLAMA_SERVER='/nope/llama-server' is not an executable file or a command on PATH"
    )


def test_free_ports_are_loopback_ports() -> None:
    """A port is picked by the kernel (never a fixed one that may be taken)."""
    assert 1024 <= free_port() <= 65535


def test_the_terminal_bar_shows_model_bytes_and_percent() -> None:
    """The owner sees the model, the percentage and the bytes, and a failure in red words."""
    console = Console(record=True, width=120, force_terminal=True, color_system=None)
    bars = DownloadBars(console)
    bars.update("gemma3-270m", 126_556_512, 253_113_024)
    bars.finish("gemma3-270m")
    bars.update("other", 10, 100)
    bars.finish("other", "downloading failed: 404")
    text = console.export_text()
    assert "downloading gemma3-270m" in text
    assert "50%" in text
    assert "120.7/241.4 MiB" in text
    assert "download of other failed: downloading failed: 404" in text
