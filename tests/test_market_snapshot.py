"""Point-in-time snapshots on the bundled GOOG bars, and their prompt text."""

from __future__ import annotations

import json
import re
from datetime import date

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from trading_agents.errors import UserInputError
from trading_agents.market import (
    MarketSnapshot,
    build_snapshot,
    build_snapshots,
    load_bars,
    snapshot_to_prompt,
)
from trading_agents.market import indicators as ind

AS_OF = date(2010, 6, 30)


@pytest.fixture(scope="module")
def goog() -> pd.DataFrame:
    return load_bars(tickers=["GOOG"])["GOOG"]


def test_snapshot_values_match_the_bars(goog: pd.DataFrame) -> None:
    snap = build_snapshot("GOOG", goog, AS_OF)
    upto = goog.loc[:"2010-06-30"]
    close = upto["Close"]
    assert snap.as_of == AS_OF
    assert snap.bars_available == len(upto)
    assert snap.last_close == round(close.iloc[-1], 2)
    assert snap.last_open == round(upto["Open"].iloc[-1], 2)
    assert snap.change_1d_pct == round((close.iloc[-1] / close.iloc[-2] - 1) * 100, 2)
    assert snap.change_20d_pct == round((close.iloc[-1] / close.iloc[-21] - 1) * 100, 2)
    assert snap.sma_20 == round(close.iloc[-20:].mean(), 2)
    assert snap.sma_50 == round(close.iloc[-50:].mean(), 2)
    assert snap.rsi_14 == round(ind.rsi(close).iloc[-1], 2)
    assert snap.high_52w == round(upto["High"].iloc[-252:].max(), 2)
    assert snap.low_52w == round(upto["Low"].iloc[-252:].min(), 2)
    assert snap.recent_closes == [round(c, 2) for c in close.iloc[-5:]]
    assert snap.volume_ratio_20d == round(upto["Volume"].iloc[-1] / upto["Volume"].iloc[-21:-1].mean(), 2)
    assert snap.drawdown_pct == round((close.iloc[-1] / close.max() - 1) * 100, 2)
    assert 0 <= snap.rsi_14 <= 100


def test_no_look_ahead_future_bars_cannot_change_a_snapshot(goog: pd.DataFrame) -> None:
    rng = np.random.default_rng(1)
    reference = build_snapshot("GOOG", goog, AS_OF)
    future = goog.index > pd.Timestamp(AS_OF)
    for trial in range(3):
        tampered = goog.copy()
        factor = rng.uniform(0.1, 10.0, future.sum())
        for col in ("Open", "High", "Low", "Close"):
            tampered.loc[future, col] = tampered.loc[future, col] * factor
        tampered.loc[future, "Volume"] = rng.integers(0, 10**9, future.sum()).astype(float)
        if trial == 2:  # and bars that never existed, far in the future
            extra = pd.DataFrame(
                {"Open": 1e6, "High": 2e6, "Low": 1.0, "Close": 1e6, "Volume": 0.0},
                index=pd.DatetimeIndex(pd.bdate_range("2030-01-01", periods=3), name="Date"),
            )
            tampered = pd.concat([tampered, extra])
        assert build_snapshot("GOOG", tampered, AS_OF) == reference
        assert build_snapshot("GOOG", goog.loc[:"2010-06-30"], AS_OF) == reference


def test_past_bars_do_change_a_snapshot(goog: pd.DataFrame) -> None:
    """The counterpart of the test above: it would catch a snapshot that ignores its input."""
    tampered = goog.copy()
    tampered.loc["2010-06-30", ["High", "Close"]] = [600.0, 600.0]
    assert build_snapshot("GOOG", tampered, AS_OF) != build_snapshot("GOOG", goog, AS_OF)


def test_weekend_and_timestamp_as_of(goog: pd.DataFrame) -> None:
    friday = build_snapshot("GOOG", goog, date(2010, 7, 2))
    assert build_snapshot("GOOG", goog, date(2010, 7, 4)) == friday  # Sunday -> Friday's close
    assert build_snapshot("GOOG", goog, pd.Timestamp("2010-07-02 18:30", tz="America/New_York")) == friday
    assert friday.as_of == date(2010, 7, 2)


