"""Market data: providers (bundled, CSV, Yahoo), validation, indicators and snapshots.

>>> from trading_agents.market import load_bars, build_snapshot, snapshot_to_prompt
>>> bars = load_bars(tickers=["GOOG"])["GOOG"]
>>> print(snapshot_to_prompt(build_snapshot("GOOG", bars, "2010-06-30")))  # doctest: +SKIP
"""

from __future__ import annotations

from trading_agents.market.base import OHLCV_COLUMNS, MarketDataProvider, normalize_ticker, slice_window
from trading_agents.market.bundled import BUNDLED_TICKERS, BundledProvider, resolve_bundled
from trading_agents.market.csv_provider import CSVProvider, read_yahoo_csv
from trading_agents.market.loader import default_cache_dir, load_bars
from trading_agents.market.snapshot import MarketSnapshot, build_snapshot, build_snapshots, snapshot_to_prompt
from trading_agents.market.validate import bar_warnings, validate_bars
from trading_agents.market.yahoo import YahooProvider

__all__ = [
    "BUNDLED_TICKERS",
    "OHLCV_COLUMNS",
    "BundledProvider",
    "CSVProvider",
    "MarketDataProvider",
    "MarketSnapshot",
    "YahooProvider",
    "bar_warnings",
    "build_snapshot",
    "build_snapshots",
    "default_cache_dir",
    "load_bars",
    "normalize_ticker",
    "read_yahoo_csv",
    "resolve_bundled",
    "slice_window",
    "snapshot_to_prompt",
    "validate_bars",
]
