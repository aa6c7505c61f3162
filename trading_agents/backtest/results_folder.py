"""Reading a backtest results folder back (the files :func:`~trading_agents.backtest.report.write_results`
writes), for viewers such as the dashboard.

:func:`read_results` checks the folder is complete and readable and raises
:class:`~trading_agents.errors.UserInputError` naming the file and what to do otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from trading_agents.backtest.report import BASELINES_FILE
from trading_agents.errors import UserInputError

SUMMARY = "summary.json"
SUMMARY_KEYS = ("metrics", "baselines", "meta")


@dataclass
class ResultsFolder:
    """A complete results folder: the summary, the per-bar equity table, the trades and,
    when the run wrote them, the comparison curves (buy-and-hold and baselines)."""

    path: Path
    summary: dict[str, Any]
    equity: pd.DataFrame
    trades: pd.DataFrame
    baselines: pd.DataFrame | None

    @property
    def meta(self) -> dict[str, Any]:
        return self.summary.get("meta") or {}

    @property
    def metrics(self) -> dict[str, Any]:
        return self.summary.get("metrics") or {}


def is_results_folder(path: Path) -> bool:
    """Whether ``path`` looks like a backtest results folder (it has a summary.json)."""
    return (Path(path) / SUMMARY).is_file()


def read_summary(folder: Path) -> dict[str, Any]:
    """``summary.json`` of ``folder``, checked for the keys every summary has."""
    path = Path(folder) / SUMMARY
    if not path.is_file():
        raise UserInputError(
            f"{folder} holds no {SUMMARY} (not a results folder, or a run that did not finish);"
            " rerun `trading-agents backtest`"
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{path} is not readable JSON ({exc}); rerun the backtest") from None
    if not isinstance(summary, dict) or any(not isinstance(summary.get(k), dict) for k in SUMMARY_KEYS):
        raise UserInputError(
            f"{path} lacks {', '.join(SUMMARY_KEYS)}: written by another trading-agents version; rerun it"
        )
    return summary


def read_results(folder: Path) -> ResultsFolder:
    """The whole folder; raises :class:`UserInputError` when a file is missing or corrupt."""
    folder = Path(folder)
    summary = read_summary(folder)
    equity = _csv(folder / "equity.csv", index=True)
    if "equity" not in equity.columns:
        raise UserInputError(f"{folder / 'equity.csv'} has no equity column; rerun the backtest")
    trades = _csv(folder / "trades.csv", index=False)
    curves = folder / BASELINES_FILE
    baselines = _csv(curves, index=True) if curves.is_file() else None
    return ResultsFolder(folder, summary, equity, trades, baselines)


def _csv(path: Path, *, index: bool) -> pd.DataFrame:
    if not path.is_file():
        raise UserInputError(f"{path} is missing; rerun the backtest that wrote {path.parent}")
    try:
        if index:
            return pd.read_csv(path, index_col=0, parse_dates=[0])
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UserInputError(f"{path} is not a readable CSV ({exc}); rerun the backtest") from None
