"""Code-enforced guards between the agents' replies and an order.

Whatever the replies say, the order that leaves here respects: long-only unless shorting is
allowed, the executor's side agrees with the analyst, the risk manager's size is capped by the
configured position limit, a buy never exceeds that cap given shares held, a sell never exceeds
shares held, and a limit price far from the last close is refused. Every clip or veto is an
event with its reason. The risk engine then applies the account-level limits again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from trading_agents.agents.team import TeamOutcome
from trading_agents.config.settings import RiskSettings
from trading_agents.core.decision import OrderIntent, PortfolioView
from trading_agents.core.orders import grows_position
from trading_agents.core.risk import position_room

MAX_LIMIT_DEVIATION = 0.10  # a limit price more than 10% from the last close is refused


@dataclass(frozen=True)
class GuardEvent:
    stage: str  # analyst | risk | executor | team
    kind: str  # clip | veto | fail_closed | info
    rule: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def outcome_to_intent(
    outcome: TeamOutcome,
    ticker: str,
    portfolio: PortfolioView,
    risk: RiskSettings,
    ref_price: float,
) -> tuple[OrderIntent | None, list[GuardEvent]]:
    """The order the desk's replies amount to after the guards, and what the guards did."""
    events: list[GuardEvent] = []

    def stop(stage: str, kind: str, rule: str, detail: str) -> tuple[None, list[GuardEvent]]:
        events.append(GuardEvent(stage, kind, rule, detail))
        return None, events

    if outcome.error is not None or outcome.analyst is None:
        return stop("team", "fail_closed", "no_valid_reply", outcome.error or "analyst gave no reply")
    report = outcome.analyst
    if report.action == "HOLD":
        return None, events
    held = int(portfolio.positions.get(ticker, 0))
    if report.action == "SELL" and held <= 0 and not risk.allow_short:
        return stop("analyst", "veto", "long_only", "SELL with no long position and shorting disabled")
    verdict = outcome.risk
    if verdict is None:
        return stop("risk", "fail_closed", "no_valid_reply", "risk manager gave no reply")
    if verdict.decision == "reject":
        return None, events
    cap_pct = verdict.max_position_pct
    if cap_pct > risk.max_position_pct:
        events.append(
            GuardEvent(
                "risk", "clip", "max_position_pct", f"{cap_pct:.2f} > limit {risk.max_position_pct:.2f}"
            )
        )
        cap_pct = risk.max_position_pct
    order = outcome.executor
    if order is None:
        return stop("executor", "fail_closed", "no_valid_reply", "executor gave no reply")
    if order.side == "none":
        return None, events
    wanted = "buy" if report.action == "BUY" else "sell"
    if order.side != wanted:
        return stop(
            "executor", "veto", "side_mismatch", f"executor said {order.side}, analyst said {report.action}"
        )
    if ref_price <= 0 or not math.isfinite(ref_price):
        return stop("executor", "veto", "no_price", f"no usable last price for {ticker}")
    if order.quantity <= 0:
        return stop("executor", "veto", "zero_quantity", f"executor proposed {order.quantity} shares")
    state = str(portfolio.risk_state)
    if state != "ACTIVE" and grows_position(wanted, order.quantity, held):
        # the risk engine would refuse it for the same reason: name the state, not a symptom
        return stop("executor", "veto", state, f"account is {state}: only orders that reduce a position")

    if wanted == "buy":
        room = position_room(cap_pct, portfolio.equity, ref_price, held, "buy")
        quantity = min(order.quantity, max(room, 0))
        if quantity < order.quantity:
            events.append(
                GuardEvent(
                    "executor", "clip", "position_cap", f"{order.quantity} shares > room {max(room, 0)}"
                )
            )
    else:
        limit = held if held > 0 else 0
        if risk.allow_short and held <= 0:
            limit = position_room(cap_pct, portfolio.equity, ref_price, held, "sell")
        quantity = min(order.quantity, max(limit, 0))
        if quantity < order.quantity:
            events.append(GuardEvent("executor", "clip", "shares_held", f"{order.quantity} shares > {limit}"))
    if quantity <= 0:
        if wanted == "buy":
            return stop(
                "executor",
                "veto",
                "position_cap_full",
                f"{held} shares held fill the {cap_pct:.0%} position cap ({order.quantity} shares > room 0)",
            )
        return stop("executor", "veto", "no_shares_held", f"no {ticker} shares held to sell")

    order_type, limit_price = order.order_type, order.limit_price
    if order_type == "limit":
        if limit_price is None:
            events.append(GuardEvent("executor", "clip", "limit_without_price", "limit order sent as market"))
            order_type = "market"
        elif abs(limit_price / ref_price - 1) > MAX_LIMIT_DEVIATION:
            return stop(
                "executor",
                "veto",
                "limit_far_from_close",
                f"limit {limit_price:.2f} is more than {MAX_LIMIT_DEVIATION:.0%} from close {ref_price:.2f}",
            )
    else:
        limit_price = None
    stop_loss = (
        ref_price * (1 - verdict.stop_loss_pct) if wanted == "buy" and verdict.stop_loss_pct > 0 else None
    )
    intent = OrderIntent(
        ticker=ticker,
        side=wanted,
        quantity=int(quantity),
        order_type=order_type,
        limit_price=limit_price,
        time_in_force=order.time_in_force,
        stop_loss=round(stop_loss, 4) if stop_loss else None,
        reason=report.rationale[:160],
    )
    return intent, events


