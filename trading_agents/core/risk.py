"""Hard risk limits that no strategy or model output can bypass, and the kill switch.

Every order intent passes :meth:`RiskEngine.check` before it reaches the broker. Checks,
in order (each clip or veto is returned as a :class:`RiskEvent` naming its rule):

1. ``invalid_intent``: unknown side, non-positive quantity, limit order without a positive
   limit price, no usable reference price -> veto;
2. ``max_data_age_days``: the ticker's last bar is older than this before the decision bar
   -> veto (never trade on stale data);
3. ``long_only``: without ``allow_short`` a sell is clipped to the long position (veto when flat);
4. ``risk_state``: HALTED or REDUCING -> only orders that reduce a position pass;
   ``max_adv_pct`` then clips any order (reducing ones too: a market absorbs only so much)
   to that fraction of the ticker's 20-day average daily dollar volume, when the engine
   knows it (a clip to zero is a veto);
5. for orders that grow a position: ``max_order_notional`` (the lower of the absolute
   ``max_order_notional`` and ``max_order_notional_pct`` x equity, each off when null, as by
   default: ``max_position_pct`` already scales with the account), ``max_position_pct`` (position
   value after the order <= pct x equity), ``max_gross_exposure_pct`` and, for buys, ``cash``
   (no margin) clip the quantity; a clip to zero is a veto.

``quantity=None`` is resolved to whole shares BEFORE the checks: a buy takes what the cash
buys at the reference price with slippage and commission headroom; a sell takes the whole
long position. Values are measured at the reference price (the last close).

Kill switch (:meth:`RiskEngine.update`, once per bar after marking to market): a loss since
the day's start larger than ``max_daily_loss_pct``, or a drawdown from the peak larger than
``max_drawdown_pct``, sets HALTED. The engine persists the state in the ledger; only
``trading-agents resume`` returns to ACTIVE.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import pandas as pd

from trading_agents.config.settings import RiskSettings
from trading_agents.core.orders import DAY_NS, grows_position

if TYPE_CHECKING:
    from trading_agents.core.decision import OrderIntent, PortfolioView

RiskState = Literal["ACTIVE", "REDUCING", "HALTED"]
_SEVERITY = {"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}


@dataclass(frozen=True)
class RiskEvent:
    """A clip, veto, halt or resume, with the rule that caused it and a one-line detail."""

    kind: Literal["clip", "veto", "halt", "resume"]
    rule: str
    detail: str
    ticker: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "rule": self.rule, "detail": self.detail, "ticker": self.ticker}


@dataclass(frozen=True)
class RiskCheck:
    """Outcome of one intent: the approved whole-share ``quantity`` (0 when vetoed)."""

    quantity: int
    vetoed: bool
    events: list[RiskEvent] = field(default_factory=list)


class RiskEngine:
    """Stateful limits for one account. The state fields are what the ledger persists."""

    def __init__(
        self,
        settings: RiskSettings,
        *,
        commission: float = 0.0,
        slippage_bps: float = 0.0,
        state: RiskState = "ACTIVE",
        halt_reason: str = "",
        peak_equity: float | None = None,
        day_start_equity: float | None = None,
        last_equity: float | None = None,
        last_date: pd.Timestamp | None = None,
    ) -> None:
        self.settings = settings
        self.commission = float(commission)
        self.slippage = float(slippage_bps) / 10_000.0
        self.state: RiskState = state
        self.halt_reason = halt_reason
        self.peak_equity = peak_equity
        self.day_start_equity = day_start_equity
        self.last_equity = last_equity
        self.last_date = None if last_date is None else pd.Timestamp(last_date)

    # -- per-order checks ------------------------------------------------------------------------

    def resolve_quantity(self, intent: OrderIntent, portfolio: PortfolioView, ref_price: float) -> int:
        """Whole shares for ``intent``; ``None`` means buy-max (cash with headroom) or sell-all."""
        if intent.quantity is not None:
            return int(intent.quantity)
        if intent.side == "sell":
            return max(int(portfolio.positions.get(intent.ticker, 0)), 0)
        return self._cash_limit(portfolio.cash, ref_price)

    def _cash_limit(self, cash: float, ref_price: float) -> int:
        unit = ref_price * (1.0 + self.slippage) * (1.0 + self.commission)
        return max(math.floor(cash / unit), 0) if unit > 0 and cash > 0 else 0

    def check(
        self,
        intent: OrderIntent,
        portfolio: PortfolioView,
        ref_price: float,
        bar_date: pd.Timestamp,
        data_date: pd.Timestamp,
        adv_dollars: float | None = None,
    ) -> RiskCheck:
        """Clip or veto ``intent`` against every limit; see the module docstring for the rules.

        ``adv_dollars``: the ticker's 20-day average daily dollar volume (``None``: unknown,
        no liquidity cap)."""
        ticker = intent.ticker
        events: list[RiskEvent] = []

        def veto(rule: str, detail: str) -> RiskCheck:
            events.append(RiskEvent("veto", rule, detail, ticker))
            return RiskCheck(0, True, events)

        if intent.side not in ("buy", "sell"):
            return veto("invalid_intent", f"unknown side {intent.side!r}")
        if intent.quantity is not None and (
            not isinstance(intent.quantity, numbers.Integral)
            or isinstance(intent.quantity, bool)
            or intent.quantity <= 0
        ):
            return veto(
                "invalid_intent", f"quantity must be a positive whole number, not {intent.quantity!r}"
            )
        if intent.order_type == "limit" and not _positive(intent.limit_price):
            return veto(
                "invalid_intent", f"limit order needs a positive limit_price, not {intent.limit_price!r}"
            )
        if intent.order_type not in ("market", "limit"):
            return veto("invalid_intent", f"unknown order type {intent.order_type!r}")
        if not _positive(ref_price):
            return veto("invalid_intent", f"no usable price for {ticker} ({ref_price!r})")

        age = _days_between(data_date, bar_date)
        if age > self.settings.max_data_age_days:
            return veto(
                "max_data_age_days",
                f"last {ticker} bar is {age} days old (limit {self.settings.max_data_age_days})",
            )

        held = int(portfolio.positions.get(ticker, 0))
        qty = self.resolve_quantity(intent, portfolio, ref_price)
        if intent.side == "sell" and not self.settings.allow_short:
            if held <= 0:
                return veto(
                    "long_only", f"no long {ticker} position to sell; short selling is off (risk.allow_short)"
                )
            if qty > held:
                events.append(
                    RiskEvent(
                        "clip", "long_only", f"quantity {qty} -> {held}: cannot sell more than held", ticker
                    )
                )
                qty = held
        if qty <= 0:
            return veto("invalid_intent", f"resolved quantity is {qty}: nothing to trade")

        reducing = not grows_position(intent.side, qty, held)
        mine, theirs = self.state, portfolio.risk_state  # the more severe, ours on a tie (as max gives)
        state = mine if _SEVERITY.get(mine, 2) >= _SEVERITY.get(theirs, 2) else theirs
        if state != "ACTIVE" and not reducing:
            return veto("risk_state", f"account is {state}: only orders that reduce a position are allowed")
        adv_pct = self.settings.max_adv_pct
        if adv_pct is not None and adv_dollars is not None and math.isfinite(adv_dollars):
            cap = max(math.floor(adv_pct * max(adv_dollars, 0.0) / ref_price + 1e-9), 0)
            if qty > cap:
                why = (
                    f"order value above {adv_pct:.2%} of {ticker}'s 20-day average daily dollar "
                    f"volume {adv_dollars:,.0f} (risk.max_adv_pct)"
                )
                if cap == 0:
                    return veto("max_adv_pct", f"quantity {qty} -> 0: {why}")
                events.append(RiskEvent("clip", "max_adv_pct", f"quantity {qty} -> {cap}: {why}", ticker))
                qty = cap
        if reducing:
            return RiskCheck(qty, False, events)

        sign = 1 if intent.side == "buy" else -1
        equity = float(portfolio.equity)
        s = self.settings
        # (rule, cap) in order; a reason is formatted only for a clip or veto.
        caps = []
        notional = order_notional_cap(s, equity)
        if notional is not None:
            caps.append(("max_order_notional", math.floor(notional / ref_price + 1e-9)))
        caps.append(
            ("max_position_pct", position_room(s.max_position_pct, equity, ref_price, held, intent.side))
        )
        gross = sum(abs(q) * portfolio.prices.get(t, 0.0) for t, q in portfolio.positions.items())
        room = s.max_gross_exposure_pct * equity - gross
        # Reducing part of a flip frees |held| of exposure before adding.
        freed = abs(held) if held * sign < 0 else 0
        caps.append(("max_gross_exposure_pct", math.floor(max(room, 0.0) / ref_price + 1e-9) + 2 * freed))
        if intent.side == "buy":
            caps.append(("cash", self._cash_limit(portfolio.cash, ref_price)))
        for rule, cap in caps:
            cap = max(cap, 0)
            if qty > cap:
                why = self._cap_reason(rule, ticker, equity, portfolio.cash)
                if cap == 0:
                    return veto(rule, f"quantity {qty} -> 0: {why}")
                events.append(RiskEvent("clip", rule, f"quantity {qty} -> {cap}: {why}", ticker))
                qty = cap
        return RiskCheck(qty, False, events)

    def _cap_reason(self, rule: str, ticker: str, equity: float, cash: float) -> str:
        s = self.settings
        if rule == "max_order_notional":
            return f"order value above {order_notional_cap(s, equity):,.2f} ({describe_order_notional(s)})"
        if rule == "max_position_pct":
            return f"{ticker} position above {s.max_position_pct:.0%} of equity {equity:,.2f}"
        if rule == "max_gross_exposure_pct":
            return f"gross exposure above {s.max_gross_exposure_pct:.0%} of equity"
        return f"cash {cash:,.2f}"

    # -- kill switch -----------------------------------------------------------------------------

    def update(self, equity: float, bar_date: pd.Timestamp) -> list[RiskEvent]:
        """Feed the marked-to-market equity of a bar; trips the kill switch when a limit breaks."""
        if type(bar_date) is not pd.Timestamp:
            bar_date = pd.Timestamp(bar_date)
        if self.peak_equity is None:
            self.peak_equity = equity
        if self.day_start_equity is None:
            self.day_start_equity = equity
        last = self.last_date
        if last is not None:
            if bar_date.tzinfo is None and last.tzinfo is None:  # once per bar: _days_between inlined
                new_day = bar_date.value // DAY_NS != last.value // DAY_NS
            else:
                new_day = _days_between(last, bar_date) != 0
            if new_day:
                self.day_start_equity = self.last_equity if self.last_equity is not None else equity
        self.last_date = bar_date
        self.last_equity = equity
        if equity > self.peak_equity:  # max(peak, equity)
            self.peak_equity = equity
        if self.state == "HALTED":
            return []
        s = self.settings
        day_start, peak = self.day_start_equity, self.peak_equity
        daily = 1.0 - equity / day_start if day_start > 0 else 0.0
        drawdown = 1.0 - equity / peak if peak > 0 else 0.0
        if daily > s.max_daily_loss_pct:
            return [
                self.halt(
                    f"daily loss {daily:.2%} exceeds {s.max_daily_loss_pct:.2%} "
                    f"(equity {equity:,.2f} vs day start {self.day_start_equity:,.2f})",
                    rule="max_daily_loss_pct",
                )
            ]
        if drawdown > s.max_drawdown_pct:
            return [
                self.halt(
                    f"drawdown {drawdown:.2%} exceeds {s.max_drawdown_pct:.2%} "
                    f"(equity {equity:,.2f} vs peak {self.peak_equity:,.2f})",
                    rule="max_drawdown_pct",
                )
            ]
        return []

    def halt(self, reason: str, rule: str = "manual") -> RiskEvent:
        """Set HALTED: from now on only reducing orders pass."""
        self.state, self.halt_reason = "HALTED", reason
        return RiskEvent("halt", rule, reason)

    def resume(self, reason: str = "resumed") -> RiskEvent:
        """Back to ACTIVE; peak and day-start equity restart from the last equity."""
        self.state, self.halt_reason = "ACTIVE", ""
        if self.last_equity is not None:
            self.peak_equity = self.day_start_equity = self.last_equity
        return RiskEvent("resume", "manual", reason)


def position_room(pct: float, equity: float, price: float, held: int, side: str) -> int:
    """Whole shares an order on ``side`` may add so that the position after it is worth at most
    ``pct`` of ``equity`` at ``price``: ``|held + signed quantity| * price <= pct * equity``.

    The one position-cap formula, for the risk engine and the desk's guards. A flip through
    flat may trade the held shares plus the room on the other side.
    """
    cap = math.floor(pct * equity / price + 1e-9)
    signed_held = held if side == "buy" else -held
    return cap - signed_held if signed_held >= 0 else cap + abs(held)


def order_notional_cap(settings: RiskSettings, equity: float) -> float | None:
    """The largest value one growing order may have at ``equity``; ``None`` when both caps are off."""
    caps = [settings.max_order_notional]
    if settings.max_order_notional_pct is not None:
        caps.append(settings.max_order_notional_pct * max(float(equity), 0.0))
    set_caps = [c for c in caps if c is not None]
    return min(set_caps) if set_caps else None


def describe_order_notional(settings: RiskSettings) -> str:
    """The per-order cap in words: ``"25% of equity"``, ``"25,000"``, both, or ``"none"``."""
    parts = []
    if settings.max_order_notional is not None:
        parts.append(f"{settings.max_order_notional:,.0f}")
    if settings.max_order_notional_pct is not None:
        parts.append(f"{settings.max_order_notional_pct:.0%} of equity")
    return " or ".join(parts) + (", whichever is lower" if len(parts) > 1 else "") if parts else "none"


def caps_in_force(settings: RiskSettings) -> dict[str, float | bool | None]:
    """The limits a run traded under, by config key (summaries, reports and grid leaderboards)."""
    return {
        key: getattr(settings, key)
        for key in (
            "max_position_pct",
            "max_order_notional",
            "max_order_notional_pct",
            "max_gross_exposure_pct",
            "max_daily_loss_pct",
            "max_drawdown_pct",
            "allow_short",
            "max_adv_pct",
        )
    }


_DAY_NS = 86_400_000_000_000


def _days_between(earlier: pd.Timestamp, later: pd.Timestamp) -> int:
    """Days from ``earlier``'s date to ``later``'s: ``(later.normalize() - earlier.normalize()).days``.

    Called once per bar by the kill switch, so tz-naive timestamps (what the engine uses) take
    an integer shortcut: their ``value`` counts nanoseconds from a midnight.
    """
    if type(earlier) is not pd.Timestamp:
        earlier = pd.Timestamp(earlier)
    if type(later) is not pd.Timestamp:
        later = pd.Timestamp(later)
    if earlier.tzinfo is None and later.tzinfo is None:
        return later.value // DAY_NS - earlier.value // DAY_NS
    return (later.normalize() - earlier.normalize()).days


def _positive(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )
