"""The step engine: one loop for backtests and paper sessions, backed by the ledger.

For every bar date in ``[start, end]`` (the union of all tickers' dates; a ticker without a
bar that day keeps its last close and its staleness is seen by the risk engine):

1. fill pending orders at this bar's prices, then apply protective stops;
2. mark positions to market at the Close;
3. feed the equity to the kill switch (HALTED cancels pending orders that grow positions);
4. unless this is the last bar and ``decide_on_last_bar`` is off: call the strategy with
   bars sliced to ``<= this date`` (no look-ahead by construction), risk-check each intent
   (clip or veto, recorded), queue the accepted ones for the next bar;
5. on the last bar with ``close_at_end``: cancel what is pending and close every position at
   the Close (fills with reason "end of run", commission charged);
6. commit the step (fills, orders, positions, cash, step row, decision record, risk events)
   in ONE ledger transaction.

Resume: running again with a ``run_id`` whose steps exist continues after the last committed
step. Committed bars are not replayed: the strategy is not called for them and ``on_step``
gets no event for them; ``EngineResult.resumed_steps`` counts them and the events of a
continued run carry ``resumed=True``. The result is always built from the ledger, so a
crashed-then-resumed run reports exactly what an uninterrupted run reports.

A file-backed ledger is guarded by ``exclusive_lock(<ledger>.lock)``: a second engine on the
same ledger gets :class:`~trading_agents.errors.LockBusyError`. ``trading-agents halt`` does
not need the lock; the engine adopts a halt or resume at its next bar.
"""

from __future__ import annotations

import json
import math
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from trading_agents.backtest.strategy import (
    DecisionContext,
    OrderIntent,
    PortfolioView,
    Strategy,
    StrategyDecision,
)
from trading_agents.broker.ledger import Ledger, StepRecord, positions_json
from trading_agents.broker.orders import Fill, Order, client_order_id, iso_date
from trading_agents.broker.paper import BarPrices, PaperBroker
from trading_agents.config.settings import RiskSettings
from trading_agents.errors import DataValidationError, UserInputError
from trading_agents.fsutil import atomic_write_text, exclusive_lock
from trading_agents.risk.limits import RiskCheck, RiskEngine, RiskEvent

if TYPE_CHECKING:
    from trading_agents.config.settings import Settings

PRICE_COLUMNS = ("Open", "High", "Low", "Close")
_NO_IDS: frozenset[str] = frozenset()
_NONE: list[Any] = []  # never changed: the loop copies it before handing it on
_DAY_NS = 86_400_000_000_000
BAR_COLUMNS = (*PRICE_COLUMNS, "Volume")


@dataclass(frozen=True)
class EngineConfig:
    """Money, costs and limits of a run. ``EngineConfig.from_settings`` maps the config file."""

    cash: float = 100_000.0
    commission: float = 0.001
    slippage_bps: float = 5.0
    risk: RiskSettings = field(default_factory=RiskSettings)
    decide_on_last_bar: bool = False  # paper session: True (the order waits for the next bar)
    close_at_end: bool = True  # backtest: flatten at the last close

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> EngineConfig:
        """Cash, commission, slippage from ``broker:`` and limits from ``risk:``."""
        base = cls(
            cash=settings.broker.cash,
            commission=settings.broker.commission,
            slippage_bps=settings.broker.slippage_bps,
            risk=settings.risk,
        )
        return replace(base, **overrides)

    @classmethod
    def for_session(cls, settings: Settings) -> EngineConfig:
        """A paper session's config: the last bar is decided too (its order waits for the next
        bar) and positions stay open at the end, unlike a backtest's."""
        return cls.from_settings(settings, decide_on_last_bar=True, close_at_end=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cash": self.cash,
            "commission": self.commission,
            "slippage_bps": self.slippage_bps,
            "risk": self.risk.model_dump(mode="json"),
            "decide_on_last_bar": self.decide_on_last_bar,
            "close_at_end": self.close_at_end,
        }


@dataclass
class StepEvent:
    """Passed to ``on_step`` after each committed bar."""

    bar_date: pd.Timestamp
    index: int  # 0-based position of the bar in the run
    total: int  # bars in the run
    decision: StrategyDecision | None
    orders: list[Order]
    fills: list[Fill]
    risk_events: list[RiskEvent]
    equity: float
    cash: float
    resumed: bool


@dataclass
class EngineResult:
    """Everything a report needs; built from the ledger (the single source of truth).

    ``equity``: index Date; columns equity, cash, exposure (gross position value / equity),
    drawdown (<= 0 fraction) and ``pos_<TICKER>`` share counts. ``trades``: FIFO round trips
    (see :func:`round_trips`); positions still open at the end are not trades. ``decisions``:
    ``{bar_date (ISO string), strategy, ticker, record}`` for every decision with a record.
    ``risk_events``: ``{bar_date, ticker, kind, rule, detail, created_at}``.
    """

    run_id: str
    strategy: str
    start: pd.Timestamp
    end: pd.Timestamp
    starting_cash: float
    equity: pd.DataFrame
    trades: pd.DataFrame
    fills: pd.DataFrame
    orders: pd.DataFrame
    decisions: list[dict[str, Any]]
    risk_events: list[dict[str, Any]]
    commissions: float
    resumed_steps: int
    ledger_path: Path | None = None

    @property
    def final_equity(self) -> float:
        return float(self.equity["equity"].iloc[-1]) if len(self.equity) else self.starting_cash


# -- market data, aligned once -------------------------------------------------------------------


def _check_bars(bars: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
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


class _Market:
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
        self._timestamps: list[pd.Timestamp] | None = None
        self._iso: list[str] | None = None
        self._days: list[int] | None = None
        self._prices_json: dict[tuple[int, int], list[str]] = {}

    @classmethod
    def of(cls, bars: Mapping[str, pd.DataFrame]) -> _Market:
        """``_Market(_check_bars(bars))``, reusing what an earlier call prepared from the same
        frames when their dates and prices have not changed since (the backtest command runs
        every baseline on the bars of the main run). Only immutable values are shared: each
        market gets ``frames`` itself and its own column copies."""
        frames = {str(t): df for t, df in bars.items()} if bars else {}
        key = tuple(sorted((t, id(df)) for t, df in frames.items()))
        cached = _PREPARED.get(key)
        if cached is not None and len(frames) == len(bars) and cached[1].matches(frames):
            market = object.__new__(cls)
            market.__dict__.update(cached[0].__dict__)
            market.frames, market._columns = frames, {}
            return market
        market = cls(_check_bars(bars))
        if len(market.dates) * len(market.tickers) <= _PREPARED_MAX_CELLS and len(frames) == len(bars):
            market.timestamps, market.iso, market.days  # noqa: B018 - computed once, shared
            template = object.__new__(cls)
            template.__dict__.update(market.__dict__)
            template.frames, template._columns = {}, {}
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
        """``Timestamp.value // _DAY_NS`` of every date; ``None`` beyond what nanoseconds reach."""
        if self._days is None:
            try:
                self._days = (self.dates.as_unit("ns").asi8 // _DAY_NS).tolist()
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

    def prices_json(self, lo: int, hi: int) -> list[str]:
        """The ledger's JSON of :meth:`prices` for bars ``lo..hi``, built column-wise (the
        list is shared between runs: read it, never change it)."""
        texts = self._prices_json.get((lo, hi))
        if texts is None:
            texts = self._prices_json[(lo, hi)] = self._encode_prices(lo, hi)
        return texts

    def _encode_prices(self, lo: int, hi: int) -> list[str]:
        tickers = self.tickers
        if len(tickers) == 1 and self.last_idx[tickers[0]][lo] >= 0:  # one ticker, a price every bar
            head = "{" + json.dumps(tickers[0]) + ":"
            # json writes floats as _json_float does; one join and split wrap them all
            texts = json.dumps(self.last_close[tickers[0]][lo : hi + 1])[1:-1].split(", ")
            return (head + ("}\n" + head).join(texts) + "}").split("\n")
        columns: list[list[str | None]] = []
        for t in self.tickers:
            key = json.dumps(t) + ":"
            closes = self.last_close[t][lo : hi + 1]
            if self.last_idx[t][lo] >= 0:  # data on every bar of the range
                # json writes floats as _json_float does; one join and split prefix them all
                texts = json.dumps(closes)[1:-1].split(", ") if closes else []
                columns.append((key + ("\n" + key).join(texts)).split("\n") if texts else [])
            else:
                idx = self.last_idx[t][lo : hi + 1]
                columns.append(
                    [key + _json_float(x) if j >= 0 else None for x, j in zip(closes, idx, strict=True)]
                )
        if len(columns) == 1 and all(columns[0]):
            return ["{" + part + "}" for part in columns[0]]  # type: ignore[operator]
        return [
            "{" + ",".join(p for p in parts if p is not None) + "}" for parts in zip(*columns, strict=True)
        ]


class _Fingerprint:
    """What :class:`_Market` reads of each frame (the frame itself, weakly, its dates and
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


# Markets prepared by _Market.of, by (ticker, id(frame)) pairs, oldest first.
_PREPARED: dict[tuple[tuple[str, int], ...], tuple[_Market, _Fingerprint]] = {}
_PREPARED_MAX = 4
_PREPARED_MAX_CELLS = 2_000_000  # bars x tickers; larger markets are not kept


def _json_float(x: float) -> str:
    """A float as :mod:`json` writes it (``allow_nan``)."""
    if x != x:
        return "NaN"
    if x in (math.inf, -math.inf):
        return "Infinity" if x > 0 else "-Infinity"
    return float.__repr__(x)


class _SlicedBars(Mapping[str, pd.DataFrame]):
    """``ticker -> frame[: rows dated <= as_of]``, sliced lazily on first access.

    :meth:`column` serves single columns as read-only views of arrays the market built
    once, cut at the same row: no DataFrame is sliced for strategies that use it.
    """

    __slots__ = ("_cache", "_i", "_keys", "_market")

    def __init__(self, market: _Market, i: int) -> None:
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


# -- the run -------------------------------------------------------------------------------------


def run_engine(
    bars: Mapping[str, pd.DataFrame],
    strategy: Strategy,
    config: EngineConfig,
    ledger: Ledger,
    run_id: str,
    *,
    kind: Literal["session", "backtest"] = "backtest",
    start: pd.Timestamp | str | None = None,
    end: pd.Timestamp | str | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
    record_config: Mapping[str, Any] | None = None,
) -> EngineResult:
    """Run (or continue) ``strategy`` over ``bars`` and return the whole run from the ledger.

    ``record_config`` (for example ``settings.public_dict()``, secrets masked) is stored with
    the run next to the engine config. Bars before ``start`` are visible to the strategy as
    history (warm-up) but not traded.

    Example::

        with Ledger.open(":memory:") as ledger:
            result = run_engine({"GOOG": frame}, SmaCross(10, 20), EngineConfig(), ledger, "bt-1")
    """
    market = _Market.of(bars)
    lo, hi = _range(market.dates, start, end)
    lock = exclusive_lock(Path(f"{ledger.path}.lock"), "another engine run") if ledger.path else nullcontext()
    with lock:
        runner = _Runner(market, strategy, config, ledger, run_id, kind, lo, hi, record_config)
        runner.run(on_step)
        return build_result(ledger, run_id, market.tickers, resumed_steps=runner.resumed_steps)


def _range(dates: pd.DatetimeIndex, start: Any, end: Any) -> tuple[int, int]:
    lo = 0 if start is None else int(dates.searchsorted(pd.Timestamp(start), side="left"))
    hi = len(dates) - 1 if end is None else int(dates.searchsorted(pd.Timestamp(end), side="right")) - 1
    if lo > hi:
        raise UserInputError(
            f"no bars between {start or 'the first bar'} and {end or 'the last bar'}; "
            f"the data covers {iso_date(dates[0])} to {iso_date(dates[-1])}"
        )
    return lo, hi


class _Runner:
    def __init__(
        self,
        market: _Market,
        strategy: Strategy,
        config: EngineConfig,
        ledger: Ledger,
        run_id: str,
        kind: Literal["session", "backtest"],
        lo: int,
        hi: int,
        record_config: Mapping[str, Any] | None,
    ) -> None:
        self.market, self.strategy, self.config, self.ledger = market, strategy, config, ledger
        self.run_id, self.lo, self.hi = run_id, lo, hi
        name = str(getattr(strategy, "name", type(strategy).__name__))
        self.strategy_name = name
        run = ledger.get_run(run_id)
        if run is None:
            state, reason = ledger.session_default_state() if kind == "session" else ("ACTIVE", "")
            ledger.create_run(
                run_id,
                kind=kind,
                strategy=name,
                starting_cash=config.cash,
                config={
                    "engine": config.as_dict(),
                    **({"settings": dict(record_config)} if record_config else {}),
                },
                risk_state=state,
                halt_reason=reason,
            )
        elif run.kind != kind or run.strategy != name:
            raise UserInputError(
                f"run {run_id!r} exists as a {run.kind} of strategy {run.strategy!r}, "
                f"not a {kind} of {name!r}; choose another run id"
            )
        acct = ledger.account(run_id)
        assert acct is not None
        self.version = acct.state_version
        self.broker = PaperBroker(
            acct.cash,
            commission=config.commission,
            slippage_bps=config.slippage_bps,
            allow_short=config.risk.allow_short,
            run_id=run_id,
            positions=ledger.positions(run_id),
            pending=ledger.orders(run_id, status="pending"),
        )
        self.risk = RiskEngine(
            config.risk,
            commission=config.commission,
            slippage_bps=config.slippage_bps,
            state=acct.risk_state,  # type: ignore[arg-type]
            halt_reason=acct.halt_reason,
            peak_equity=acct.peak_equity,
            day_start_equity=acct.day_start_equity,
            last_equity=acct.last_equity,
            last_date=acct.last_step_date,
        )
        self.first = lo
        if acct.last_step_date is not None:
            self.first = max(lo, int(market.dates.searchsorted(acct.last_step_date, side="right")))
        self.resumed_steps = self.first - lo if acct.last_step_date is not None else 0

    def run(self, on_step: Callable[[StepEvent], None] | None) -> None:
        if self.first > self.hi:
            return
        ledger = self.ledger
        ledger.set_run_status(self.run_id, "running")
        # A ":memory:" ledger dies with the process, so per-bar durability buys nothing there:
        # its steps are written in batches (every read through the ledger still sees them all).
        batched = ledger.deferred_steps() if ledger.path is None else nullcontext()
        try:
            with batched:
                self.prepare()
                self.loop(on_step)
        except BaseException:
            with suppress(Exception):  # the original error matters more than the status
                ledger.set_run_status(self.run_id, "failed")
            raise
        ledger.set_run_status(self.run_id, "completed")

    def prepare(self) -> None:
        """Per-bar values that do not depend on the account, for the bars of this run, and
        the callables of the bar loop (bound once: the loop runs for every bar)."""
        market, first, hi = self.market, self.first, self.hi
        self.timestamps = market.timestamps
        self.iso = market.iso
        last = self.risk.last_date
        self.days = market.days if last is None or last.tzinfo is None else None
        self.prices_at = market.prices_range(first, hi)
        self.prices_json = market.prices_json(first, hi)
        self.positions_json = positions_json(self.broker.positions)
        self.decide = self.strategy.decide
        self.commit_quiet = self.ledger.commit_quiet_step

    def _sync_risk_state(self, date: pd.Timestamp) -> list[Order]:
        """Adopt a halt/resume written by the CLI since the last step."""
        if self.ledger.state_version(self.run_id) == self.version:
            return []
        acct = self.ledger.account(self.run_id)
        if acct is None:
            return []
        self.version = acct.state_version
        risk = self.risk
        risk.state, risk.halt_reason = acct.risk_state, acct.halt_reason  # type: ignore[assignment]
        risk.peak_equity, risk.day_start_equity = acct.peak_equity, acct.day_start_equity
        if risk.state == "ACTIVE":
            return []
        return self.broker.cancel_pending(date, f"cancelled: {risk.state}", only_increasing=True)

    def loop(self, on_step: Callable[[StepEvent], None] | None) -> None:
        """:meth:`step` for every bar of the run, inlined.

        Most bars of a backtest are quiet: no risk event, a decision without intents or record,
        and (usually) nothing pending. This loop does exactly what :meth:`step` does for a bar,
        with the kill switch and the marks inlined and the step row of a quiet bar written
        without building a record; the last bar, a bar after a halt or resume written by
        another process, and a bar with a risk event go through the general code.
        """
        broker, risk, market, ledger = self.broker, self.risk, self.market, self.ledger
        run_id, lo, hi, first = self.run_id, self.lo, self.hi, self.first
        timestamps, iso, prices_at, prices_json = self.timestamps, self.iso, self.prices_at, self.prices_json
        decide, commit_quiet, update = self.decide, self.commit_quiet, risk.update
        state_version, step = ledger.state_version, self.step
        limits, days = risk.settings, self.days
        want = on_step is not None
        for i in range(first, hi + 1):
            if i == hi or state_version(run_id) != self.version:
                event = step(i, want)
                if want:
                    on_step(event)  # type: ignore[misc,arg-type]
                continue
            date = timestamps[i]
            k = i - first
            prices = prices_at[k]
            fills: list[Fill] = _NONE  # fresh lists only for a bar that has something
            touched: list[Order] = _NONE
            before: frozenset[str] | set[str] = _NO_IDS
            positions = broker.positions
            if broker.pending or (positions and not broker.idle()):
                if broker.pending:
                    before = {o.client_order_id for o in broker.pending}
                fills, touched = broker.process_bar(date, market.bar_prices(i))
                positions = broker.positions
            cash = broker.cash
            if not positions:
                equity = cash + 0  # what PaperBroker.equity gives
                gross: float = 0
                holdings: dict[str, int] = {}
            elif len(positions) == 1:  # PaperBroker.equity, gross_value and holdings in one go
                for t, p in positions.items():
                    q = p.quantity
                    close = prices[t]
                    equity = cash + (0 + q * close)
                    gross = 0 + abs(q) * close
                    holdings = {t: q} if q else {}
            else:
                equity = broker.equity(prices)
                gross = broker.gross_value(prices)
                holdings = broker.holdings()
            # RiskEngine.update, inlined for the usual case; any other goes through it
            last, peak, day_start = risk.last_date, risk.peak_equity, risk.day_start_equity
            if last is None or peak is None or day_start is None or days is None or risk.state == "HALTED":
                events = update(equity, date)
            else:
                if days[i] != last.value // _DAY_NS:  # a new day (both dates are tz-naive)
                    day_start = risk.last_equity if risk.last_equity is not None else equity
                if equity > peak:
                    peak = equity
                daily = 1.0 - equity / day_start if day_start > 0 else 0.0
                drawdown = 1.0 - equity / peak if peak > 0 else 0.0
                if daily > limits.max_daily_loss_pct or drawdown > limits.max_drawdown_pct:
                    events = update(equity, date)  # trips the kill switch, as it would have
                else:
                    risk.day_start_equity, risk.peak_equity = day_start, peak
                    risk.last_date, risk.last_equity = date, equity
                    events = []
            if events:
                touched = list(touched)
                if any(e.kind == "halt" for e in events):
                    touched += broker.cancel_pending(date, "cancelled: HALTED", only_increasing=True)
                fills = list(fills)
                event = self._decide_and_finish(
                    i, date, k, prices, equity, events, touched, fills, before, want
                )
                if want:
                    on_step(event)  # type: ignore[misc,arg-type]
                continue
            peak, day_start = risk.peak_equity, risk.day_start_equity
            view = PortfolioView(
                cash, equity, holdings, prices, float(peak or equity), float(day_start or equity), risk.state
            )
            decision = decide(DecisionContext(date, _SlicedBars(market, i), view, i - lo))
            if type(decision) is not StrategyDecision and not isinstance(decision, StrategyDecision):
                raise TypeError(
                    f"{self.strategy_name}.decide returned {type(decision).__name__}, not StrategyDecision"
                )
            if touched or fills or decision.intents or decision.record is not None:
                event = self._finish(
                    i,
                    date,
                    k,
                    prices,
                    equity,
                    events,
                    list(touched),
                    list(fills),
                    before,
                    decision,
                    view,
                    want,
                )
            else:  # a quiet bar: nothing but the marks
                exposure = gross / equity if equity > 0 else (0.0 if gross == 0 else math.inf)
                peak, day_start = risk.peak_equity, risk.day_start_equity
                commit_quiet(
                    run_id,
                    i - lo,
                    iso[i],
                    equity,
                    cash,
                    exposure,
                    self.positions_json,
                    prices_json[k],
                    risk.state,
                    risk.halt_reason,
                    self.version,
                    float(peak if peak is not None else equity),
                    float(day_start if day_start is not None else equity),
                )
                if not want:
                    continue
                event = StepEvent(
                    bar_date=date,
                    index=i - lo,
                    total=hi - lo + 1,
                    decision=decision,
                    orders=[],
                    fills=[],
                    risk_events=events,
                    equity=equity,
                    cash=cash,
                    resumed=self.resumed_steps > 0,
                )
            if want:
                on_step(event)  # type: ignore[misc,arg-type]

    def step(self, i: int, want_event: bool = True) -> StepEvent | None:
        broker, risk = self.broker, self.risk
        date = self.timestamps[i]
        before = {o.client_order_id for o in broker.pending} if broker.pending else _NO_IDS
        touched: list[Order] = self._sync_risk_state(date)

        fills: list[Fill] = []
        if broker.pending or (broker.positions and not broker.idle()):
            fills, changed = broker.process_bar(date, self.market.bar_prices(i))
            touched += changed
        k = i - self.first  # index into the per-bar lists of prepare()
        prices = self.prices_at[k]
        equity = broker.equity(prices)
        events = risk.update(equity, date)
        if events and any(e.kind == "halt" for e in events):
            touched += broker.cancel_pending(date, "cancelled: HALTED", only_increasing=True)
        return self._decide_and_finish(i, date, k, prices, equity, events, touched, fills, before, want_event)

    def _decide_and_finish(
        self,
        i: int,
        date: pd.Timestamp,
        k: int,
        prices: dict[str, float],
        equity: float,
        events: list[RiskEvent],
        touched: list[Order],
        fills: list[Fill],
        before: frozenset[str] | set[str],
        want_event: bool,
    ) -> StepEvent | None:
        """The rest of :meth:`step` once the bar is marked and the kill switch fed."""
        broker, risk = self.broker, self.risk
        decision: StrategyDecision | None = None
        view: PortfolioView | None = None
        if i != self.hi or self.config.decide_on_last_bar:
            view = PortfolioView(
                broker.cash,
                equity,
                broker.holdings(),
                prices,
                float(risk.peak_equity or equity),
                float(risk.day_start_equity or equity),
                risk.state,
            )
            decision = self.decide(DecisionContext(date, _SlicedBars(self.market, i), view, i - self.lo))
            if type(decision) is not StrategyDecision and not isinstance(decision, StrategyDecision):
                raise TypeError(
                    f"{self.strategy_name}.decide returned {type(decision).__name__}, not StrategyDecision"
                )
        return self._finish(
            i, date, k, prices, equity, events, touched, fills, before, decision, view, want_event
        )

    def _finish(
        self,
        i: int,
        date: pd.Timestamp,
        k: int,
        prices: dict[str, float],
        equity: float,
        events: list[RiskEvent],
        touched: list[Order],
        fills: list[Fill],
        before: frozenset[str] | set[str],
        decision: StrategyDecision | None,
        view: PortfolioView | None,
        want_event: bool,
    ) -> StepEvent | None:
        """Risk-check and queue the decision's intents, close out on the last bar, commit."""
        broker, risk = self.broker, self.risk
        if decision is not None and decision.intents:
            assert view is not None
            orders, check_events = self._orders(decision.intents, view, date, i)
            touched += orders
            events += check_events

        if i == self.hi and self.config.close_at_end:
            touched += broker.cancel_pending(date, "end of run")
            close_fills, close_orders = broker.close_all(date, prices)
            fills += close_fills
            touched += close_orders
            equity = broker.equity(prices)

        unique: dict[str, Order] = {}
        for order in touched:
            unique[order.client_order_id] = order
        if fills:
            self.positions_json = positions_json(broker.positions)
        gross = broker.gross_value(prices) if broker.positions else 0
        exposure = gross / equity if equity > 0 else (0.0 if gross == 0 else math.inf)
        peak = float(risk.peak_equity if risk.peak_equity is not None else equity)
        day_start = float(risk.day_start_equity if risk.day_start_equity is not None else equity)
        record = decision.record if decision is not None else None
        if unique or fills or events or record is not None:
            self.ledger.commit_step(
                StepRecord(
                    run_id=self.run_id,
                    bar_date=date,
                    step_index=i - self.lo,
                    equity=equity,
                    cash=broker.cash,
                    exposure=exposure,
                    positions=broker.positions,
                    prices=prices,
                    risk_state=risk.state,
                    halt_reason=risk.halt_reason,
                    state_version=self.version,
                    peak_equity=peak,
                    day_start_equity=day_start,
                    new_orders=[o for cid, o in unique.items() if cid not in before],
                    updated_orders=[o for cid, o in unique.items() if cid in before],
                    fills=fills,
                    risk_events=events,
                    strategy=self.strategy_name,
                    decision_record=record,
                    bar_iso=self.iso[i],
                    positions_json=self.positions_json,
                    prices_json=self.prices_json[k],
                )
            )
        else:  # most bars: nothing but the marks (positional: this runs for every bar)
            self.commit_quiet(
                self.run_id,
                i - self.lo,
                self.iso[i],
                equity,
                broker.cash,
                exposure,
                self.positions_json,
                self.prices_json[k],
                risk.state,
                risk.halt_reason,
                self.version,
                peak,
                day_start,
            )
        if not want_event:
            return None
        return StepEvent(
            bar_date=date,
            index=i - self.lo,
            total=self.hi - self.lo + 1,
            decision=decision,
            orders=list(unique.values()),
            fills=fills,
            risk_events=events,
            equity=equity,
            cash=broker.cash,
            resumed=self.resumed_steps > 0,
        )

    def _orders(
        self, intents: Sequence[OrderIntent], view: PortfolioView, date: pd.Timestamp, i: int
    ) -> tuple[list[Order], list[RiskEvent]]:
        """Risk-check each intent against the view as updated by the intents before it."""
        market, broker, cfg = self.market, self.broker, self.config
        orders: list[Order] = []
        events: list[RiskEvent] = []
        cash = view.cash
        positions = dict(view.positions)
        for seq, intent in enumerate(intents):
            ticker = str(intent.ticker)
            if ticker not in market.last_idx or market.last_idx[ticker][i] < 0:
                veto = RiskEvent(
                    "veto", "unknown_ticker", f"no market data for {ticker!r} at {iso_date(date)}", ticker
                )
                check = RiskCheck(0, True, [veto])
                ref = math.nan
            else:
                ref = market.last_close[ticker][i]
                data_date = self.timestamps[market.last_idx[ticker][i]]
                working = PortfolioView(
                    cash,
                    view.equity,
                    positions,
                    view.prices,
                    view.peak_equity,
                    view.day_start_equity,
                    view.risk_state,
                )
                check = self.risk.check(intent, working, ref, date, data_date)
            events += check.events
            vetoes = [e for e in check.events if e.kind == "veto"]
            order = Order(
                client_order_id=client_order_id(self.run_id, date, ticker, str(intent.side), seq),
                ticker=ticker,
                side=intent.side,
                quantity=check.quantity,
                order_type=intent.order_type,
                limit_price=intent.limit_price,
                time_in_force=intent.time_in_force,
                stop_loss=intent.stop_loss,
                created_at=date,
                status="rejected" if check.vetoed else "pending",
                reason=f"vetoed ({vetoes[0].rule}): {vetoes[0].detail}" if vetoes else intent.reason,
                requested_quantity=intent.quantity,
                updated_at=date,
            )
            if check.vetoed:
                if _storable(order):  # an intent with an unknown side or type is only a risk event
                    orders.append(order)
                continue
            orders.append(order)
            broker.submit(order)
            signed = check.quantity if intent.side == "buy" else -check.quantity
            positions[ticker] = positions.get(ticker, 0) + signed
            if intent.side == "buy":
                unit = (
                    intent.limit_price
                    if intent.order_type == "limit"
                    else ref * (1 + cfg.slippage_bps / 10_000)
                )
                cash -= check.quantity * float(unit) * (1 + cfg.commission)
        return orders, events


def _storable(order: Order) -> bool:
    """Whether the ledger's CHECK constraints accept the order's enum fields."""
    return (
        order.order_type in ("market", "limit")
        and order.time_in_force in ("day", "gtc")
        and order.side
        in (
            "buy",
            "sell",
        )
    )


# -- results -------------------------------------------------------------------------------------


def build_result(
    ledger: Ledger, run_id: str, tickers: Sequence[str] = (), *, resumed_steps: int = 0
) -> EngineResult:
    """Assemble an :class:`EngineResult` for ``run_id`` from what the ledger holds."""
    run = ledger.get_run(run_id)
    if run is None:
        raise UserInputError(f"no run {run_id!r} in the ledger")
    steps = ledger.step_table(run_id)
    index = _date_index(steps["bar_date"])
    values = np.array(steps["equity"], dtype=float)
    columns: dict[str, Any] = {
        "equity": values,
        "cash": np.array(steps["cash"], dtype=float),
        "exposure": np.array(steps["exposure"], dtype=float),
    }
    if len(values) and not np.isnan(values).any():
        columns["drawdown"] = values / np.maximum.accumulate(values) - 1.0  # what Series.cummax gives
    else:
        columns["drawdown"] = (pd.Series(values) / pd.Series(values).cummax() - 1.0).to_numpy()
    texts = steps["positions_json"]
    parsed = {text: json.loads(text) for text in set(texts)}  # a run has few distinct holdings
    held = sorted(set(tickers).union(*(p.keys() for p in parsed.values())))
    for t in held:
        quantity = {text: int(p.get(t, 0)) for text, p in parsed.items()}
        columns[f"pos_{t}"] = np.array([quantity[text] for text in texts], dtype=np.int64)
    equity = pd.DataFrame(columns, index=index)
    fills = ledger.fills(run_id)
    # Rows as tuples: the frame pandas builds from them is the one it builds from the
    # as_dict() of each fill and order, without a dict per row.
    fills_df = pd.DataFrame(
        [
            (
                f.order_id,
                f.ticker,
                f.side,
                f.quantity,
                f.price,
                f.commission,
                f.slippage_cost,
                iso_date(f.filled_at),
                f.reason,
            )
            for f in fills
        ],
        columns=FILL_COLUMNS,
    )
    fills_df["filled_at"] = _to_datetime(fills_df["filled_at"])
    order_cols = list(Order.__dataclass_fields__)
    keys, rows = ledger.order_rows(run_id)
    if list(keys) != order_cols:
        rows = [tuple(dict(zip(keys, row, strict=True))[c] for c in order_cols) for row in rows]
    orders_df = pd.DataFrame(rows, columns=order_cols)
    for col in ("created_at", "updated_at"):
        orders_df[col] = _to_datetime(orders_df[col])
    return EngineResult(
        run_id=run_id,
        strategy=run.strategy,
        start=index[0] if len(index) else pd.NaT,
        end=index[-1] if len(index) else pd.NaT,
        starting_cash=run.starting_cash,
        equity=equity,
        trades=round_trips(fills, index),
        fills=fills_df,
        orders=orders_df,
        decisions=[
            {
                "bar_date": d["bar_date"],
                "strategy": d["strategy"],
                "ticker": d["ticker"],
                "record": d["record"],
            }
            for d in ledger.decisions(run_id)
        ],
        risk_events=ledger.risk_events(run_id),
        commissions=float(sum(f.commission for f in fills)),
        resumed_steps=resumed_steps,
        ledger_path=ledger.path,
    )


FILL_COLUMNS = [
    "order_id",
    "ticker",
    "side",
    "quantity",
    "price",
    "commission",
    "slippage_cost",
    "filled_at",
    "reason",
]
TRADE_COLUMNS = [
    "ticker",
    "size",
    "entry_time",
    "exit_time",
    "entry_price",
    "exit_price",
    "pnl",
    "return_pct",
    "commission",
    "bars_held",
]


@lru_cache(maxsize=1)
def _plain_dates_dtype() -> np.dtype:
    """The dtype :func:`pandas.to_datetime` gives a column of ``YYYY-MM-DD`` strings."""
    return pd.to_datetime(pd.Series(["2000-01-03", "2000-01-04"])).dtype


def _to_datetime(column: pd.Series) -> pd.Series:
    """``pd.to_datetime(column)``, vectorized when every value is a plain ISO date."""
    values = column.tolist()
    if values and all(type(v) is str and len(v) == 10 for v in values):
        parsed = np.array(values, dtype="datetime64[D]").astype(_plain_dates_dtype())
        return pd.Series(parsed, index=column.index, name=column.name)
    return pd.to_datetime(column)


def _date_index(iso: Sequence[str]) -> pd.DatetimeIndex:
    """``DatetimeIndex([pd.Timestamp(s) for s in iso], name="Date")``, vectorized for plain dates."""
    if iso and all(len(s) == 10 for s in iso):
        unit = pd.Timestamp(iso[0]).unit  # what the one-by-one parse gives every plain date
        return pd.DatetimeIndex(
            np.array(iso, dtype="datetime64[D]").astype(f"datetime64[{unit}]"), name="Date"
        )
    return pd.DatetimeIndex([pd.Timestamp(s) for s in iso], name="Date")


def round_trips(fills: Sequence[Fill], dates: pd.DatetimeIndex) -> pd.DataFrame:
    """Match fills FIFO into round trips, one row per (entry lot, exit fill) pair.

    ``size`` is signed (negative for shorts); ``pnl`` is after the pro-rata entry and exit
    commissions; ``return_pct`` is ``pnl / (entry_price * |size|)`` as a fraction;
    ``bars_held`` counts bars of ``dates`` between entry and exit.
    """
    books: dict[str, deque[list[Any]]] = {}
    rows: list[dict[str, Any]] = []
    where = dates.searchsorted(pd.DatetimeIndex([f.filled_at for f in fills])).tolist() if fills else []
    for f, at in zip(fills, where, strict=True):
        remaining = f.quantity if f.side == "buy" else -f.quantity
        per_share = f.commission / f.quantity
        book = books.setdefault(f.ticker, deque())
        while remaining and book and (book[0][0] > 0) != (remaining > 0):
            lot = book[0]  # [signed qty left, price, time, commission per share, bar position]
            direction = 1 if lot[0] > 0 else -1
            matched = min(abs(lot[0]), abs(remaining))
            commission = matched * (lot[3] + per_share)
            pnl = (f.price - lot[1]) * matched * direction - commission
            rows.append(
                {
                    "ticker": f.ticker,
                    "size": matched * direction,
                    "entry_time": lot[2],
                    "exit_time": f.filled_at,
                    "entry_price": lot[1],
                    "exit_price": f.price,
                    "pnl": pnl,
                    "return_pct": pnl / (lot[1] * matched),
                    "commission": commission,
                    "bars_held": at - lot[4],
                }
            )
            lot[0] -= matched * direction
            remaining += matched * direction
            if lot[0] == 0:
                book.popleft()
        if remaining:
            book.append([remaining, f.price, f.filled_at, per_share, at])
    return pd.DataFrame(rows, columns=TRADE_COLUMNS)


def write_decisions_jsonl(path: Path, decisions: Sequence[Mapping[str, Any]]) -> None:
    """Write decision records one JSON object per line, atomically."""
    text = "".join(json.dumps(dict(d), default=str, sort_keys=False) + "\n" for d in decisions)
    atomic_write_text(path, text)
