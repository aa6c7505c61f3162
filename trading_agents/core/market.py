"""Market data aligned once per run, and the bars a strategy may see.

:class:`AlignedMarket` puts every ticker on the union of their dates as plain lists, so
the engine reads a bar's prices without touching pandas. :class:`SlicedBars` is what a
strategy gets as ``ctx.bars``: each frame cut to rows dated ``<= as_of``, so a decision
cannot look ahead by construction.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd

from trading_agents.core.broker import BarPrices
from trading_agents.core.orders import DAY_NS, iso_date
from trading_agents.errors import DataValidationError, UserInputError

PRICE_COLUMNS = ("Open", "High", "Low", "Close")
BAR_COLUMNS = (*PRICE_COLUMNS, "Volume")
#: Bars in the average daily dollar volume behind ``risk.max_adv_pct``.
ADV_DAYS = 20


def check_bars(bars: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    if not bars:
        raise UserInputError("no market data given; pass at least one ticker's bars")
    out: dict[str, pd.DataFrame] = {}
    for ticker, df in bars.items():
        if not isinstance(df, pd.DataFrame) or not isinstance(df.index, pd.DatetimeIndex):
            raise DataValidationError(f"{ticker}: bars must be a DataFrame with a DatetimeIndex")
        if df.index.tz is not None:
            raise DataValidationError(f"{ticker}: bar dates must be tz-naive (got {df.index.tz})")
        missing = [c for c in PRICE_COLUMNS if c not in df.columns]
        if missing:
            raise DataValidationError(f"{ticker}: bars lack columns {', '.join(missing)}")
        if df.empty:
            raise DataValidationError(f"{ticker}: no bars")
        if not df.index.is_monotonic_increasing or df.index.has_duplicates:
            raise DataValidationError(f"{ticker}: bar dates must be sorted and unique")
        prices = _price_matrix(df)
        bad = ~(prices > 0).all(axis=1)  # NaN > 0 is False: missing prices are caught too
        if bad.any():
            raise DataValidationError(
                f"{ticker}: missing or non-positive prices on {iso_date(df.index[bad][0])}"
            )
        out[str(ticker)] = df
    return out


class AlignedMarket:
    """All tickers aligned on the union of their dates, as plain lists for fast scalar access.

    Everything per bar that does not depend on the account (dates, ISO dates, the last
    closes and their JSON for the step rows) is computed here once per run.
    """

    def __init__(self, frames: dict[str, pd.DataFrame]) -> None:
        self.frames = frames
        self.tickers = sorted(frames)
        union = frames[self.tickers[0]].index
        for t in self.tickers[1:]:
            union = union.union(frames[t].index)
        self.dates = pd.DatetimeIndex(union, name="Date")
        n = len(self.dates)
        self.open: dict[str, list[float]] = {}
        self.high: dict[str, list[float]] = {}
        self.low: dict[str, list[float]] = {}
        self.close: dict[str, list[float]] = {}
        self.has_bar: dict[str, list[bool]] = {}
        self.rows_upto: dict[str, list[int]] = {}  # rows dated <= dates[i]
        self.last_close: dict[str, list[float]] = {}
        self.last_idx: dict[str, list[int]] = {}  # index into dates of the last bar <= dates[i]; -1 none
        first_bar: list[int] = []
        for t in self.tickers:
            df = frames[t]
            pos = self.dates.get_indexer(df.index)
            has = np.zeros(n, dtype=bool)
            has[pos] = True
            cols = {}
            for name in PRICE_COLUMNS:
                arr = np.full(n, np.nan)
                arr[pos] = df[name].to_numpy(dtype=float)
                cols[name] = arr
            last = np.maximum.accumulate(np.where(has, np.arange(n), -1))
            self.open[t], self.high[t], self.low[t] = (cols[c].tolist() for c in ("Open", "High", "Low"))
            self.close[t] = cols["Close"].tolist()
            self.has_bar[t] = has.tolist()
            self.rows_upto[t] = np.cumsum(has).tolist()
            self.last_idx[t] = last.tolist()
            self.last_close[t] = np.where(last >= 0, cols["Close"][np.maximum(last, 0)], np.nan).tolist()
            first_bar.append(int(pos.min()))
        self.all_from = max(first_bar)  # from this bar on every ticker has data
        self._columns: dict[tuple[str, str], np.ndarray] = {}
        self._adv: dict[str, np.ndarray | None] = {}
        self._timestamps: list[pd.Timestamp] | None = None
        self._iso: list[str] | None = None
        self._days: list[int] | None = None

    @classmethod
    def of(cls, bars: Mapping[str, pd.DataFrame]) -> AlignedMarket:
        """``AlignedMarket(check_bars(bars))``, reusing what an earlier call prepared from the same
        frames when their dates and prices have not changed since (the backtest command runs
        every baseline on the bars of the main run). Only immutable values are shared: each
        market gets ``frames`` itself and its own column copies."""
        frames = {str(t): df for t, df in bars.items()} if bars else {}
        key = tuple(sorted((t, id(df)) for t, df in frames.items()))
        cached = _PREPARED.get(key)
        if cached is not None and len(frames) == len(bars) and cached[1].matches(frames):
            market = object.__new__(cls)
            market.__dict__.update(cached[0].__dict__)
            market.frames, market._columns, market._adv = frames, {}, {}
            return market
        market = cls(check_bars(bars))
        if len(market.dates) * len(market.tickers) <= _PREPARED_MAX_CELLS and len(frames) == len(bars):
            market.timestamps, market.iso, market.days  # noqa: B018 - computed once, shared
            template = object.__new__(cls)
            template.__dict__.update(market.__dict__)
            template.frames, template._columns, template._adv = {}, {}, {}
            _PREPARED[key] = (template, _Fingerprint(frames))
            while len(_PREPARED) > _PREPARED_MAX:
                _PREPARED.pop(next(iter(_PREPARED)))
        return market

    @property
    def timestamps(self) -> list[pd.Timestamp]:
        """``list(dates)``, boxed once."""
        if self._timestamps is None:
            self._timestamps = list(self.dates)
        return self._timestamps

    @property
    def iso(self) -> list[str]:
        """:func:`iso_date` of every date."""
        if self._iso is None:
            stamps = self.dates.to_numpy()
            days = stamps.astype("datetime64[D]")
            if (days == stamps).all():  # all midnights
                self._iso = np.datetime_as_string(days, unit="D").tolist()
            else:
                self._iso = [iso_date(d) for d in self.timestamps]
        return self._iso

    @property
    def days(self) -> list[int] | None:
        """``Timestamp.value // DAY_NS`` of every date; ``None`` beyond what nanoseconds reach."""
        if self._days is None:
            try:
                self._days = (self.dates.as_unit("ns").asi8 // DAY_NS).tolist()
            except (OverflowError, ValueError):
                return None
        return self._days

    def keys(self, i: int) -> list[str]:
        """Tickers with at least one bar dated <= dates[i]."""
        if i >= self.all_from:
            return self.tickers
        return [t for t in self.tickers if self.rows_upto[t][i] > 0]

    def column(self, ticker: str, name: str) -> np.ndarray:
        """Column ``name`` of ``ticker``'s frame as a read-only float64 array that owns its data."""
        key = (ticker, name)
        values = self._columns.get(key)
        if values is None:
            values = np.array(self.frames[ticker][name].to_numpy(dtype=float), dtype=float, copy=True)
            values.flags.writeable = False
            self._columns[key] = values
        return values

    def adv_dollars(self, ticker: str, i: int) -> float | None:
        """The mean of Close x Volume over ``ticker``'s last :data:`ADV_DAYS` bars dated
        ``<= dates[i]`` (fewer at the start of its data); ``None`` without a Volume column or
        a bar. Known at bar ``i``'s close, so a decision there may use it."""
        if ticker not in self._adv:
            frame = self.frames[ticker]
            if "Volume" not in frame.columns:
                self._adv[ticker] = None
            else:
                dollars = frame["Close"].to_numpy(dtype=float) * frame["Volume"].to_numpy(dtype=float)
                mean = pd.Series(dollars).rolling(ADV_DAYS, min_periods=1).mean().to_numpy()
                self._adv[ticker] = mean
        values = self._adv[ticker]
        row = self.rows_upto[ticker][i] - 1
        if values is None or row < 0:
            return None
        value = float(values[row])
        return value if np.isfinite(value) else None

    def bar_prices(self, i: int) -> dict[str, BarPrices]:
        return {
            t: BarPrices(self.open[t][i], self.high[t][i], self.low[t][i], self.close[t][i])
            for t in self.tickers
            if self.has_bar[t][i]
        }

    def prices(self, i: int) -> dict[str, float]:
        return {t: self.last_close[t][i] for t in self.tickers if self.last_idx[t][i] >= 0}

    def prices_range(self, lo: int, hi: int) -> list[dict[str, float]]:
        """``[self.prices(i) for i in range(lo, hi + 1)]``, built column-wise."""
        tickers = self.tickers
        if any(self.last_idx[t][lo] < 0 for t in tickers):  # a ticker starts inside the range
            return [self.prices(i) for i in range(lo, hi + 1)]
        if len(tickers) == 1:
            t = tickers[0]
            return [{t: x} for x in self.last_close[t][lo : hi + 1]]
        columns = [self.last_close[t][lo : hi + 1] for t in tickers]
        return [dict(zip(tickers, row, strict=True)) for row in zip(*columns, strict=True)]


class _Fingerprint:
    """What :class:`AlignedMarket` reads of each frame (the frame itself, weakly, its dates and
    prices), to tell whether a prepared market still describes the frames."""

    def __init__(self, frames: Mapping[str, pd.DataFrame]) -> None:
        self.parts = {
            t: (weakref.ref(df), df.index.dtype, df.index.asi8.copy(), _price_matrix(df))
            for t, df in frames.items()
        }

    def matches(self, frames: Mapping[str, pd.DataFrame]) -> bool:
        if frames.keys() != self.parts.keys():
            return False
        try:
            for t, df in frames.items():
                ref, dtype, stamps, prices = self.parts[t]
                index = df.index
                if (
                    ref() is not df
                    or index.dtype != dtype
                    or not np.array_equal(index.asi8, stamps)
                    or not np.array_equal(_price_matrix(df), prices)
                ):
                    return False
        except Exception:  # anything unexpected: prepare afresh (and validate)
            return False
        return True


def _price_matrix(df: pd.DataFrame) -> np.ndarray:
    return np.column_stack([df[c].to_numpy(dtype=float) for c in PRICE_COLUMNS])


# Markets prepared by AlignedMarket.of, by (ticker, id(frame)) pairs, oldest first.
_PREPARED: dict[tuple[tuple[str, int], ...], tuple[AlignedMarket, _Fingerprint]] = {}
_PREPARED_MAX = 4
_PREPARED_MAX_CELLS = 2_000_000  # bars x tickers; larger markets are not kept


class SlicedBars(Mapping[str, pd.DataFrame]):
    """``ticker -> frame[: rows dated <= as_of]``, sliced lazily on first access.

    :meth:`column` serves single columns as read-only views of arrays the market built
    once, cut at the same row: no DataFrame is sliced for strategies that use it.
    """

    __slots__ = ("_cache", "_i", "_keys", "_market")

    def __init__(self, market: AlignedMarket, i: int) -> None:
        self._market = market
        self._i = i
        self._keys = market.tickers if i >= market.all_from else market.keys(i)
        self._cache: dict[str, pd.DataFrame] | None = None

    def __getitem__(self, ticker: str) -> pd.DataFrame:
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        if ticker not in cache:
            if ticker not in self._keys:
                raise KeyError(ticker)
            cache[ticker] = self._market.frames[ticker].iloc[: self._market.rows_upto[ticker][self._i]]
        return cache[ticker]

    def column(self, ticker: str, name: str = "Close") -> np.ndarray:
        """``self[ticker][name]`` as a read-only float64 view (see :meth:`DecisionContext.column`)."""
        if ticker not in self._keys:
            raise KeyError(ticker)
        return self._market.column(ticker, name)[: self._market.rows_upto[ticker][self._i]]

    def column_span(self, ticker: str, name: str = "Close") -> tuple[np.ndarray, int]:
        """``(column.base, len(column))`` of :meth:`column` without building the view: for
        strategies that keep per-array state and only need a view when it changes. Rows of
        the array from ``len(column)`` on are dated after ``as_of``: not the strategy's."""
        if ticker not in self._keys:
            raise KeyError(ticker)
        market = self._market
        values = market._columns.get((ticker, name))  # market.column(ticker, name), without the call
        if values is None:
            values = market.column(ticker, name)
        return values, market.rows_upto[ticker][self._i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, ticker: object) -> bool:
        return ticker in self._keys
