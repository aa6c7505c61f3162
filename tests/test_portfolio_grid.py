"""A grid whose data item is a universe, on a real local Ray: the equal-weight baselines run
beside it and the universe's excess returns are measured against equal-weight buy-and-hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ray_cluster import ray_cluster  # noqa: F401  (module-scoped fixture)
from trading_agents.errors import ConfigError
from trading_agents.grid.cells import expand
from trading_agents.grid.run import run_grid
from trading_agents.grid.spec import spec_from_text

SPEC = """
data: {tickers: [GOOG], universe: [AAPL, GOOG, IBM, MSFT]}
windows: [{start: 2012-09-04, end: 2012-11-30}]
strategies:
  - {name: sma-cross, fast: 5, slow: 20}
  - {name: agents, model: embedded, portfolio: llm}
seed: 3
"""


def test_a_universe_is_one_data_item_with_the_equal_weight_baselines_beside_it() -> None:
    spec = spec_from_text(SPEC)
    labels = [s.default_label() for s in spec.with_reference()]
    assert labels == [
        "sma-cross-5-20",
        "agents-embedded-llm",
        "buy-hold",
        "equal-weight",
        "equal-weight-monthly",
    ]
    cells = expand(spec)
    universe = [c for c in cells if c.universe]
    assert {c.data for c in universe} == {"AAPL+GOOG+IBM+MSFT"} and len(universe) == 5
    request = next(c for c in universe if c.is_agents).request(Path("/tmp/g"), spec.seed)
    assert request.tickers == ["AAPL", "GOOG", "IBM", "MSFT"] and request.portfolio == "llm"
    assert "universe" not in next(c for c in cells if not c.universe).as_dict()  # older cells hash as before


@pytest.mark.parametrize(
    "text, message",
    [
        ("data: {universe: [AAPL]}", "two or more distinct tickers"),
        ("data: {universe: [AAPL, aapl]}", "two or more distinct tickers"),
        ("data: {tickers: [GOOG]}\nstrategies: [{name: buy-hold, portfolio: conviction}]", "for the agents"),
        (
            "data: {tickers: [GOOG]}\nstrategies: [{name: agents, portfolio: all-in}]",
            "strategies.0.portfolio",
        ),
    ],
)
def test_bad_universe_and_portfolio_keys_are_one_line_errors(text: str, message: str) -> None:
    base = "windows: [{start: 2012-09-04, end: 2012-11-30}]\n"
    if "strategies" not in text:
        base += "strategies: [{name: buy-hold}]\n"
    with pytest.raises(ConfigError, match=message):
        spec_from_text(text + "\n" + base)


@pytest.mark.usefixtures("ray_cluster")
def test_universe_cells_are_measured_against_equal_weight_buy_and_hold(tmp_path: Path) -> None:
    spec = spec_from_text(SPEC.replace("  - {name: agents, model: embedded, portfolio: llm}\n", ""))
    outcome = run_grid(spec, tmp_path / "grid", workers=1)
    assert outcome.counts["done"] == outcome.counts["total"] == 8  # 2 items x 4 strategies
    board = outcome.leaderboard
    assert board["grid"]["universe_reference"] == "equal-weight"
    cells = {(c["data"], c["label"]): c for c in board["cells"]}
    universe = "AAPL+GOOG+IBM+MSFT"
    ew = cells[(universe, "equal-weight")]["return_pct"]
    sma = cells[(universe, "sma-cross-5-20")]
    assert sma["benchmark"] == "equal-weight" and sma["excess_pct"] == pytest.approx(
        sma["return_pct"] - ew, abs=1e-5
    )
    assert sma["llm_cost_usd"] == 0 and sma["excess_net_pct"] == pytest.approx(sma["excess_pct"])
    goog = cells[("GOOG", "sma-cross-5-20")]  # a single ticker is still measured against buy-and-hold
    assert goog["benchmark"] == "buy-hold"
    assert goog["excess_pct"] == pytest.approx(
        goog["return_pct"] - cells[("GOOG", "buy-hold")]["return_pct"], abs=1e-5
    )
    monthly = cells[(universe, "equal-weight-monthly")]
    assert monthly["num_trades"] >= cells[(universe, "equal-weight")]["num_trades"]
    rows = {s["label"]: s for s in board["strategies"]}
    assert rows["equal-weight"]["reference"] and "mean_excess_net_pct" in rows["sma-cross-5-20"]