def stopped_by(rec: Mapping[str, Any], risk_rules: Sequence[str] = ()) -> str | None:
    """What left a decision without an order though the executor proposed one, read from its
    record (``{"agents": [...], "guards": [...], "intent": ...}``): the guard rule that vetoed
    or failed closed (``position_cap_full``, ``HALTED``, ...), else the analyst's HOLD or the
    risk manager's reject; for an intent, the risk engine's veto among ``risk_rules``
    (``kind:rule`` of that bar and ticker: ``max_gross_exposure_pct``, ``max_data_age_days``
    for stale data, ``risk_state``). None when there is an order or nothing was proposed."""
    outputs = {a.get("role"): a.get("output") or {} for a in rec.get("agents") or []}
    side = outputs.get("executor", {}).get("side")
    if rec.get("intent"):
        vetoes = [r.split(":", 1)[1] for r in risk_rules if r.startswith("veto:")]
        return f"risk engine veto: {vetoes[0]}" if vetoes else None
    if side in (None, "none"):
        return None
    stops = [g for g in rec.get("guards") or [] if g.get("kind") in ("veto", "fail_closed")]
    if stops:
        return f"{stops[-1]['stage']} {stops[-1]['kind']}: {stops[-1]['rule']}"
    if outputs.get("analyst", {}).get("action") == "HOLD":
        return "analyst: HOLD"
    if outputs.get("risk", {}).get("decision") == "reject":
        return "risk: reject"
    return None


def order_text(rec: Mapping[str, Any], risk_rules: Sequence[str] = ()) -> str:
    """A decision's order in brief: ``buy 12``, with the risk engine's ``kind:rule`` events in
    brackets, or ``none`` with what stopped the executor's proposal (:func:`stopped_by`)."""
    intent = rec.get("intent")
    if intent:
        text = f"{intent['side']} {intent['quantity']}"
        return f"{text} ({', '.join(risk_rules)})" if risk_rules else text
    why = stopped_by(rec)
    return f"none ({side_text(rec)} stopped by {why})" if why else "none"


def side_text(rec: Mapping[str, Any]) -> str:
    """The executor's proposal in brief, ``buy 100``."""
    outputs = {a.get("role"): a.get("output") or {} for a in rec.get("agents") or []}
    proposal = outputs.get("executor", {})
    return f"{proposal.get('side')} {proposal.get('quantity')}"
