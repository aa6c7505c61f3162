"""Agents backtests on the embedded model: exact replay from the response cache, blind mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trading_agents.cli.app import main

WINDOW = ["--ticker", "GOOG", "--start", "2013-02-26", "--end", "2013-02-28"]


def backtest(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> dict:
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "backtest",
                "--strategy",
                "agents",
                *WINDOW,
                "--no-baselines",
                "--out",
                str(out),
                "--json",
                *extra,
            ]
        )
    captured = capsys.readouterr()
    assert exc.value.code in (0, None), captured.err
    return json.loads(captured.out)


def test_a_rerun_replays_identical_decisions_and_metrics_without_calling_the_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    first = backtest(capsys, tmp_path / "first")
    second = backtest(capsys, tmp_path / "second")
    llm1, llm2 = first["meta"]["llm"], second["meta"]["llm"]
    assert llm1["calls"] > 0 and llm1["cached_calls"] == 0
    assert llm2["calls"] == 0 and llm2["cached_calls"] == llm1["calls"]
    assert first["metrics"] == second["metrics"]
    assert first["meta"]["models"] == second["meta"]["models"]  # model sha256 recorded
    assert first["meta"]["seed"] == second["meta"]["seed"] == 42
    params = first["meta"]["params"]  # the parameters name the model that served, not the configured one
    assert params["served_by"] and set(params["served_by"]) <= {params["primary"], params["fallback"]}
    assert params["primary"] in params["served_by"]

    def decisions(folder: Path) -> list[dict]:
        rows = [json.loads(line) for line in (folder / "decisions.jsonl").read_text().splitlines()]
        for row in rows:  # latency differs between a generated and a cached reply; nothing else may
            for rec in row["record"]["tickers"].values():
                for agent in rec.get("agents", []):
                    for key in ("latency_s", "ttft_s", "from_response_cache", "cached_prompt_tokens"):
                        agent.pop(key, None)
                rec.pop("wall_s", None)
        return rows

    assert decisions(tmp_path / "first") == decisions(tmp_path / "second")
    assert (tmp_path / "first" / "trades.csv").read_text() == (tmp_path / "second" / "trades.csv").read_text()

    # --no-cache really calls the model again
    third = backtest(capsys, tmp_path / "third", "--no-cache")
    assert third["meta"]["llm"]["calls"] == llm1["calls"] and third["meta"]["llm"]["cached_calls"] == 0


def test_blind_prompts_hide_the_ticker_and_dates(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    summary = backtest(capsys, tmp_path / "blind", "--blind", "--no-cache")
    rows = [json.loads(line) for line in (tmp_path / "blind" / "decisions.jsonl").read_text().splitlines()]
    prompts = [a["prompt"] for r in rows for rec in r["record"]["tickers"].values() for a in rec["agents"]]
    assert prompts
    for prompt in prompts:
        assert "GOOG" not in prompt and "2013" not in prompt
    assert summary["meta"]["llm"]["calls"] == len(prompts)