def test_as_of_before_first_bar(goog: pd.DataFrame) -> None:
    with pytest.raises(UserInputError, match=r"2004-08-18 is before the first GOOG bar \(2004-08-19\)"):
        build_snapshot("GOOG", goog, date(2004, 8, 18))


def test_short_history_has_nones_not_guesses(goog: pd.DataFrame) -> None:
    snap = build_snapshot("GOOG", goog, date(2004, 8, 20))
    assert snap.bars_available == 2
    assert snap.sma_20 is None and snap.rsi_14 is None and snap.macd is None and snap.high_52w is None
    assert snap.change_5d_pct == 0.0
    text = snapshot_to_prompt(snap)
    assert "5d n/a" in text and "RSI14 n/a" in text


def test_snapshot_is_frozen_and_json_safe(goog: pd.DataFrame) -> None:
    snap = build_snapshot("GOOG", goog, AS_OF)
    with pytest.raises(ValidationError):
        snap.last_close = 1.0  # type: ignore[misc]
    payload = json.loads(snap.model_dump_json())
    assert payload["as_of"] == "2010-06-30"
    assert MarketSnapshot.model_validate(payload) == snap
    with pytest.raises(ValidationError):
        MarketSnapshot.model_validate({**payload, "surprise": 1})


def test_prompt_is_deterministic_and_compact(goog: pd.DataFrame) -> None:
    snap = build_snapshot("GOOG", goog, AS_OF)
    text = snapshot_to_prompt(snap)
    assert text == snapshot_to_prompt(build_snapshot("GOOG", goog.copy(), AS_OF))
    assert text.startswith("GOOG after the close of 2010-06-30")
    assert f"Close {snap.last_close:.0f};" in text and f"RSI14 {snap.rsi_14:.0f}," in text
    words = len(re.findall(r"\S+", text))
    assert 50 <= words <= 170, words  # roughly 150-250 tokens


def test_blind_prompt_hides_ticker_dates_and_price_level(goog: pd.DataFrame) -> None:
    snap = build_snapshot("GOOG", goog, AS_OF)
    text = snapshot_to_prompt(snap, blind=True)
    assert "ASSET" in text and "GOOG" not in text
    assert not re.search(r"\b(19|20)\d\d-\d\d-\d\d\b", text)
    for price in (snap.last_close, snap.sma_20, snap.high_52w, *snap.recent_closes):
        assert f"{price:.0f}" not in text
    rebased_last = snap.last_close / snap.recent_closes[0] * 100
    assert f"Close {rebased_last:.4g};" in text
    # Scale-free numbers are kept as they are.
    assert f"{snap.change_1d_pct:+.1f}%" in text and f"RSI14 {snap.rsi_14:.0f}" in text
    # Two periods with the same shape at different price levels read the same.
    scaled = goog.copy()
    scaled[["Open", "High", "Low", "Close"]] *= 3.0
    assert snapshot_to_prompt(build_snapshot("XYZ", scaled, AS_OF), blind=True) == text


def test_batch_snapshots_equal_one_by_one(goog: pd.DataFrame) -> None:
    rng = np.random.default_rng(5)
    picks = list(rng.choice(goog.index[:600], 12, replace=False))  # unsorted, includes early days
    dates = [goog.index[0], date(2005, 1, 1), *picks, date(2010, 7, 4), goog.index[-1], goog.index[0]]
    batch = build_snapshots("GOOG", goog, dates)
    assert batch == [build_snapshot("GOOG", goog, d) for d in dates]
    assert build_snapshots("GOOG", goog, []) == []
    with pytest.raises(UserInputError, match="before the first GOOG bar"):
        build_snapshots("GOOG", goog, [date(2010, 1, 4), date(2000, 1, 3)])
