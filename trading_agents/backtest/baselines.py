"""Deterministic baseline strategies, the yardsticks every LLM strategy is compared with.

All are long-only and trade each ticker in ``ctx.bars`` on its own: enter with
``quantity=None`` (as many shares as cash and the risk limits allow), exit the whole
position. Signals use only the bars the engine passes (dated ``<= as_of``), read through
:meth:`~trading_agents.core.decision.DecisionContext.column` so that no DataFrame is
sliced per bar.

=============  ===========================================================================
buy-hold       buy when flat (in practice: on the first decision), never sell
sma-cross      fast SMA of closes crosses above the slow one: enter; below: exit
macd           MACD line crosses above its signal line: enter; below: exit
rsi            Wilder RSI below ``low``: enter; above ``high``: exit
random         seeded coin flips: same seed, same trades (also after a resume)
=============  ===========================================================================

For a universe, two portfolio baselines size positions across the tickers with the
portfolio step's own functions (:mod:`trading_agents.core.portfolio`), under the same caps:

=====================  ===================================================================
equal-weight           buy 1/N of equity in each ticker with a bar (capped at
                       ``max_position_pct``) when flat, never trade again
equal-weight-monthly   the same 1/N targets, rebalanced on the first bar of every month
=====================  ===================================================================
"""

from __future__ import annotations

import inspect
import sys
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from trading_agents.config.settings import RiskSettings
from trading_agents.core import DecisionContext, OrderIntent, Strategy, StrategyDecision
from trading_agents.core.portfolio import clip_weights, rebalance_intents
from trading_agents.errors import UserInputError

State = tuple[float, ...]
_EPS = sys.float_info.epsilon


class _Fold:
    """A running state over one ticker's closes, advanced one bar at a time and cached.

    Recomputing an EMA over the whole slice at every bar is quadratic. The engine passes
    the previous slice plus one row at each bar, so the cached state is advanced by the new
    rows only; anything else (a fresh or resumed run, other data) refolds from the first
    row. Both paths do the same arithmetic in the same order: results are bit-identical.
    """

    def __init__(self, step: Callable[[State | None, float], State]) -> None:
        self._step = step
        self._cache: dict[str, tuple[int, pd.Timestamp, float, State | None, State | None]] = {}
        self._arrays: dict[str, tuple[np.ndarray, int, float, State | None, State | None]] = {}

    def of(self, ticker: str, ctx: DecisionContext) -> tuple[State | None, State | None]:
        """States after the second-to-last and the last close of ``ticker`` in ``ctx``."""
        if not callable(getattr(ctx.bars, "column", None)):
            return self(ticker, ctx.bars[ticker])
        return self.over(ticker, ctx.column(ticker))

    def over(self, ticker: str, closes: np.ndarray) -> tuple[State | None, State | None]:
        """Like calling with a frame, for a read-only prefix view of one array (the engine's
        :meth:`~trading_agents.core.decision.DecisionContext.column`).

        A longer view of the same array extends the same data, so the cache is advanced when
        ``closes`` shares the cached view's base array and agrees on its last cached close.
        """
        n = len(closes)
        base = closes.base if closes.base is not None else closes
        seen = self._arrays.get(ticker)
        if seen is not None and seen[0] is base and 0 < seen[1] <= n and closes[seen[1] - 1] == seen[2]:
            done, prev, state = seen[1], seen[3], seen[4]
            if done == n:
                return prev, state
        else:
            done, prev, state = 0, None, None
        step = self._step
        for x in closes[done:].tolist():
            prev, state = state, step(state, x)
        if n:
            self._arrays[ticker] = (base, n, float(closes[n - 1]), prev, state)
        return prev, state

    def __call__(self, ticker: str, frame: pd.DataFrame) -> tuple[State | None, State | None]:
        """States after the second-to-last and after the last row of ``frame``."""
        n = len(frame)
        closes = frame["Close"]
        seen = self._cache.get(ticker)
        if (
            seen is not None
            and 0 < seen[0] <= n
            and frame.index[seen[0] - 1] == seen[1]
            and closes.iat[seen[0] - 1] == seen[2]
        ):
            done, prev, state = seen[0], seen[3], seen[4]
            if done == n:
                return prev, state
        else:
            done, prev, state = 0, None, None
        for x in closes.to_numpy(dtype=float)[done:].tolist():
            prev, state = state, self._step(state, x)
        if n:
            self._cache[ticker] = (n, frame.index[-1], float(closes.iat[-1]), prev, state)
        return prev, state


