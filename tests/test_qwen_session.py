"""A short paper session on Qwen2.5-Coder-1.5B-Instruct: its own chat template, replies that parse.

Runs only where the 1.1 GB file is present (``$QWEN_GGUF``, else the project's models folder;
``trading-agents models download qwen-coder`` puts it there) and only with ``-m slow``:
``pytest -m slow tests/test_qwen_session.py``. The default suite never needs the download.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from trading_agents.cli.app import main
from trading_agents.config.settings import project_root
from trading_agents.journal.sqlite import Ledger, default_ledger_path

NAME = "qwen2.5-coder-1.5b-instruct"
FILENAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
GGUF = Path(os.environ.get("QWEN_GGUF") or project_root() / "models" / "llm_models" / FILENAME)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not GGUF.is_file(),
        reason=f"{GGUF} is absent: set QWEN_GGUF or run `trading-agents models download qwen-coder`",
    ),
]


def test_a_session_on_the_qwen_coder_model_renders_its_template_and_parses_every_reply(
    tmp_path: Path, isolated_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / FILENAME).symlink_to(GGUF.resolve())
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {"paths": {"models_dir": str(models)}, "llm": {"primary": "qwen-coder", "fallback": None}}
        )
    )
    with pytest.raises(SystemExit) as exc:
        main(
            ["run", "--ticker", "GOOG", "--start", "2013-02-27", "--end", "2013-02-28", "--json",
             "--config", str(config)]
        )  # fmt: skip
    captured = capsys.readouterr()
    assert exc.value.code in (0, None), captured.err
    summary = json.loads(captured.out)
    assert summary["llm"]["served"] == [NAME] and summary["llm"]["failed_steps"] == 0
    assert [d["error"] for d in summary["decisions"]] == [None, None]
    with Ledger.open(default_ledger_path(isolated_state)) as ledger:
        records = [d["record"]["tickers"]["GOOG"] for d in ledger.decisions("paper")]
    assert len(records) == 2
    for record in records:
        assert record["error"] is None
        agents = {a["role"]: a for a in record["agents"]}
        assert set(agents) == {"analyst", "risk", "executor"}
        for agent in agents.values():
            assert agent["model"] == NAME and agent["output"] is not None and agent["error"] is None
            prompt = agent["prompt"]  # the GGUF's ChatML template: system, user turns, then the reply's
            assert prompt.startswith("<|im_start|>system\n") and "<|im_end|>\n<|im_start|>user\n" in prompt
            assert prompt.endswith("<|im_start|>assistant\n") and "You are Qwen" not in prompt
        assert agents["analyst"]["output"]["action"] in ("BUY", "SELL", "HOLD")
        assert agents["analyst"]["output"]["rationale"].strip()
        assert agents["risk"]["output"]["decision"]
    walls = [r["wall_s"] for r in records]
    print(f"decision wall time on {NAME}: {walls} s")  # reported, never asserted
    for record in records:
        print(json.dumps({a["role"]: a["output"] for a in record["agents"]}))
