"""Indicators against values worked out by hand, and the no-look-ahead property."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from trading_agents.market import indicators as ind


def s(*values: float) -> pd.Series:
    return pd.Series(values, index=pd.bdate_range("2021-01-04", periods=len(values)), dtype="float64")


def assert_values(actual: pd.Series, expected: list[float]) -> None:
    np.testing.assert_allclose(actual.to_numpy(), np.array(expected, dtype=float), rtol=1e-9, equal_nan=True)


NAN = math.nan


def test_returns_and_log_returns() -> None:
    close = s(100, 110, 99)
    assert_values(ind.returns(close), [NAN, 0.10, -0.10])
    assert_values(ind.log_returns(close), [NAN, math.log(1.1), math.log(0.9)])


def test_sma() -> None:
    assert_values(ind.sma(s(1, 2, 3, 4, 5), 3), [NAN, NAN, 2, 3, 4])


def test_ema_is_sma_seeded() -> None:
    # span 3 -> alpha 0.5; seed mean(2, 4, 6) = 4; then 4 + .5 (8 - 4) = 6; 6 + .5 (20 - 6) = 13
    assert_values(ind.ema(s(2, 4, 6, 8, 20), 3), [NAN, NAN, 4, 6, 13])


def test_rsi_wilder_by_hand() -> None:
    # changes +1, -.5, +1, -.5; n=2 seeds gain .5 / loss .25 (RS 2), then Wilder steps
    expected = [NAN, NAN, 100 - 100 / 3, 100 - 100 / 7, 100 - 100 / 2.2]
    assert_values(ind.rsi(s(10, 11, 10.5, 11.5, 11), 2), expected)


def test_rsi_edges() -> None:
    assert ind.rsi(s(*range(1, 20)), 14).iloc[-1] == 100.0
    assert ind.rsi(s(*[5.0] * 20), 14).iloc[-1] == 50.0
    assert ind.rsi(s(*range(20, 1, -1)), 14).iloc[-1] == 0.0
    assert ind.rsi(s(*range(1, 15)), 14).isna().all()  # 13 changes < 14


def test_macd_by_hand() -> None:
    close = s(1, 3, 2, 5, 4, 8)
    out = ind.macd(close, fast=2, slow=3, signal=2)
    # ema2: -, 2, 2, 4, 4, 6.6667 ; ema3: -, -, 2, 3.5, 3.75, 5.875
    line = [NAN, NAN, 0.0, 0.5, 0.25, 20 / 3 - 5.875]
    signal = [NAN, NAN, NAN, 0.25, 0.25, 0.25 + 2 / 3 * (line[5] - 0.25)]
    assert_values(out["macd"], line)
    assert_values(out["signal"], signal)
    assert_values(out["hist"], [a - b for a, b in zip(line, signal, strict=True)])
    with pytest.raises(ValueError, match="shorter"):
        ind.macd(close, fast=3, slow=2)


def test_true_range_and_atr_by_hand() -> None:
    bars = pd.DataFrame(
        {"High": [10, 12, 11, 15], "Low": [8, 9, 10, 12], "Close": [9, 11, 10.5, 14]},
        index=pd.bdate_range("2021-01-04", periods=4),
        dtype="float64",
    )
    assert_values(ind.true_range(bars), [2, 3, 1, 4.5])  # the last one is a gap up over 10.5
    assert_values(ind.atr(bars, 2), [NAN, 2.5, 1.75, 3.125])


def test_volatility_by_hand() -> None:
    a, b = math.log(1.1), math.log(0.9)
    expected = abs(a - b) / math.sqrt(2) * math.sqrt(252)
    assert_values(ind.volatility(s(100, 110, 99), 2), [NAN, NAN, expected])
    with pytest.raises(ValueError):
        ind.volatility(s(1, 2), 1)


def test_drawdown() -> None:
    assert_values(ind.drawdown(s(100, 120, 90, 130)), [0, 0, -0.25, 0])


def test_no_look_ahead_on_random_walks() -> None:
    rng = np.random.default_rng(7)
    close = pd.Series(
        100 * np.exp(np.cumsum(rng.normal(0, 0.02, 300))), index=pd.bdate_range("2020-01-01", periods=300)
    )
    spread = close * 0.01
    bars = pd.DataFrame({"High": close + spread, "Low": close - spread, "Close": close})
    funcs = {
        "sma": lambda c, b: ind.sma(c, 20),
        "ema": lambda c, b: ind.ema(c, 12),
        "rsi": lambda c, b: ind.rsi(c, 14),
        "macd": lambda c, b: ind.macd(c)["signal"],
        "atr": lambda c, b: ind.atr(b, 14),
        "vol": lambda c, b: ind.volatility(c, 20),
        "dd": lambda c, b: ind.drawdown(c),
    }
    for cut in (40, 120, 299):
        future = close.copy()
        future.iloc[cut:] = future.iloc[cut:] * rng.uniform(0.2, 5.0, len(future) - cut)
        future_bars = bars.copy()
        future_bars.loc[future.index[cut:], "Close"] = future.iloc[cut:]
        future_bars.loc[future.index[cut:], "High"] = future.iloc[cut:] * 1.5
        for name, fn in funcs.items():
            full = fn(close, bars).iloc[:cut]
            changed = fn(future, future_bars).iloc[:cut]
            pd.testing.assert_series_equal(full, changed, check_names=False, obj=name)
            prefix = fn(close.iloc[:cut], bars.iloc[:cut])
            np.testing.assert_allclose(prefix.to_numpy(), full.to_numpy(), rtol=1e-12, equal_nan=True)


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        ind.sma(s(1, 2, 3), 0)
    with pytest.raises(ValueError, match="window"):
        ind.ema(s(1, 2, 3), 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gaps"):
        ind.ema(s(1, 2, NAN, 4, 5), 2)
