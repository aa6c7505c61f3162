"""The results folder: five files, each valid, written atomically; unwritable folders fail in one line."""

from __future__ import annotations

import base64
import errno
import json
import os
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from trading_agents.backtest.metrics import compute_metrics
from trading_agents.backtest.report import BASELINES_FILE, RESULT_FILES, write_results
from trading_agents.config.settings import load_settings
from trading_agents.errors import ResourceError

DAYS = pd.bdate_range("2024-01-02", periods=30, name="Date")


def _bars() -> dict[str, pd.DataFrame]:
    close = pd.Series([100 + i + (3 if i % 4 == 0 else 0) for i in range(len(DAYS))], index=DAYS, dtype=float)
    return {
        "GOOG": pd.DataFrame(
            {"Open": close, "High": close + 1, "Low": close - 1, "Close": close, "Volume": 1e6}
        )
    }


def _result() -> SimpleNamespace:
    equity = pd.Series([100_000 + 150 * i - (400 if i % 7 == 3 else 0) for i in range(len(DAYS))], index=DAYS)
    frame = pd.DataFrame(
        {"equity": equity, "cash": equity * 0.5, "exposure": 0.5, "drawdown": 0.0, "pos_GOOG": 500.0}
    )
    frame["drawdown"] = 1 - equity / equity.cummax()
    trades = pd.DataFrame(
        {
            "ticker": ["GOOG", "GOOG"],
            "size": [500, 400],
            "entry_time": [DAYS[1], DAYS[12]],
            "exit_time": [DAYS[8], DAYS[25]],
            "entry_price": [101.0, 112.0],
            "exit_price": [108.0, 110.0],
            "pnl": [3450.0, -850.0],
            "return_pct": [6.9, -1.9],
            "commission": [52.0, 44.0],
            "bars_held": [7, 13],
        }
    )
    decisions = [
        {
            "bar_date": DAYS[i],
            "strategy": "agents",
            "record": {"analyst": {"rationale": f"<b>trend</b> day {i}"}, "executor": {"action": "buy"}},
        }
        for i in range(3)
    ]
    return SimpleNamespace(
        equity=frame,
        trades=trades,
        decisions=decisions,
        starting_cash=100_000.0,
        commissions=96.0,
        run_id="bt-test",
        strategy="agents",
        start=DAYS[0],
        end=DAYS[-1],
    )


def _write(out: Path) -> dict[str, Path]:
    result, bars = _result(), _bars()
    metrics = compute_metrics(result, bars)
    baselines = {"buy-hold": dict(metrics, return_pct=12.5), "sma-cross": dict(metrics, sharpe=None)}
    meta = {
        "strategy": "agents",
        "tickers": ["GOOG"],
        "config": load_settings().public_dict(),
        "lookahead_warnings": ["window starts before the cutoff"],
        "llm": {"calls": 9, "cached_calls": 3},
    }
    return write_results(
        out,
        result,
        metrics,
        baselines=baselines,
        meta=meta,
        bars=bars,
        baseline_equity={"buy-hold": result.equity["equity"] * 1.01},
    )


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables = 0
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        self.tables += tag == "table"
        self.scripts += tag == "script"


def test_results_folder_has_six_valid_files(tmp_path: Path) -> None:
    paths = _write(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted([*RESULT_FILES, BASELINES_FILE])
    assert set(paths) == {
        "summary",
        "trades",
        "equity",
        "decisions",
        "rejected_orders",
        "report",
        "baselines",
    }
    curves = pd.read_csv(paths["baselines"], index_col=0)
    assert list(curves.columns) == ["buy_and_hold", "buy-hold"]
    assert len(curves) == len(pd.read_csv(paths["equity"]))

    summary = json.loads(paths["summary"].read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert summary["metrics"]["num_trades"] == 2
    assert summary["baselines"]["buy-hold"]["return_pct"] == 12.5
    assert summary["baselines"]["sma-cross"]["sharpe"] is None
    assert summary["metric_names"]["sharpe"] == "Sharpe Ratio"
    meta = summary["meta"]
    assert meta["llm"]["cached_calls"] == 3
    assert meta["config"]["huggingface"]["token"] is None
    assert set(meta["versions"]) >= {
        "trading-agents",
        "llama-cpp-python",
        "autogen-agentchat",
        "pandas",
        "numpy",
    }
    assert meta["versions"]["pandas"] == pd.__version__

    trades = pd.read_csv(paths["trades"])
    assert trades["pnl"].tolist() == [3450.0, -850.0] and "bars_held" in trades
    equity = pd.read_csv(paths["equity"], index_col="Date", parse_dates=True)
    assert len(equity) == len(DAYS) and list(equity.columns) == [
        "equity",
        "cash",
        "exposure",
        "drawdown",
        "pos_GOOG",
    ]

    rows = [json.loads(line) for line in paths["decisions"].read_text().splitlines()]
    assert [r["date"] for r in rows] == [d.date().isoformat() for d in DAYS[:3]]
    assert (
        rows[0]["strategy"] == "agents" and rows[0]["record"]["analyst"]["rationale"] == "<b>trend</b> day 0"
    )

    page = paths["report"].read_text()
    parser = _Images()
    parser.feed(page)
    assert len(parser.images) == 4 and parser.tables >= 4 and parser.scripts == 0
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page  # opens offline
    assert "sma-cross" in page and "Buy &amp; Hold Return, uncapped, no costs [%]" in page
    assert "look-ahead warning" in page
    assert "&lt;b&gt;trend&lt;/b&gt;" in page and "<b>trend</b>" not in page  # rationales are escaped
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_out_dir_under_a_file_is_a_resource_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ResourceError) as info:
        _write(blocker / "run")
    assert "cannot write" in str(info.value) and "\n" not in str(info.value)


def test_full_disk_is_a_resource_error_and_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("trading_agents.fsutil.os.fsync", full)
    with pytest.raises(ResourceError, match="free some disk space"):
        _write(tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_out_dir_is_a_resource_error(tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(ResourceError, match="writable"):
            _write(out)
    finally:
        out.chmod(0o700)