def _mean(values: np.ndarray) -> np.float64:
    """``values.mean()`` of a float64 array without its Python-level overhead: NumPy's mean
    is this same reduction divided by the count."""
    return np.add.reduce(values) / len(values)


def _signal_decision(signals: list[dict[str, Any]], intents: list[OrderIntent]) -> StrategyDecision:
    if not signals:
        return StrategyDecision(intents)
    record: dict[str, Any] = {"signals": signals}
    if len(signals) == 1:
        record["ticker"] = signals[0]["ticker"]
    return StrategyDecision(intents, record)


class BuyAndHold:
    """Buy as much as allowed when flat, never sell."""

    name = "buy-hold"

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        intents = [
            OrderIntent(t, "buy", reason="buy and hold")
            for t in ctx.bars
            if ctx.portfolio.positions.get(t, 0) == 0
        ]
        return _signal_decision([{"ticker": i.ticker, "signal": "enter"} for i in intents], intents)


class EqualWeight:
    """1/N of equity in each ticker with a bar at the decision (weights under the risk caps).

    ``monthly=False``: buy once, when the account holds nothing, and hold (equal-weight
    buy-and-hold); ``monthly=True``: rebalance to 1/N on the first bar of each month (and the
    first decision). Orders come from :func:`~trading_agents.core.portfolio.rebalance_intents`.
    """

    def __init__(
        self,
        risk: RiskSettings | None = None,
        commission: float = 0.0,
        slippage_bps: float = 0.0,
        monthly: bool = False,
        min_trade_pct: float = 0.0,
    ) -> None:
        self.risk = risk or RiskSettings()
        self.commission, self.slippage_bps = commission, slippage_bps
        self.monthly, self.min_trade_pct = monthly, min_trade_pct
        self.name = "equal-weight-monthly" if monthly else "equal-weight"
        self.params: dict[str, Any] = {"monthly": monthly, "min_trade_pct": min_trade_pct}

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        live = [t for t in sorted(ctx.bars) if len(ctx.bars[t]) and ctx.bars[t].index[-1] == ctx.as_of]
        if not live or not self._due(ctx, live):
            return StrategyDecision()
        weights, clips = clip_weights(dict.fromkeys(live, 1.0 / len(live)), sorted(ctx.bars), self.risk)
        intents, _ = rebalance_intents(
            weights,
            ctx.portfolio,
            min_trade_pct=self.min_trade_pct,
            commission=self.commission,
            slippage_bps=self.slippage_bps,
        )
        return StrategyDecision(intents, {"portfolio": {"targets": weights, "clips": clips}})

    def _due(self, ctx: DecisionContext, live: list[str]) -> bool:
        if not self.monthly:
            return not any(q for q in ctx.portfolio.positions.values())
        previous = [ctx.bars[t].index[-2] for t in live if len(ctx.bars[t]) > 1]
        if ctx.step == 0 or not previous:
            return True
        last = max(previous)
        return (last.year, last.month) != (ctx.as_of.year, ctx.as_of.month)


class SmaCross:
    """Long while the ``fast`` SMA of closes is above the ``slow`` one (crossings from t-1 to t)."""

    name = "sma-cross"

    def __init__(self, fast: int = 10, slow: int = 20) -> None:
        if not (isinstance(fast, int) and isinstance(slow, int) and 1 <= fast < slow):
            raise UserInputError(
                f"sma-cross needs whole numbers 1 <= fast < slow, not fast={fast}, slow={slow}"
            )
        self.fast, self.slow = fast, slow
        self.params = {"fast": fast, "slow": slow}
        self._seen: dict[str, tuple[np.ndarray, list[int]]] = {}

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        intents: list[OrderIntent] = []
        signals: list[dict[str, Any]] = []
        bars = ctx.bars
        span = getattr(bars, "column_span", None)  # the engine's bars: see _SlicedBars.column_span
        seen_of = self._seen.get
        for ticker in bars:
            if span is not None:
                base, n = span(ticker, "Close")
                if n < self.slow + 1:
                    continue
                seen = seen_of(ticker)
                if seen is not None and seen[0] is base:
                    signs = seen[1]
                    if signs[n - 1] and signs[n - 1] == signs[n - 2]:
                        continue  # the common case of _cross: no crossing, and no tie to check
            closes = ctx.column(ticker)
            if len(closes) < self.slow + 1:
                continue
            cross = self._cross(ticker, closes)
            if not cross:
                continue
            held = ctx.portfolio.positions.get(ticker, 0)
            if cross > 0 and held == 0:
                intents.append(
                    OrderIntent(ticker, "buy", reason=f"SMA{self.fast} crossed above SMA{self.slow}")
                )
                signals.append({**self._values(ticker, closes), "signal": "enter"})
            elif cross < 0 and held > 0:
                intents.append(
                    OrderIntent(ticker, "sell", reason=f"SMA{self.fast} crossed below SMA{self.slow}")
                )
                signals.append({**self._values(ticker, closes), "signal": "exit"})
        if not signals:
            return StrategyDecision(intents)
        return _signal_decision(signals, intents)

    def cross(self, closes: np.ndarray) -> int:
        """+1 when the fast SMA crosses above the slow one at the last of ``closes`` (at least
        ``slow + 1`` values), -1 when it crosses below, else 0.

        The definition is NumPy's: the fast SMA now is ``closes[-fast:].mean()``, before it is
        ``closes[-fast - 1 : -1].mean()``, and so on; up means before ``<=`` and now ``>``.
        """
        c = closes[-(self.slow + 1) :]
        fast, slow = self.fast, self.slow
        fast_now, slow_now = _mean(c[-fast:]), _mean(c[-slow:])
        fast_prev, slow_prev = _mean(c[-fast - 1 : -1]), _mean(c[:-1])
        if fast_prev <= slow_prev and fast_now > slow_now:
            return 1
        return -1 if fast_prev >= slow_prev and fast_now < slow_now else 0

    def _cross(self, ticker: str, closes: np.ndarray) -> int:
        """:meth:`cross` without four NumPy means per bar (they cost more than the rest of a
        backtest step): from signs computed once per array, a near tie falling back to it.

        Inside the engine ``closes`` is a prefix view of one array per ticker (see
        :meth:`DecisionContext.column`); :meth:`_signs` covers that whole array at once, and
        this reads the entries of the last two rows of the view. No look-ahead: the entry of
        a row depends only on the ``slow`` closes ending at that row, all dated ``<= as_of``.
        """
        base = closes.base
        if base is None:  # not an engine view: nothing to share between bars
            return self.cross(closes)
        seen = self._seen.get(ticker)
        if seen is None or seen[0] is not base:
            seen = self._seen[ticker] = (base, self._signs(base))
        n = len(closes)
        prev, now = seen[1][n - 2], seen[1][n - 1]
        if not (prev and now):
            return self.cross(closes)
        if prev < 0 < now:
            return 1
        return -1 if now < 0 < prev else 0

    def _signs(self, closes: np.ndarray) -> list[int]:
        """Per row: the sign of the fast SMA minus the slow one ending there, as NumPy's means
        give it; 0 when unsure (a near tie, too few rows, data not all positive and finite).

        The sums here and NumPy's each err by at most ``(w - 1) u`` times the sum of ``w``
        positive terms (``u = eps / 2``, any summation order) and the division adds ``u``, so
        two means of the same window differ by less than ``w eps`` times the mean. A
        difference beyond twice that bound for both SMAs has NumPy's sign.
        """
        fast, slow, n = self.fast, self.slow, len(closes)
        signs = np.zeros(n, dtype=np.int64)
        if n >= slow and bool(np.all(np.isfinite(closes) & (closes > 0))):
            windows = np.lib.stride_tricks.sliding_window_view
            fast_mean = windows(closes, fast).sum(axis=1)[slow - fast :] / fast
            slow_mean = windows(closes, slow).sum(axis=1) / slow
            diff = fast_mean - slow_mean
            margin = 2 * _EPS * (fast * fast_mean + slow * slow_mean)
            signs[slow - 1 :] = np.where(diff > margin, 1, np.where(diff < -margin, -1, 0))
        return signs.tolist()

    def _values(self, ticker: str, closes: np.ndarray) -> dict[str, Any]:
        return {
            "ticker": ticker,
            "fast": float(_mean(closes[-self.fast :])),
            "slow": float(_mean(closes[-self.slow :])),
        }


class MacdStrategy:
    """Long while the MACD line (EMA fast - EMA slow) is above its signal EMA."""

    name = "macd"

    def __init__(self, fast: int = 12, slow: int = 26, signal: int = 9) -> None:
        if not (all(isinstance(v, int) for v in (fast, slow, signal)) and 1 <= fast < slow and signal >= 1):
            raise UserInputError(
                f"macd needs whole numbers 1 <= fast < slow and signal >= 1, not {fast}, {slow}, {signal}"
            )
        self.fast, self.slow, self.signal = fast, slow, signal
        self.params = {"fast": fast, "slow": slow, "signal": signal}
        af, aslow, asig = 2.0 / (fast + 1), 2.0 / (slow + 1), 2.0 / (signal + 1)

        def step(s: State | None, x: float) -> State:
            if s is None:
                return (1.0, x, x, 0.0)
            n, ef, es, sig = s
            ef = ef + af * (x - ef)
            es = es + aslow * (x - es)
            sig = sig + asig * ((ef - es) - sig)
            return (n + 1.0, ef, es, sig)

        self._fold = _Fold(step)

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        intents: list[OrderIntent] = []
        signals: list[dict[str, Any]] = []
        for ticker in ctx.bars:
            prev, cur = self._fold.of(ticker, ctx)
            if prev is None or cur is None or cur[0] < self.slow + self.signal:
                continue
            hist_prev = (prev[1] - prev[2]) - prev[3]
            macd = cur[1] - cur[2]
            hist = macd - cur[3]
            held = ctx.portfolio.positions.get(ticker, 0)
            values = {"ticker": ticker, "macd": macd, "signal_line": cur[3]}
            if hist_prev <= 0 < hist and held == 0:
                intents.append(OrderIntent(ticker, "buy", reason="MACD crossed above signal"))
                signals.append({**values, "signal": "enter"})
            elif hist_prev >= 0 > hist and held > 0:
                intents.append(OrderIntent(ticker, "sell", reason="MACD crossed below signal"))
                signals.append({**values, "signal": "exit"})
        return _signal_decision(signals, intents)


