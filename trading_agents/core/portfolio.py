"""The portfolio step: target weights for a universe, clipped under the caps, and the orders
that move the book toward them.

Three pure functions, shared by the desk's ``conviction`` and ``llm`` modes and the
equal-weight baselines:

* :func:`clip_weights` turns any proposal (a model's answer included: 300% in one ticker,
  negative cash, text, NaN) into weights that obey every cap: each ticker within
  ``[0, risk.max_position_pct]``, their sum within ``risk.max_gross_exposure_pct`` and 100%
  (no margin), cash the rest. Each change is a clip naming the cap.
* :func:`conviction_weights` is the deterministic mode: a BUY asks ``conviction x
  max_position_pct``, a SELL asks 0, a HOLD (or a missing report) keeps today's weight.
* :func:`rebalance_intents` sizes the orders toward the targets: sells first, then buys
  within the cash on hand (pro rata when short), none under ``min_trade_pct`` of equity.

The orders are ordinary :class:`~trading_agents.core.decision.OrderIntent`\\ s: the engine's
risk check (ADV, position, exposure and cash caps, risk state) applies to each as to any
other strategy's, so no weight can bypass it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from trading_agents.config.settings import RiskSettings
from trading_agents.core.decision import OrderIntent, PortfolioView

CASH = "cash"


def clip_weights(
    proposal: Mapping[str, Any], tickers: Sequence[str], risk: RiskSettings
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Weights per ticker of ``tickers`` plus ``"cash"`` (summing to 1) and the clips applied.

    A clip is ``{"ticker", "rule", "asked", "got"}``; ``rule`` names the cap
    (``max_position_pct``, ``max_gross_exposure_pct``, ``cash`` for the no-margin limit,
    ``invalid_weight``, ``unknown_ticker``). A ticker the proposal omits gets 0.
    """
    clips: list[dict[str, Any]] = []
    weights: dict[str, float] = {}
    for name, value in proposal.items():
        if name != CASH and name not in tickers:
            clips.append({"ticker": name, "rule": "unknown_ticker", "asked": _json(value), "got": None})
    for ticker in tickers:
        value = proposal.get(ticker, 0.0)
        number = _number(value)
        if number is None or number < 0:
            clips.append({"ticker": ticker, "rule": "invalid_weight", "asked": _json(value), "got": 0.0})
            number = 0.0
        if number > risk.max_position_pct:
            clips.append(
                {"ticker": ticker, "rule": "max_position_pct", "asked": number, "got": risk.max_position_pct}
            )
            number = risk.max_position_pct
        weights[ticker] = number
    asked_cash = _number(proposal.get(CASH)) if CASH in proposal else None
    if asked_cash is not None and asked_cash < 0:
        clips.append({"ticker": CASH, "rule": "cash", "asked": asked_cash, "got": None})
    gross = sum(weights.values())
    for rule, cap in (("max_gross_exposure_pct", risk.max_gross_exposure_pct), ("cash", 1.0)):
        if gross > cap + 1e-12:
            scale = cap / gross
            for ticker in tickers:
                if weights[ticker] > 0:
                    got = weights[ticker] * scale
                    clips.append({"ticker": ticker, "rule": rule, "asked": weights[ticker], "got": got})
                    weights[ticker] = got
            gross = sum(weights.values())
    weights = {t: round(w, 6) for t, w in weights.items()}
    weights[CASH] = round(max(1.0 - sum(weights.values()), 0.0), 6)
    return weights, clips


def current_weights(view: PortfolioView, tickers: Sequence[str]) -> dict[str, float]:
    """Today's weight of each ticker (position value at the last close over equity)."""
    equity = float(view.equity)
    if equity <= 0:
        return dict.fromkeys(tickers, 0.0)
    return {
        t: max(int(view.positions.get(t, 0)), 0) * float(view.prices.get(t, 0.0)) / equity for t in tickers
    }


