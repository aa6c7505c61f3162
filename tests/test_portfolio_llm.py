"""The ``llm`` portfolio mode on the embedded model, end to end: a stock AutoGen portfolio
manager answering grammar-bound weights, a truncated answer failing closed, and the LLM cost of
a replayed run counted from the original decisions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from trading_agents.agents.portfolio_manager import weights_schema
from trading_agents.cli.app import main

WINDOW = ["-t", "AAPL", "-t", "IBM", "--start", "2013-02-26", "--end", "2013-02-28"]
COMPUTE_USD_PER_HOUR = 0.714  # configs/default.yaml
PROMPT_PRICE, COMPLETION_PRICE = 0.5, 2.0  # per 1k tokens, set through the environment below


def backtest(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> dict:
    with pytest.raises(SystemExit) as exc:
        main(["backtest", "-s", "agents", *WINDOW, "--portfolio", "llm", "--out", str(out), "--json", *extra])
    captured = capsys.readouterr()
    assert exc.value.code in (0, None), captured.err
    return json.loads(captured.out)


def decisions(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "decisions.jsonl").read_text().splitlines()]


def steps(row: dict) -> list[dict]:
    out = [a for rec in row["record"]["tickers"].values() for a in rec.get("agents", [])]
    return [*out, row["record"]["portfolio"]["manager"]["agent"]]


def test_the_weights_schema_refuses_300_percent_and_negative_cash() -> None:
    schema = weights_schema(["AAPL", "IBM"])
    assert schema.model_validate_json('{"AAPL": 0.2, "IBM": 0.1, "cash": 0.7}').model_dump(by_alias=True) == {
        "AAPL": 0.2,
        "IBM": 0.1,
        "cash": 0.7,
    }
    for bad in (
        '{"AAPL": 3.0, "IBM": 0, "cash": 0}',
        '{"AAPL": 0.5, "IBM": 0.5, "cash": -1}',
        '{"AAPL": 0.5',
    ):
        with pytest.raises(ValidationError):
            schema.model_validate_json(bad)


def test_llm_mode_end_to_end_with_replayed_cost_and_a_fail_closed_answer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADING_AGENTS_COSTS__USD_PER_1K_PROMPT_TOKENS", str(PROMPT_PRICE))
    monkeypatch.setenv("TRADING_AGENTS_COSTS__USD_PER_1K_COMPLETION_TOKENS", str(COMPLETION_PRICE))
    first = backtest(capsys, tmp_path / "first")
    rows = decisions(tmp_path / "first")
    assert [r["date"] for r in rows] == ["2013-02-26", "2013-02-27"]
    for row in rows:
        portfolio = row["record"]["portfolio"]
        assert portfolio["mode"] == "llm" and portfolio["manager"]["error"] is None
        targets = portfolio["targets"]
        assert set(targets) == {"AAPL", "IBM", "cash"}
        assert all(
            0 <= targets[t] <= 0.2 for t in ("AAPL", "IBM")
        )  # risk.max_position_pct, whatever it asked
        assert targets["cash"] == pytest.approx(1 - targets["AAPL"] - targets["IBM"], abs=1e-5)
        assert portfolio["manager"]["agent"]["role"] == "portfolio_manager"
        assert all(s["role"] == "analyst" for s in steps(row)[:-1])  # only the analysts ran per ticker
        sides = [o["side"] for o in portfolio["orders"]]
        assert sides == sorted(sides, key=lambda side: side != "sell")  # sells first

    # the cost is each call's compute time and tokens, stored with its decision
    def cost(step: dict) -> float:
        return (
            step["compute_s"] * COMPUTE_USD_PER_HOUR / 3600
            + step["prompt_tokens"] / 1000 * PROMPT_PRICE
            + step["completion_tokens"] / 1000 * COMPLETION_PRICE
        )

    expected = sum(cost(s) for row in rows for s in steps(row))
    metrics = first["metrics"]
    assert metrics["llm_cost_usd"] == pytest.approx(expected, rel=1e-5) and expected > 0
    start = metrics["equity_start"]
    assert metrics["return_net_pct"] == pytest.approx(
        (metrics["equity_final"] - expected - start) / start * 100, rel=1e-6
    )
    ew = first["baselines"]["equal-weight"]["return_pct"]  # a universe runs beside equal-weight buy-and-hold
    assert first["meta"]["benchmark"] == "equal-weight" and "equal-weight-monthly" in first["baselines"]
    assert metrics["excess_return_net_pct"] == pytest.approx(metrics["return_net_pct"] - ew)

    # a replay calls no model and still counts what the original decisions cost
    second = backtest(capsys, tmp_path / "second")
    assert second["meta"]["llm"]["calls"] == 0 and second["meta"]["llm"]["cached_calls"] > 0
    assert all(
        s["from_response_cache"] and s["latency_s"] == 0
        for r in decisions(tmp_path / "second")
        for s in steps(r)
    )
    assert second["metrics"]["llm_cost_usd"] == pytest.approx(metrics["llm_cost_usd"], rel=1e-9)
    assert second["metrics"]["return_net_pct"] == pytest.approx(metrics["return_net_pct"])

    # a reply cut off by the token cap fails closed: targets stay as they were, no order
    monkeypatch.setenv("TRADING_AGENTS_PORTFOLIO__MAX_TOKENS", "2")  # sampled tokens: not even one weight
    backtest(capsys, tmp_path / "truncated", "--no-baselines", "--no-cache")
    for row in decisions(tmp_path / "truncated"):
        portfolio = row["record"]["portfolio"]
        assert portfolio["manager"]["answer"] is None and portfolio["manager"]["error"]
        assert portfolio["fail_closed"].startswith("targets unchanged")
        assert portfolio["targets"] == {"AAPL": 0.0, "IBM": 0.0, "cash": 1.0}  # the book it started with
        assert portfolio["orders"] == []
    assert json.loads((tmp_path / "truncated" / "summary.json").read_text())["metrics"]["num_trades"] == 0
    assert not math.isnan(
        json.loads((tmp_path / "truncated" / "summary.json").read_text())["metrics"]["llm_cost_usd"]
    )


def test_a_conviction_session_shows_targets_orders_and_clips_in_run_json_and_the_ledger(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            ["run", "-t", "AAPL", "-t", "IBM", "--date", "2013-02-27", "--portfolio", "conviction", "--json"]
        )
    captured = capsys.readouterr()
    assert exc.value.code in (0, None), captured.err
    summary = json.loads(captured.out)
    [book] = summary["portfolio"]
    assert book["date"] == "2013-02-27" and book["mode"] == "conviction"
    assert set(book["targets"]) == {"AAPL", "IBM", "cash"} and isinstance(book["clips"], list)
    placed = [(o["ticker"], o["side"]) for o in summary["orders"]]
    assert placed == [(o["ticker"], o["side"]) for o in book["orders"]]  # the step's orders, risk-checked
    assert summary["llm_cost_usd"] > 0 and summary["llm"]["calls"] == 2  # the two analysts, no risk/executor

    with pytest.raises(SystemExit) as exc:
        main(["ledger", "--json"])
    ledger = json.loads(capsys.readouterr().out)
    [decision] = ledger["run"]["decisions"]
    assert decision["record"]["portfolio"]["targets"] == book["targets"]
    assert decision["record"]["llm_cost_usd"] == pytest.approx(summary["llm_cost_usd"], abs=1e-6)
    with pytest.raises(SystemExit):
        main(["ledger"])
    shown = capsys.readouterr().out
    assert "book" in shown and "conviction" in shown  # the book's row under the tickers' rows
    # the dashboard's decisions table shows the same row, from the same helper
    from trading_agents.dashboard.views import decision_rows

    [row] = [r for r in decision_rows([decision], []) if r["ticker"] == "book"]
    assert row["skipped"].startswith("conviction targets: ") and row["order"]
