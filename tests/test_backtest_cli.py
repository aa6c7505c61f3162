"""`trading-agents backtest` end to end on the bundled GOOG bars: results folder, --json,
one-line errors with their exit codes, the run lock, the log file, the look-ahead guard."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from trading_agents.backtest.runner import AGENT_DEFAULT_BARS, choose_window, lookahead_warnings
from trading_agents.cli.app import main
from trading_agents.config.settings import load_settings
from trading_agents.fsutil import exclusive_lock

WINDOW = ("--ticker", "GOOG", "--start", "2012-01-01", "--end", "2012-06-30")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["backtest", *argv])
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_sma_cross_json_end_to_end(capsys, tmp_path: Path) -> None:
    out_dir = tmp_path / "sma"
    code, out, err = _cli(
        capsys,
        "--strategy",
        "sma-cross",
        *WINDOW,
        "--fast",
        "5",
        "--slow",
        "15",
        "--out",
        str(out_dir),
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)  # stdout is JSON and nothing else
    metrics = summary["metrics"]
    assert metrics["start"] == "2012-01-03" and metrics["end"] == "2012-06-29"
    assert metrics["num_trades"] > 0 and metrics["commissions"] > 0
    assert set(summary["baselines"]) == {"buy-hold", "macd", "rsi", "random"}
    meta = summary["meta"]
    assert meta["params"] == {"fast": 5, "slow": 15}
    assert meta["window"] == {"start": "2012-01-03", "end": "2012-06-29", "bars": 125}
    assert meta["commission"] == 0.001 and meta["slippage_bps"] == 5.0 and meta["lookahead_warnings"] == []

    names = sorted(p.name for p in out_dir.iterdir())
    assert names == [
        "baselines.csv",
        "decisions.jsonl",
        "equity.csv",
        "ledger.sqlite",
        "rejected_orders.csv",
        "report.html",
        "summary.json",
        "trades.csv",
    ]
    on_disk = json.loads((out_dir / "summary.json").read_text())
    assert on_disk["metrics"] == metrics and on_disk["baselines"] == summary["baselines"]
    trades = pd.read_csv(out_dir / "trades.csv")
    assert len(trades) == metrics["num_trades"]
    assert trades["commission"].sum() <= metrics["commissions"] + 1e-6
    equity = pd.read_csv(out_dir / "equity.csv", index_col="Date", parse_dates=True)
    assert len(equity) == 125 and equity["equity"].iloc[-1] == pytest.approx(metrics["equity_final"])
    decisions = [json.loads(line) for line in (out_dir / "decisions.jsonl").read_text().splitlines()]
    assert decisions and all(d["strategy"] == "sma-cross" for d in decisions)
    html = (out_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "macd" in html


def test_buy_hold_text_output_without_baselines(capsys, tmp_path: Path) -> None:
    out_dir = tmp_path / "bh"
    config = tmp_path / "open.yaml"
    config.write_text("risk:\n  max_order_notional: 1.0e9\n")
    code, out, err = _cli(
        capsys,
        "--strategy",
        "buy-hold",
        *WINDOW,
        "--no-baselines",
        "--cash",
        "50000",
        "--commission",
        "0",
        "--slippage-bps",
        "0",
        "--max-position-pct",
        "1",
        "--config",
        str(config),
        "--out",
        str(out_dir),
    )
    assert code == 0, err
    assert "Return [%]" in out and f"results: {out_dir}" in out
    summary = json.loads((out_dir / "summary.json").read_text())
    m = summary["metrics"]
    assert summary["baselines"] == {} and summary["meta"]["cash"] == 50000
    assert summary["meta"]["config"]["risk"]["max_order_notional"] == 1e9
    # Fully invested from the second bar's open without costs: tracks buy-and-hold closely.
    assert m["num_trades"] == 1 and m["commissions"] == 0
    assert m["return_pct"] == pytest.approx(m["buy_hold_return_pct"], abs=2.5)


def test_malformed_data_file_is_one_line_exit_2(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Date,Open,High,Low,Close,Volume\n2020-01-02,1,2,0.5,1.5,100\n2020-01-03,abc,2,1,1,100\n")
    code, out, err = _cli(capsys, "--strategy", "buy-hold", "--data", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_data_file_runs_like_a_ticker(capsys, tmp_path: Path) -> None:
    from trading_agents.market import load_bars

    frame = load_bars(tickers=["GOOG"], start=dt.date(2011, 1, 1), end=dt.date(2011, 6, 30))["GOOG"]
    csv = tmp_path / "acme.csv"
    frame.to_csv(csv, index_label="Date")
    code, out, err = _cli(
        capsys,
        "--strategy",
        "rsi",
        "--data",
        str(csv),
        "--no-baselines",
        "--out",
        str(tmp_path / "o"),
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["meta"]["tickers"] == ["ACME"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (("--start", "2012-06-01", "--end", "2012-01-01"), "is after --end"),
        (("--start", "2030-01-01", "--end", "2030-12-31"), "the data covers 2004-08-19..2013-03-01"),
        (("--strategy", "moon"), "unknown strategy 'moon'"),
        (("--cash", "0"), "--cash must be greater than 0"),
        (("--commission", "0.2"), "--commission is a fraction"),
        (("--slippage-bps", "-1"), "--slippage-bps cannot be negative"),
        (("--ticker", "GOOG", "--data", "x.csv"), "exclusive"),
        (("--start", "June"), "not a date"),
        (("--fast", "30", "--slow", "10"), "--fast must be"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, tmp_path: Path, argv: tuple[str, ...], needle: str) -> None:
    args = ["--strategy", "sma-cross", *argv] if "--strategy" not in argv else list(argv)
    code, _, err = _cli(capsys, *args, "--out", str(tmp_path / "o"))
    assert code == 2, err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_overlapping_run_exits_6_and_logs_it(capsys, tmp_path: Path) -> None:
    lock, log = tmp_path / "bt.lock", tmp_path / "logs" / "bt.log"
    with exclusive_lock(lock, what="test holder"):
        code, out, err = _cli(
            capsys,
            "--strategy",
            "buy-hold",
            *WINDOW,
            "--lock-file",
            str(lock),
            "--log-file",
            str(log),
            "--out",
            str(tmp_path / "o"),
        )
    assert code == 6 and out == ""
    assert f"another backtest (pid {os.getpid()}) holds {lock}" in err and "retry" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()
    assert "holds" in log.read_text() and "exit code 6" in log.read_text()


def test_lock_held_by_another_process(capsys, tmp_path: Path) -> None:
    lock = tmp_path / "bt.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from trading_agents.fsutil import exclusive_lock\n"
            f"with exclusive_lock({str(lock)!r}):\n print('held', flush=True); time.sleep(3600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, _, err = _cli(
            capsys, "--strategy", "buy-hold", *WINDOW, "--lock-file", str(lock), "--out", str(tmp_path / "o")
        )
        assert code == 6 and f"(pid {holder.pid})" in err
    finally:
        holder.kill()
        holder.wait()
    # Released by the kernel when the holder died: the next run proceeds.
    code, _, err = _cli(
        capsys,
        "--strategy",
        "buy-hold",
        *WINDOW,
        "--lock-file",
        str(lock),
        "--no-baselines",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0, err


def test_log_file_appends_and_skip_closed(capsys, tmp_path: Path) -> None:
    log = tmp_path / "bt.log"
    args = ("--strategy", "macd", *WINDOW, "--no-baselines", "--log-file", str(log))
    assert _cli(capsys, *args, "--out", str(tmp_path / "a"))[0] == 0
    assert _cli(capsys, *args, "--out", str(tmp_path / "b"))[0] == 0
    text = log.read_text()
    assert text.count("backtest macd on GOOG from 2012-01-03 to 2012-06-29") == 2
    assert text.count("results in") == 2

    code, out, err = _cli(
        capsys, "--strategy", "macd", "--skip-closed", "--today", "2024-12-25", "--out", str(tmp_path / "c")
    )
    assert code == 0 and "market closed on 2024-12-25; nothing to do" in err
    assert not (tmp_path / "c").exists()
    code, out, _ = _cli(capsys, "--skip-closed", "--today", "2024-12-28", "--json")
    assert json.loads(out) == {"status": "skipped", "reason": "market closed on 2024-12-28; nothing to do"}


def test_windows_default_to_everything_or_the_last_agent_bars() -> None:
    idx = pd.bdate_range("2020-01-01", periods=300)
    bars = {"X": pd.DataFrame({"Close": 1.0}, index=idx)}
    assert choose_window(bars, "sma-cross", None, None) == (idx[0].date(), idx[-1].date(), 300)
    assert choose_window(bars, "agents", None, None) == (
        idx[-AGENT_DEFAULT_BARS].date(),
        idx[-1].date(),
        AGENT_DEFAULT_BARS,
    )
    end = idx[100].date()
    assert choose_window(bars, "agents", None, end)[0] == idx[101 - AGENT_DEFAULT_BARS].date()
    assert choose_window(bars, "agents", idx[10].date(), end)[2] == 91


def test_lookahead_guard_names_the_cutoff_and_recommends_blind() -> None:
    settings = load_settings()
    lines = lookahead_warnings(settings, dt.date(2012, 1, 3), blind=False)
    assert lines and all("training cutoff" in ln and "--blind" in ln for ln in lines)
    assert any("2024-06-01" in ln for ln in lines)  # the embedded model serves when others are absent
    assert all("hidden" in ln for ln in lookahead_warnings(settings, dt.date(2012, 1, 3), blind=True))
    assert lookahead_warnings(settings, dt.date(2025, 1, 2), blind=False) == []


def test_unwritable_out_is_exit_7_before_running(capsys, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, out, err = _cli(capsys, "--strategy", "buy-hold", *WINDOW, "--out", str(blocker / "run"))
    assert code == 7 and out == ""
    assert err.startswith(f"error: cannot write results to {blocker / 'run'}") and err.count("\n") == 1
