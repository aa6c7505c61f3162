"""A real sma-cross backtest's report compares honestly: capped and uncapped buy-and-hold side by
side, the caps as a readable table, a price chart with the fills, a trade table, percent units
for every ``_pct`` field and no negative zeros."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from trading_agents.backtest.report import UNCAPPED_BUY_HOLD, caps_rows
from trading_agents.cli.app import main


class _Page(HTMLParser):
    """Table headers and cells, figure captions and the text of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.captions: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._where: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._where.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables and self.tables[-1]:
            self.tables[-1][-1].append("")

    def handle_endtag(self, tag: str) -> None:
        while self._where and self._where.pop() != tag:
            pass

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if "figcaption" in self._where:
            self.captions.append(data)
        elif {"td", "th"} & set(self._where) and self.tables and self.tables[-1] and self.tables[-1][-1]:
            self.tables[-1][-1][-1] += data


@pytest.fixture(scope="module")
def goog_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bt") / "sma"
    args = ["backtest", "-s", "sma-cross", "-t", "GOOG", "--start", "2010-01-04", "--end", "2012-12-31"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--fast", "10", "--slow", "30", "-o", str(out), "--json"])
    assert exc.value.code in (0, None)
    return out


def _table_with(page: _Page, first_cell: str) -> list[list[str]]:
    return next(t for t in page.tables if t and t[0] and t[0][0] == first_cell)


def test_report_shows_capped_and_uncapped_buy_and_hold_and_the_caps_as_a_table(goog_run: Path) -> None:
    page = _Page()
    page.feed((goog_run / "report.html").read_text())
    summary = json.loads((goog_run / "summary.json").read_text())

    compare = next(t for t in page.tables if t and t[0] and UNCAPPED_BUY_HOLD in t[0])
    header = compare[0]
    assert header[1:] == ["sma-cross", "buy-hold", "macd", "rsi", "random", UNCAPPED_BUY_HOLD]
    rows = {r[0]: r[1:] for r in compare[1:]}
    assert rows["Trades under the run's caps"] == ["yes"] * 5 + ["no"]
    capped, uncapped = rows["Return [%]"][1], rows["Return [%]"][-1]
    assert float(capped) == pytest.approx(summary["baselines"]["buy-hold"]["return_pct"], abs=1e-3)
    assert float(uncapped) == pytest.approx(summary["metrics"]["buy_hold_return_pct"], abs=1e-3)
    assert float(capped) < float(uncapped)  # a 20% position cap on a rising stock

    caps = _table_with(page, "cap")
    assert caps[0] == ["cap", "limit", "config key"]
    limits = {r[2]: r[1] for r in caps[1:]}
    assert limits["risk.max_position_pct"] == "20% of equity"
    assert limits["risk.allow_short"] == "not allowed"
    assert limits["risk.max_order_notional"] == "no limit"
    text = "".join(page.text)
    assert not re.search(r"\b(None|False|True)\b", text)  # no Python literals anywhere on the page

    assert "GOOG: price with entries and exits" in page.captions
    assert any("uncapped" in c for c in page.captions)
    trades = _table_with(page, "ticker")
    assert trades[0][:3] == ["ticker", "shares", "entry"]
    assert len(trades) - 1 == summary["metrics"]["num_trades"] == 14


def test_units_are_percent_for_every_pct_field_and_no_negative_zero(goog_run: Path) -> None:
    summary = json.loads((goog_run / "summary.json").read_text())
    trades = pd.read_csv(goog_run / "trades.csv")
    # the same trade: trades.csv return_pct and summary.json best_trade_pct are both percents
    assert trades["return_pct"].max() == pytest.approx(summary["metrics"]["best_trade_pct"])
    assert trades["return_pct"].min() == pytest.approx(summary["metrics"]["worst_trade_pct"])
    page = (goog_run / "report.html").read_text()
    assert not re.search(r">-0(\.0+)?%?<", page)


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        ({"max_position_pct": 0.2}, "20% of equity"),
        ({"max_order_notional": 25000.0}, "25,000.00"),
        ({"max_order_notional_pct": None}, "no limit"),
        ({"allow_short": False}, "not allowed"),
        ({"allow_short": True}, "allowed"),
    ],
)
def test_caps_read_as_a_person_writes_them(caps: dict, expected: str) -> None:
    [(_, _, text)] = caps_rows(caps)
    assert text == expected


@pytest.mark.parametrize(("value", "text"), [(-0.0, "0"), (-0.0001, "0"), (-0.0004, "0"), (-1.5, "-1.5")])
def test_no_negative_zero_in_formatted_metrics(value: float, text: str) -> None:
    from trading_agents.backtest.metrics import format_metric

    assert format_metric("max_drawdown_pct", value) == text


@pytest.mark.parametrize(
    ("values", "bound"),
    [([-0.02, 0.01], 5.0), ([-12.0, 3.0], 12.0), ([float("nan")], 5.0), ([], 5.0), ([7.5, -1.0], 7.5)],
)
def test_heatmap_scale_is_symmetric_around_zero_with_a_minimum_range(
    values: list[float], bound: float
) -> None:
    """A -0.02% cell is a pale tint on a +-5% scale, not the deepest red of a +-0.02% one."""
    from trading_agents.grid.report import heatmap_bound

    assert heatmap_bound(values) == bound


def test_grid_report_states_the_caps_and_wraps_routes() -> None:
    from trading_agents.grid.report import _llm_table, caps_table

    caps = caps_table({"max_position_pct": 0.2, "allow_short": False, "max_order_notional": None})
    assert "20% of equity" in caps and "not allowed" in caps and "no limit" in caps
    assert "None" not in caps and "False" not in caps
    routes = {"smollm2-135m-instruct:primary": 40, "tinyllama-1.1b-chat:deadline": 3}
    table = _llm_table([{"label": "smol", "llm": {"decisions": 10, "routes": routes}}])
    assert 'class="routes"' in table and "<br>" in table and "{" not in table  # one route a line, no JSON
