"""The step engine: one loop, one :meth:`step`, for backtests and paper sessions.

For every bar date in ``[start, end]`` (the union of all tickers' dates; a ticker without a
bar that day keeps its last close and its staleness is seen by the risk engine),
:meth:`Engine.step`:

1. adopts a halt or resume written to the journal since the last bar (``trading-agents halt``);
2. fills pending orders at this bar's prices, then applies protective stops;
3. marks positions to market at the Close;
4. feeds the equity to the kill switch (HALTED cancels pending orders that grow positions);
5. unless this is the last bar and ``decide_on_last_bar`` is off: calls the strategy with
   bars sliced to ``<= this date`` (no look-ahead by construction), risk-checks each intent
   (clip or veto, recorded), queues the accepted ones for the next bar;
6. on the last bar with ``close_at_end``: cancels what is pending and closes every position at
   the Close (fills with reason "end of run", commission charged);
7. commits the step (fills, orders, positions, cash, step row, decision record, risk events)
   to the journal as ONE :class:`~trading_agents.core.records.StepRecord`.

Resume: running again with a ``run_id`` whose steps exist continues after the last committed
step. Committed bars are not replayed: the strategy is not called for them and ``on_step``
gets no event for them; ``EngineResult.resumed_steps`` counts them and the events of a
continued run carry ``resumed=True``. The result is always built from the journal, so a
crashed-then-resumed run reports exactly what an uninterrupted run reports.

A journal shared between processes (the SQLite ledger) is held exclusively for the run: a
second engine on the same file gets :class:`~trading_agents.errors.LockBusyError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pandas as pd

from trading_agents.config.settings import RiskSettings
from trading_agents.core.broker import PaperBroker
from trading_agents.core.decision import (
    DecisionContext,
    OrderIntent,
    PortfolioView,
    Strategy,
    StrategyDecision,
)
from trading_agents.core.market import AlignedMarket, SlicedBars
from trading_agents.core.orders import Fill, Order, client_order_id, iso_date
from trading_agents.core.records import Journal, RunKind, StepRecord
from trading_agents.core.results import EngineResult, build_result
from trading_agents.core.risk import RiskCheck, RiskEngine, RiskEvent
from trading_agents.errors import UserInputError

if TYPE_CHECKING:
    from trading_agents.config.settings import Settings


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


@dataclass(slots=True)
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


def run_engine(
    bars: Mapping[str, pd.DataFrame],
    strategy: Strategy,
    config: EngineConfig,
    journal: Journal,
    run_id: str,
    *,
    kind: RunKind = "backtest",
    start: pd.Timestamp | str | None = None,
    end: pd.Timestamp | str | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
    record_config: Mapping[str, Any] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> EngineResult:
    """Run (or continue) ``strategy`` over ``bars`` and return the whole run from the journal.

    ``record_config`` (for example ``settings.public_dict()``, secrets masked) is stored with
    the run next to the engine config. Bars before ``start`` are visible to the strategy as
    history (warm-up) but not traded. ``on_note`` receives one line per held ticker that
    ``bars`` does not price (it is valued at its last recorded close).

    Example::

        journal = MemoryJournal()
        result = run_engine({"GOOG": frame}, SmaCross(10, 20), EngineConfig(), journal, "bt-1")
    """
    market = AlignedMarket.of(bars)
    lo, hi = _range(market.dates, start, end)
    with journal.exclusive():
        engine = Engine(market, strategy, config, journal, run_id, kind, lo, hi, record_config)
        for note in engine.notes:
            if on_note is not None:
                on_note(note)
        engine.run(on_step)
        return build_result(journal, run_id, market.tickers, resumed_steps=engine.resumed_steps)


def _range(dates: pd.DatetimeIndex, start: Any, end: Any) -> tuple[int, int]:
    lo = 0 if start is None else int(dates.searchsorted(pd.Timestamp(start), side="left"))
    hi = len(dates) - 1 if end is None else int(dates.searchsorted(pd.Timestamp(end), side="right")) - 1
    if lo > hi:
        raise UserInputError(
            f"no bars between {start or 'the first bar'} and {end or 'the last bar'}; "
            f"the data covers {iso_date(dates[0])} to {iso_date(dates[-1])}"
        )
    return lo, hi


class Engine:
    """One run of one strategy over bars ``lo..hi`` of a market, recorded in a journal.

    Built from what the journal holds (a new run, or the account of a run to continue).
    :meth:`run` calls :meth:`step` for every bar not yet committed.
    """

    def __init__(
        self,
        market: AlignedMarket,
        strategy: Strategy,
        config: EngineConfig,
        journal: Journal,
        run_id: str,
        kind: RunKind,
        lo: int,
        hi: int,
        record_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.market, self.strategy, self.config, self.journal = market, strategy, config, journal
        self.run_id, self.lo, self.hi = run_id, lo, hi
        name = str(getattr(strategy, "name", type(strategy).__name__))
        self.strategy_name = name
        run = journal.get_run(run_id)
        if run is None:
            state, reason = journal.session_default_state() if kind == "session" else ("ACTIVE", "")
            journal.create_run(
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
        acct = journal.account(run_id)
        assert acct is not None
        self.version = acct.state_version
        self.broker = PaperBroker(
            acct.cash,
            commission=config.commission,
            slippage_bps=config.slippage_bps,
            allow_short=config.risk.allow_short,
            run_id=run_id,
            positions=journal.positions(run_id),
            pending=journal.orders(run_id, status="pending"),
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
        # per-bar values that do not depend on the account, computed once for the run
        self.timestamps, self.iso = market.timestamps, market.iso
        self.prices_at = market.prices_range(self.first, hi) if self.first <= hi else []
        self.notes: list[str] = []
        marks = self._marks_outside_market(run_id) if self.first <= hi else {}
        if marks:
            self.prices_at = [marks | p for p in self.prices_at]
        self.decide = strategy.decide

    def _marks_outside_market(self, run_id: str) -> dict[str, float]:
        """Held tickers this market does not price, at the last close the journal recorded for
        them (a note says so); :class:`UserInputError` names a held ticker never priced."""
        outside = sorted(t for t in self.broker.positions if t not in self.market.last_idx)
        if not outside:
            return {}
        known = self.journal.last_closes(run_id, outside)
        never = [t for t in outside if t not in known]
        if never:
            raise UserInputError(
                f"account {run_id!r} holds {', '.join(never)} but no price of it was ever recorded;"
                f" add it to the run with --ticker {never[0]} (next to the tickers you trade)"
            )
        for t in outside:
            close, bar = known[t]
            self.notes.append(
                f"{t} ({self.broker.quantity(t)} shares) is not in this run's data: valued at its last"
                f" recorded close {close:,.2f} ({bar}); add --ticker {t} to price and trade it"
            )
        return {t: known[t][0] for t in outside}

    def run(self, on_step: Callable[[StepEvent], None] | None = None) -> None:
        """:meth:`step` every bar from the first uncommitted one to the last; the run's status
        in the journal says ``running``, then ``completed`` or ``failed``."""
        if self.first > self.hi:
            return
        journal = self.journal
        journal.set_run_status(self.run_id, "running")
        step = self.step
        try:
            if on_step is None:
                for i in range(self.first, self.hi + 1):
                    step(i)
            else:
                for i in range(self.first, self.hi + 1):
                    on_step(step(i))
        except BaseException:
            with suppress(Exception):  # the original error matters more than the status
                journal.set_run_status(self.run_id, "failed")
            raise
        journal.set_run_status(self.run_id, "completed")

    def step(self, i: int) -> StepEvent:
        """Trade bar ``i`` of the market (see the module docstring) and commit it."""
        broker, risk, config = self.broker, self.risk, self.config
        date = self.timestamps[i]
        before = {o.client_order_id for o in broker.pending} if broker.pending else None
        touched: list[Order] = []
        if self.journal.state_version(self.run_id) != self.version:
            touched += self._adopt_risk_state(date)
        fills: list[Fill] = []
        if broker.pending or not broker.idle():
            fills, changed = broker.process_bar(date, self.market.bar_prices(i))
            touched += changed
        prices = self.prices_at[i - self.first]
        equity = broker.equity(prices)
        events = risk.update(equity, date)
        if events and any(e.kind == "halt" for e in events):
            touched += broker.cancel_pending(date, "cancelled: HALTED", only_increasing=True)

        decision: StrategyDecision | None = None
        if i != self.hi or config.decide_on_last_bar:
            view = PortfolioView(
                broker.cash,
                equity,
                broker.holdings(),
                prices,
                float(risk.peak_equity if risk.peak_equity is not None else equity),
                float(risk.day_start_equity if risk.day_start_equity is not None else equity),
                risk.state,
            )
            decision = self.decide(DecisionContext(date, SlicedBars(self.market, i), view, i - self.lo))
            if not isinstance(decision, StrategyDecision):
                raise TypeError(
                    f"{self.strategy_name}.decide returned {type(decision).__name__}, not StrategyDecision"
                )
            if decision.intents:
                orders, checks = self._orders(decision.intents, view, date, i)
                touched += orders
                events += checks

        if i == self.hi and config.close_at_end:
            touched += broker.cancel_pending(date, "end of run")
            close_fills, close_orders = broker.close_all(date, prices)
            fills += close_fills
            touched += close_orders
            equity = broker.equity(prices)

        new_orders: list[Order] = []
        updated_orders: list[Order] = []
        if touched:
            unique = {o.client_order_id: o for o in touched}
            for cid, order in unique.items():
                (updated_orders if before is not None and cid in before else new_orders).append(order)
        gross = broker.gross_value(prices) if broker.positions else 0
        exposure = gross / equity if equity > 0 else (0.0 if gross == 0 else math.inf)
        self.journal.commit_step(
            StepRecord(
                self.run_id,
                date,
                i - self.lo,
                equity,
                broker.cash,
                exposure,
                broker.positions,
                prices,
                risk.state,
                risk.halt_reason,
                self.version,
                float(risk.peak_equity if risk.peak_equity is not None else equity),
                float(risk.day_start_equity if risk.day_start_equity is not None else equity),
                new_orders,
                updated_orders,
                fills,
                events,
                self.strategy_name,
                decision.record if decision is not None else None,
                self.iso[i],
            )
        )
        return StepEvent(
            date,
            i - self.lo,
            self.hi - self.lo + 1,
            decision,
            new_orders + updated_orders,
            fills,
            events,
            equity,
            broker.cash,
            self.resumed_steps > 0,
        )

    def _adopt_risk_state(self, date: pd.Timestamp) -> list[Order]:
        """Adopt a halt/resume written to the journal since the last step."""
        acct = self.journal.account(self.run_id)
        if acct is None:
            return []
        self.version = acct.state_version
        risk = self.risk
        risk.state, risk.halt_reason = acct.risk_state, acct.halt_reason  # type: ignore[assignment]
        risk.peak_equity, risk.day_start_equity = acct.peak_equity, acct.day_start_equity
        if risk.state == "ACTIVE":
            return []
        return self.broker.cancel_pending(date, f"cancelled: {risk.state}", only_increasing=True)

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
                adv = market.adv_dollars(ticker, i) if cfg.risk.max_adv_pct is not None else None
                check = self.risk.check(intent, working, ref, date, data_date, adv)
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
    """Whether the journal's constraints accept the order's enum fields."""
    return (
        order.order_type in ("market", "limit")
        and order.time_in_force in ("day", "gtc")
        and order.side in ("buy", "sell")
    )