def conviction_weights(
    reports: Mapping[str, tuple[str, float] | None],
    current: Mapping[str, float],
    tickers: Sequence[str],
    risk: RiskSettings,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Deterministic targets from each ticker's ``(action, conviction)``: BUY asks
    ``conviction x max_position_pct``, SELL asks 0, HOLD or no report keeps ``current``."""
    proposal: dict[str, float] = {}
    for ticker in tickers:
        report = reports.get(ticker)
        if report is None or report[0] == "HOLD":
            proposal[ticker] = float(current.get(ticker, 0.0))
        elif report[0] == "BUY":
            proposal[ticker] = max(min(float(report[1]), 1.0), 0.0) * risk.max_position_pct
        else:
            proposal[ticker] = 0.0
    return clip_weights(proposal, tickers, risk)


def rebalance_intents(
    targets: Mapping[str, float],
    view: PortfolioView,
    *,
    min_trade_pct: float,
    commission: float,
    slippage_bps: float,
) -> tuple[list[OrderIntent], list[dict[str, Any]]]:
    """Market orders that move ``view``'s book toward ``targets`` (weights of equity), sells
    first, and the trades skipped as ``{"ticker", "reason"}``.

    A trade whose value is under ``min_trade_pct`` of equity is skipped (costs would churn),
    except a sell to a target of 0, which closes the position. Buys are sized with slippage
    and commission headroom and share the cash on hand pro rata: proceeds of today's sells
    fill tomorrow, so the rest of a rebalance follows on the next days.
    """
    equity = float(view.equity)
    skipped: list[dict[str, Any]] = []
    if equity <= 0:
        return [], [{"ticker": None, "reason": "equity is not positive"}]
    floor_value = min_trade_pct * equity
    unit_cost = (1.0 + slippage_bps / 10_000.0) * (1.0 + commission)
    sells: list[OrderIntent] = []
    wanted: dict[str, tuple[int, float]] = {}
    names = sorted({*(t for t in targets if t != CASH), *(t for t, q in view.positions.items() if q)})
    for ticker in names:
        price = float(view.prices.get(ticker, 0.0) or 0.0)
        if not price > 0 or not math.isfinite(price):
            skipped.append({"ticker": ticker, "reason": "no price"})
            continue
        held = max(int(view.positions.get(ticker, 0)), 0)
        target = max(float(targets.get(ticker, 0.0)), 0.0) * equity
        diff = target - held * price
        now = f"{held * price / equity:.1%}"
        if diff < 0:
            qty = held if target == 0 else min(math.floor(-diff / price), held)
            if qty <= 0 or (target > 0 and qty * price < floor_value):
                skipped.append({"ticker": ticker, "reason": f"sell under min_trade_pct {min_trade_pct:.2%}"})
                continue
            reason = f"rebalance {ticker} {now} -> {target / equity:.1%}"
            sells.append(OrderIntent(ticker, "sell", quantity=qty, reason=reason))
        elif diff > 0:
            if diff < floor_value:
                skipped.append({"ticker": ticker, "reason": f"buy under min_trade_pct {min_trade_pct:.2%}"})
                continue
            wanted[ticker] = (math.floor(diff / (price * unit_cost)), price)
    cash = max(float(view.cash), 0.0)
    cost = sum(q * p * unit_cost for q, p in wanted.values())
    scale = min(1.0, cash / cost) if cost > 0 else 1.0
    buys: list[OrderIntent] = []
    for ticker, (qty, price) in wanted.items():
        qty = math.floor(qty * scale + 1e-9)
        if qty <= 0 or qty * price < floor_value:
            skipped.append({"ticker": ticker, "reason": "cash on hand too small for the buy"})
            continue
        held = max(int(view.positions.get(ticker, 0)), 0)
        reason = f"rebalance {ticker} {held * price / equity:.1%} -> {targets.get(ticker, 0.0):.1%}"
        buys.append(OrderIntent(ticker, "buy", quantity=qty, reason=reason))
    return sells + buys, skipped


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _json(value: Any) -> Any:
    number = _number(value)
    return number if number is not None else str(value)[:40]


def book_text(book: Any) -> tuple[str, str] | None:
    """A decision record's ``portfolio`` entry in brief, as the ledger table and the dashboard
    show it: (``"conviction targets: AAPL 20% GOOG 12%; clipped GOOG:max_position_pct"``,
    ``"buy 12 GOOG, sell 3 IBM"``), or None when the record has no targets."""
    if not isinstance(book, Mapping) or not book.get("targets"):
        return None
    targets = " ".join(f"{t} {w:.0%}" for t, w in book["targets"].items())
    clips = ", ".join(sorted({f"{c['ticker']}:{c['rule']}" for c in book.get("clips") or []}))
    orders = ", ".join(f"{o['side']} {o['quantity']} {o['ticker']}" for o in book.get("orders") or [])
    note = book.get("fail_closed") or (f"clipped {clips}" if clips else "")
    return f"{book.get('mode')} targets: {targets}" + (f"; {note}" if note else ""), orders or "no trade"
