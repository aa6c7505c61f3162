"""Settings layers (defaults < file < environment < flags), one-line errors naming key and source,
TRADING_AGENTS_CONFIG, and the secret token masked everywhere settings are shown."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trading_agents.config.settings import load_settings, project_root
from trading_agents.errors import ConfigError

SECRET = "hf_settingsTestSecret0123456789"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("llm:\n  n_ctx: 1024\n  seed: 1\nrisk:\n  max_position_pct: 0.3\n")
    return path


def test_defaults_then_file_then_env_then_flags(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(config)
    assert (s.llm.n_ctx, s.llm.seed, s.risk.max_position_pct) == (1024, 1, 0.3)
    assert s.llm.n_batch == 512 and s.source_file == config  # untouched key: the default

    monkeypatch.setenv("TRADING_AGENTS_LLM__N_CTX", "4096")
    monkeypatch.setenv("TRADING_AGENTS_RISK__MAX_POSITION_PCT", "0.1")
    s = load_settings(config)
    assert (s.llm.n_ctx, s.llm.seed, s.risk.max_position_pct) == (4096, 1, 0.1)  # env over file

    s = load_settings(config, {"llm.n_ctx": 8192, "llm.seed": None})
    assert (s.llm.n_ctx, s.llm.seed) == (8192, 1)  # a flag over env; a flag left at None is not given


def test_env_json_lists_and_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADING_AGENTS_SESSION__TICKERS", '["SPX", "IXIC"]')
    monkeypatch.setenv("trading_agents_broker__cash", "5000")
    s = load_settings()
    assert s.session.tickers == ["SPX", "IXIC"] and s.broker.cash == 5000.0


def test_default_config_file_and_the_config_env_var(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRADING_AGENTS_CONFIG")  # conftest points it at a copy without models
    assert load_settings().source_file == project_root() / "configs" / "default.yaml"
    monkeypatch.setenv("TRADING_AGENTS_CONFIG", str(config))
    s = load_settings()
    assert s.source_file == config and s.llm.n_ctx == 1024
    other = config.with_name("other.yaml")
    other.write_text("llm:\n  n_ctx: 2048\n")
    assert load_settings(other).llm.n_ctx == 2048  # --config wins over the env var

    monkeypatch.setenv("TRADING_AGENTS_CONFIG", str(config.with_name("absent.yaml")))
    with pytest.raises(ConfigError, match=r"absent\.yaml does not exist"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "line"),
    [("llm:\n  n_ctx: [1\n", 3), ("risk:\n  a: 1\n b: 2\n", 3), ("llm:\n\tseed: 1\n", 2), ("a: 'x\n", 2)],
)
def test_invalid_yaml_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert exc.value.message.startswith(f"{path}: line {line}:")
    assert "\n" not in exc.value.message


def _error(config: Path | None = None, overrides: dict | None = None) -> str:
    with pytest.raises(ConfigError) as exc:
        load_settings(config, overrides)
    assert "\n" not in exc.value.message
    return exc.value.message


def test_unknown_keys_name_key_and_source_in_every_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("llm:\n  n_ctxx: 1\n")
    assert _error(path).startswith(f"{path}: llm.n_ctxx: unknown key")
    path.write_text("lm:\n  n_ctx: 1\n")
    assert _error(path).startswith(f"{path}: lm: unknown key")

    monkeypatch.setenv("TRADING_AGENTS_RISK__MAX_POSITIONS", "3")
    assert _error().startswith("environment variable TRADING_AGENTS_RISK__MAX_POSITIONS: risk.max_positions:")
    monkeypatch.delenv("TRADING_AGENTS_RISK__MAX_POSITIONS")

    assert _error(None, {"llm.bogus": 1}).startswith("command-line flag: llm.bogus: unknown key")


def test_wrong_types_name_key_and_source_in_every_layer(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("broker:\n  cash: lots\n")
    message = _error(path)
    assert message.startswith(f"{path}: broker.cash:") and "number" in message

    # the file sets llm.n_ctx too: the message must blame the layer that won, the environment
    monkeypatch.setenv("TRADING_AGENTS_LLM__N_CTX", "huge")
    message = _error(config)
    assert message.startswith("environment variable TRADING_AGENTS_LLM__N_CTX: llm.n_ctx:"), message
    monkeypatch.delenv("TRADING_AGENTS_LLM__N_CTX")

    message = _error(config, {"llm.n_ctx": 10})  # below the minimum of 256
    assert message.startswith("command-line flag: llm.n_ctx:") and "256" in message

    monkeypatch.setenv("TRADING_AGENTS_SELECTOR__FALLBACK_ROLES", "analyst,risk")  # not JSON
    message = _error()
    assert message.startswith("environment variable TRADING_AGENTS_SELECTOR__FALLBACK_ROLES:"), message
    assert "JSON" in message


def test_out_of_range_and_literal_values(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    for text, key in [
        ("risk:\n  max_drawdown_pct: 1.5\n", "risk.max_drawdown_pct"),
        ("llm:\n  temperature: -1\n", "llm.temperature"),
        ("session:\n  mode: live\n", "session.mode"),
        ("selector:\n  fallback_roles: [trader]\n", "selector.fallback_roles.0"),
        ("llm: [1]\n", "llm"),
    ]:
        path.write_text(text)
        assert _error(path).startswith(f"{path}: {key}:"), text


def test_secret_token_is_masked_in_public_dict_repr_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADING_AGENTS_HUGGINGFACE__TOKEN", SECRET)
    s = load_settings()
    assert s.huggingface.token is not None and s.huggingface.token.get_secret_value() == SECRET
    for shown in (repr(s), str(s), repr(s.huggingface), str(s.public_dict()), s.model_dump_json()):
        assert SECRET not in shown
    assert s.public_dict()["huggingface"]["token"] == "**********"
    # a validation error elsewhere must not echo the token either
    monkeypatch.setenv("TRADING_AGENTS_LLM__SEED", "-1")
    assert SECRET not in _error()


def test_secret_in_a_config_file_is_masked_too(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"huggingface:\n  token: {SECRET}\n  endpoint: http://127.0.0.1:9\n")
    s = load_settings(path)
    assert SECRET not in repr(s) and SECRET not in str(s.public_dict())
    path.write_text(f"huggingface:\n  token: {SECRET}\n  tokne: {SECRET}\n")
    assert SECRET not in _error(path)


@pytest.mark.parametrize(("text", "key"), [("0:\n", "0"), ("llm:\n  1: 2\n", "llm.1"), ("~: 1\n", "None")])
def test_keys_that_are_not_names_are_config_errors(tmp_path: Path, text: str, key: str) -> None:
    """Found by tests/test_fuzz.py: a numeric or null key once raised a bare TypeError."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert _error(path).startswith(f"{path}: {key}: keys must be names")


def test_a_key_with_a_line_break_is_named_on_one_line(tmp_path: Path) -> None:
    """Found by the config fuzz: a key holding a newline split the error over two lines."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"llm": {"\n": None}}))
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert "\n" not in str(exc.value) and "llm.'\\n': unknown key" in str(exc.value)
