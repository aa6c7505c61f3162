"""The training-cutoff warning and the records name the model that actually served.

A registry model given as a GGUF path in the models folder (here a copy of the embedded
SmolLM2 file under the Qwen coder's file name, its registry entry reshaped to fit that file)
is known by its registry name, so its cutoff is the one warned about, not the embedded
fallback's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from trading_agents.backtest.runner import lookahead_warnings
from trading_agents.cli.app import main
from trading_agents.config.settings import load_settings, project_root

CODER_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
CODER = "qwen2.5-coder-1.5b-instruct"
EMBEDDED = "smollm2-135m-instruct"


def _models_with_coder(tmp_path: Path, embedded_model: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    try:
        os.link(embedded_model, models / CODER_FILE)
    except OSError:
        shutil.copy(embedded_model, models / CODER_FILE)
    return models


def _config(tmp_path: Path, models: Path) -> Path:
    registry = yaml.safe_load((project_root() / "configs" / "models.yaml").read_text())
    embedded = registry["models"][EMBEDDED]
    registry["models"][CODER].update(
        {k: embedded[k] for k in ("architecture", "quantization", "size_bytes", "kv_bytes_per_token")}
    )
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(registry))
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "paths": {"models_dir": str(models), "registry": str(tmp_path / "models.yaml")},
                # the primary as a path, as a user drops a file in; the fallback is not downloaded
                "llm": {"primary": CODER_FILE, "fallback": "tinyllama-1.1b-chat", "n_threads": 1},
                "selector": {"fallback_roles": []},  # the primary answers every call
            }
        )
    )
    return config


def test_before_a_run_the_warning_names_the_primary_and_after_it_those_that_served(
    tmp_path: Path, embedded_model: Path
) -> None:
    settings = load_settings(_config(tmp_path, _models_with_coder(tmp_path, embedded_model)))
    start = dt.date(2013, 2, 27)
    before = lookahead_warnings(settings, start, blind=False)
    assert len(before) == 1 and f"before {CODER}'s training cutoff 2024-09-01" in before[0]
    only_fallback = lookahead_warnings(settings, start, blind=False, served=[EMBEDDED])
    assert len(only_fallback) == 1 and f"before {EMBEDDED}'s training cutoff 2024-06-01" in only_fallback[0]
    both = lookahead_warnings(settings, start, blind=False, served=[CODER, EMBEDDED])
    assert [CODER in both[0], EMBEDDED in both[1]] == [True, True]


def test_a_backtest_warns_about_and_records_only_the_model_that_served(
    tmp_path: Path, embedded_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, _models_with_coder(tmp_path, embedded_model))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "backtest", "--strategy", "agents", "--ticker", "GOOG", "--start", "2013-02-27",
                "--end", "2013-02-28", "--no-baselines", "--no-cache", "--out", str(out),
                "--config", str(config), "--json",
            ]
        )  # fmt: skip
    captured = capsys.readouterr()
    assert exc.value.code in (0, None), captured.err
    meta = json.loads(captured.out)["meta"]
    assert len(meta["lookahead_warnings"]) == 1
    assert f"{CODER}'s training cutoff 2024-09-01" in meta["lookahead_warnings"][0]
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and CODER in warnings[0] and EMBEDDED not in warnings[0]
    notes = [line for line in captured.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and f"tinyllama-1.1b-chat not found in {tmp_path / 'models'}/" in notes[0]
    assert f"using the embedded {EMBEDDED}" in notes[0]  # the fallback's substitution, said once
    assert meta["llm"]["served"] == [CODER] and list(meta["models"]) == [CODER]
    rows = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    agents = [a for row in rows for rec in row["record"]["tickers"].values() for a in rec["agents"]]
    assert len(agents) >= 3 and {a["model"] for a in agents} == {CODER}