class RsiReversion:
    """Mean reversion on Wilder's RSI: buy below ``low``, sell above ``high``."""

    name = "rsi"

    def __init__(self, period: int = 14, low: float = 30.0, high: float = 70.0) -> None:
        if not (isinstance(period, int) and period >= 2 and 0 <= low < high <= 100):
            raise UserInputError(
                f"rsi needs period >= 2 and 0 <= low < high <= 100, not {period}, {low}, {high}"
            )
        self.period, self.low, self.high = period, float(low), float(high)
        self.params = {"period": period, "low": low, "high": high}

        def step(s: State | None, x: float) -> State:
            if s is None:
                return (1.0, x, 0.0, 0.0)
            n, last, gain, loss = s
            change = x - last
            up, down = max(change, 0.0), max(-change, 0.0)
            k = n  # changes seen including this one
            if k < period:
                gain, loss = gain + up, loss + down
            elif k == period:
                gain, loss = (gain + up) / period, (loss + down) / period
            else:
                gain = (gain * (period - 1) + up) / period
                loss = (loss * (period - 1) + down) / period
            return (n + 1.0, x, gain, loss)

        self._fold = _Fold(step)

    @staticmethod
    def rsi(state: State) -> float:
        _, _, gain, loss = state
        if loss == 0.0:
            return 50.0 if gain == 0.0 else 100.0
        return 100.0 - 100.0 / (1.0 + gain / loss)

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        intents: list[OrderIntent] = []
        signals: list[dict[str, Any]] = []
        for ticker in ctx.bars:
            _, cur = self._fold.of(ticker, ctx)
            if cur is None or cur[0] <= self.period:
                continue
            value = self.rsi(cur)
            held = ctx.portfolio.positions.get(ticker, 0)
            if value < self.low and held == 0:
                intents.append(OrderIntent(ticker, "buy", reason=f"RSI {value:.1f} < {self.low:g}"))
                signals.append({"ticker": ticker, "rsi": value, "signal": "enter"})
            elif value > self.high and held > 0:
                intents.append(OrderIntent(ticker, "sell", reason=f"RSI {value:.1f} > {self.high:g}"))
                signals.append({"ticker": ticker, "rsi": value, "signal": "exit"})
        return _signal_decision(signals, intents)


class RandomStrategy:
    """With probability ``p_trade`` per ticker and bar: enter when flat, exit when long.

    Each draw comes from ``numpy.random.default_rng([seed, bar time, crc32(ticker)])``, so a
    decision depends only on the seed, the bar and the ticker: same seed, same trades, even
    when a run is resumed half-way.
    """

    name = "random"

    def __init__(self, seed: int = 0, p_trade: float = 0.1) -> None:
        if not (isinstance(seed, int) and seed >= 0 and 0.0 <= p_trade <= 1.0):
            raise UserInputError(f"random needs seed >= 0 and 0 <= p_trade <= 1, not {seed}, {p_trade}")
        self.seed, self.p_trade = seed, float(p_trade)
        self.params = {"seed": seed, "p_trade": p_trade}

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        intents: list[OrderIntent] = []
        signals: list[dict[str, Any]] = []
        moment = int(pd.Timestamp(ctx.as_of).value) % (2**63)
        for ticker in ctx.bars:
            draw = float(np.random.default_rng([self.seed, moment, zlib.crc32(ticker.encode())]).random())
            if draw >= self.p_trade:
                continue
            held = ctx.portfolio.positions.get(ticker, 0)
            side = "buy" if held == 0 else "sell"
            if held < 0:
                continue
            intents.append(OrderIntent(ticker, side, reason=f"random draw {draw:.3f} < {self.p_trade:g}"))
            signals.append({"ticker": ticker, "draw": draw, "signal": "enter" if side == "buy" else "exit"})
        return _signal_decision(signals, intents)


BASELINES: dict[str, Callable[..., Strategy]] = {
    "buy-hold": BuyAndHold,
    "sma-cross": SmaCross,
    "macd": MacdStrategy,
    "rsi": RsiReversion,
    "random": RandomStrategy,
    "equal-weight": EqualWeight,
    "equal-weight-monthly": lambda **kw: EqualWeight(monthly=True, **kw),
}


def make_baseline(name: str, **params: Any) -> Strategy:
    """Build a baseline by name (``buy-hold``, ``sma-cross``, ``macd``, ``rsi``, ``random``,
    ``equal-weight``, ``equal-weight-monthly``).

    Example: ``make_baseline("sma-cross", fast=5, slow=30)``.
    """
    cls = BASELINES.get(name)
    if cls is None:
        raise UserInputError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    target = EqualWeight if name.startswith("equal-weight") else cls
    accepted = [p for p in inspect.signature(target).parameters if p != "monthly"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) or "no parameters"
        raise UserInputError(f"baseline {name} takes {takes}; got {', '.join(unknown)}")
    return cls(**params)
