"""`trading-agents models ...` end to end through `main`: exit codes, one-line errors, JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.gguf_factory import make_tiny_llama
from trading_agents.cli.app import main
from trading_agents.config.settings import project_root

ROOT = project_root()


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A copy of the default config with its own, empty models folder."""
    data = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    data["paths"] = {"models_dir": str(tmp_path / "models")}
    (tmp_path / "models").mkdir()
    path = tmp_path / "config.yaml"
    path.write_text("# my config\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def test_list_json_marks_primary_fallback_and_embedded(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(["models", "list", "--json", "--config", str(config)], capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)["models"]}
    assert rows["mixtral-8x7b-instruct"]["role"] == "primary"
    assert rows["mixtral-8x7b-instruct"]["status"] == "missing"
    assert rows["tinyllama-1.1b-chat"]["role"] == "fallback"
    assert rows["smollm2-135m-instruct"]["status"] == "embedded"


def test_list_table(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["models", "list", "--config", str(config)], capsys)
    assert code == 0
    assert "mixtral-8x7b-instruct" in out and "embedded" in out and "primary" in out


def test_verify_without_argument_checks_the_resolved_primary(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(["models", "verify", "--config", str(config)], capsys)
    assert code == 0, err
    assert "note: mixtral-8x7b-instruct not found" in err
    assert "smollm2-135m-instruct" in out and "✓ architecture: llama" in out


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"GGUF\x03\x00\x00\x00" + b"\x01" * 10, "truncated"),
        (b"<html>not found</html>", "not a GGUF file"),
        ("dir", "is a directory"),
    ],
)
def test_verify_bad_files_exit_2_with_one_line(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | str | None, words: str
) -> None:
    target = tmp_path / "models" / "bad.gguf"
    if content == "dir":
        target.mkdir()
    elif isinstance(content, bytes):
        target.write_bytes(content)
    code, out, err = _run(["models", "verify", str(target), "--config", str(config)], capsys)
    assert code == 2
    assert err.startswith("error: bad.gguf") or err.startswith(f"error: {target}")
    assert words in err and len(err.strip().splitlines()) == 1
    assert "✗" in out


def test_verify_json_wrong_quant_for_mixtral_exits_2(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_tiny_llama(tmp_path / "models" / "mixtral-8x7b-instruct-v0.1.Q4_K_M.gguf")
    code, out, err = _run(["models", "verify", "mixtral", "--json", "--config", str(config)], capsys)
    assert code == 2
    report = json.loads(out)  # stdout holds only the JSON document
    assert report["ok"] is False
    failed = {c["name"] for c in report["checks"] if not c["ok"] and c["level"] == "error"}
    assert {"experts", "quantization", "size"} <= failed
    assert err.startswith("error: mixtral failed verification: experts:")


def test_use_sets_primary_and_fallback(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["models", "use", "tinyllama", "--config", str(config)], capsys)
    assert code == 0
    assert "llm.primary: mixtral-8x7b-instruct -> tinyllama-1.1b-chat" in out
    assert "not downloaded yet" in err
    code, out, _ = _run(["models", "use", "smollm2", "--fallback", "--config", str(config)], capsys)
    assert code == 0 and "llm.fallback: tinyllama-1.1b-chat -> smollm2-135m-instruct" in out
    text = config.read_text()
    assert text.startswith("# my config\n")
    assert yaml.safe_load(text)["llm"]["primary"] == "tinyllama-1.1b-chat"


def test_use_unknown_model_exits_2(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = config.read_text()
    code, _, err = _run(["models", "use", "gpt-17", "--config", str(config)], capsys)
    assert code == 2 and err.startswith("error: unknown model 'gpt-17'")
    assert config.read_text() == before


def test_use_follows_the_config_env_var(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADING_AGENTS_CONFIG", str(config))
    code, out, _ = _run(["models", "use", "embedded"], capsys)
    assert code == 0 and str(config) in out
    assert yaml.safe_load(config.read_text())["llm"]["primary"] == "smollm2-135m-instruct"


def test_scripts_are_thin_wrappers(config: Path, tmp_path: Path) -> None:
    work = tmp_path / "copy.yaml"
    shutil.copy(config, work)
    python = sys.executable
    run = subprocess.run(
        [
            python,
            str(ROOT / "scripts" / "update_config.py"),
            "tinyllama",
            "--fallback",
            "--config",
            str(work),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "llm.fallback:" in run.stdout
    run = subprocess.run(
        [python, str(ROOT / "scripts" / "verify_model.py"), "absent.gguf", "--config", str(work)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2 and run.stderr.startswith("error: absent.gguf failed verification")
    run = subprocess.run(
        [
            python,
            str(
                ROOT / "scripts" / "download_model.py",
            ),
            "--help",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0 and "Example: trading-agents models download" in run.stdout
