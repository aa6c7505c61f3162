"""The agent desk as an engine :class:`~trading_agents.core.decision.Strategy`.

For each instrument with a bar at the decision date, the desk gets a point-in-time snapshot
(built from bars the engine has already cut at that date), runs analyst -> risk -> executor,
and the guards turn the replies into at most one order intent. The decision record keeps,
per agent, the prompt, the reply, the model that served it and why, latency and tokens.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from trading_agents.agents.clients import build_desk_models
from trading_agents.agents.costs import steps_cost_usd
from trading_agents.agents.desk_models import DeskModels
from trading_agents.agents.guards import outcome_to_intent
from trading_agents.agents.inputs import DeskInputs
from trading_agents.agents.portfolio_manager import PortfolioManager, render_pm_task
from trading_agents.agents.prompts import desk_rules, render_task
from trading_agents.agents.schemas import AnalystReport
from trading_agents.agents.team import TeamOutcome, TradingTeam
from trading_agents.config.settings import Settings
from trading_agents.core import DecisionContext, OrderIntent, StrategyDecision
from trading_agents.core.portfolio import (
    clip_weights,
    conviction_weights,
    current_weights,
    rebalance_intents,
)
from trading_agents.market.news import BLIND_LABEL, NewsSource


class AgentStrategy:
    """Runs the :class:`TradingTeam` on every decision bar. Not thread-safe; one per run.

    With ``portfolio.mode`` ``conviction`` or ``llm`` only the analyst runs per ticker; the
    portfolio step then sets target weights for the whole universe (deterministically, or by
    the :class:`PortfolioManager` on ``manager_desk``'s client) and the orders rebalance
    toward them (:mod:`trading_agents.core.portfolio`). The decision record's ``portfolio``
    holds the targets, the weight clips, the orders and what was skipped.
    """

    name = "agents"

    def __init__(
        self,
        desk: DeskModels,
        settings: Settings,
        *,
        blind: bool = False,
        include_prompts: bool = True,
        stream: bool = True,
        news: NewsSource | None = None,
        manager_desk: DeskModels | None = None,
    ) -> None:
        self.desk = desk
        self.manager_desk = manager_desk
        self.manager: PortfolioManager | None = None
        self.targets: dict[str, float] | None = None  # the portfolio step's last targets
        self.settings = settings
        self.blind = blind
        self.include_prompts = include_prompts
        self.team = TradingTeam(desk.clients, stream=stream, system_message=desk_rules(settings.risk))
        self.on_event: Callable[[str, Any], None] | None = None
        self.on_ticker: Callable[[str, Any], None] | None = None
        self._loop = asyncio.new_event_loop()
        self._steps: list[dict[str, Any]] = []
        self.outcomes: list[TeamOutcome] = []
        self.inputs = DeskInputs(settings, news, blind=blind)

    def remember(self, decisions: Iterable[Mapping[str, Any]]) -> None:
        """Hand the strategy the run's earlier decision rows (``ledger.decisions(run_id)``) so the
        track record continues where a resumed session left off. Call before the engine runs."""
        self.inputs.remember(decisions)

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        if self.settings.portfolio.mode != "off":
            return self._decide_portfolio(ctx)
        intents: list[OrderIntent] = []
        per_ticker: dict[str, Any] = {}
        for ticker in sorted(ctx.bars):
            bars = ctx.bars[ticker]
            if bars.empty or bars.index[-1] != ctx.as_of:
                per_ticker[ticker] = {"skipped": "no bar at the decision date"}
                continue
            label = BLIND_LABEL if self.blind else ticker
            seen = self.inputs.prepare(ticker, bars, ctx.as_of, label)  # snapshot, news cut, track record
            task = render_task(
                seen.snapshot_text,
                label,
                ctx.portfolio,
                ticker,
                track_record=seen.track_text,
            )
            if self.on_ticker:
                self.on_ticker(ticker, ctx.as_of)
            outcome = self._loop.run_until_complete(self.team.decide(task, self.on_event))
            self.outcomes.append(outcome)
            ref_price = float(bars["Close"].iloc[-1])
            intent, events = outcome_to_intent(outcome, ticker, ctx.portfolio, self.settings.risk, ref_price)
            if intent is not None:
                intents.append(intent)
            steps = [s.to_record(self.include_prompts) for s in outcome.steps]
            self._steps.extend(steps)
            per_ticker[ticker] = {
                "task": task if self.include_prompts else None,
                "agents": steps,
                "guards": [e.to_dict() for e in events],
                "intent": _intent_dict(intent),
                "wall_s": round(outcome.wall_s, 3),
                "llm_cost_usd": steps_cost_usd(steps, self.settings.costs),
                "error": outcome.error,
                **seen.record,
                **self.inputs.settle(ticker, ctx.as_of, outcome.analyst, seen),
            }
        return StrategyDecision(intents=intents, record=_with_cost({"tickers": per_ticker}))

    def _decide_portfolio(self, ctx: DecisionContext) -> StrategyDecision:
        """The analysts' reports for every ticker with a bar today, then one portfolio step."""
        settings = self.settings
        universe = sorted(ctx.bars)
        per_ticker: dict[str, Any] = {}
        reports: dict[str, AnalystReport | None] = {}
        for ticker in universe:
            bars = ctx.bars[ticker]
            if bars.empty or bars.index[-1] != ctx.as_of:
                per_ticker[ticker] = {"skipped": "no bar at the decision date"}
                continue
            label = BLIND_LABEL if self.blind else ticker
            seen = self.inputs.prepare(ticker, bars, ctx.as_of, label)
            task = render_task(seen.snapshot_text, label, ctx.portfolio, ticker, track_record=seen.track_text)
            if self.on_ticker:
                self.on_ticker(ticker, ctx.as_of)
            outcome = self._loop.run_until_complete(self.team.analyse(task, self.on_event))
            self.outcomes.append(outcome)
            reports[ticker] = outcome.analyst
            steps = [s.to_record(self.include_prompts) for s in outcome.steps]
            self._steps.extend(steps)
            per_ticker[ticker] = {
                "task": task if self.include_prompts else None,
                "agents": steps,
                "wall_s": round(outcome.wall_s, 3),
                "llm_cost_usd": steps_cost_usd(steps, settings.costs),
                "error": outcome.error,
                **seen.record,
                **self.inputs.settle(ticker, ctx.as_of, outcome.analyst, seen),
            }
        current = current_weights(ctx.portfolio, universe)
        portfolio: dict[str, Any] = {"mode": settings.portfolio.mode, "current": _rounded(current)}
        if settings.portfolio.mode == "conviction":
            targets, clips = conviction_weights(
                {t: (r.action, r.conviction) if r is not None else None for t, r in reports.items()},
                current,
                universe,
                settings.risk,
            )
        else:
            targets, clips = self._manager_targets(reports, current, universe, portfolio)
        # a ticker without a bar today is not traded: its target is its current weight
        for ticker in universe:
            if ticker not in reports and targets.get(ticker) != current[ticker]:
                targets, more = clip_weights({**targets, ticker: current[ticker]}, universe, settings.risk)
                clips += more
        self.targets = targets
        intents, skipped = rebalance_intents(
            targets,
            ctx.portfolio,
            min_trade_pct=settings.portfolio.min_trade_pct,
            commission=settings.broker.commission,
            slippage_bps=settings.broker.slippage_bps,
        )
        portfolio.update(
            targets=targets,
            clips=clips,
            orders=[_intent_dict(i) for i in intents],
            skipped=skipped,
        )
        record = {"tickers": per_ticker, "portfolio": portfolio}
        return StrategyDecision(intents=intents, record=_with_cost(record))

    def _manager_targets(
        self,
        reports: Mapping[str, AnalystReport | None],
        current: Mapping[str, float],
        universe: list[str],
        portfolio: dict[str, Any],
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """The portfolio manager's weights under the caps; on a failed answer the last targets
        (the current weights before any) and the error."""
        if self.manager is None or self.manager.tickers != universe:
            desk = self.manager_desk or self.desk
            self.manager = PortfolioManager(desk.clients["executor"], universe, self.settings.risk)
        task = render_pm_task(reports, current, universe)
        answer = self._loop.run_until_complete(self.manager.answer(task))
        step = answer.step.to_record(self.include_prompts)
        self._steps.append(step)
        portfolio["manager"] = {
            "task": task if self.include_prompts else None,
            "agent": step,
            "answer": answer.weights,
            "error": answer.error,
            "wall_s": round(answer.wall_s, 3),
            "llm_cost_usd": steps_cost_usd([step], self.settings.costs),
        }
        if answer.weights is None:
            kept = self.targets if self.targets is not None else {**current}
            portfolio["fail_closed"] = f"targets unchanged: {answer.error}"
            return clip_weights({t: kept.get(t, 0.0) for t in universe}, universe, self.settings.risk)
        return clip_weights(answer.weights, universe, self.settings.risk)

    def llm_stats(self) -> dict[str, Any]:
        """Calls, cache hits, tokens, models (name -> sha256), seed and route reasons so far.

        ``served`` names the models that answered at least one call, in order of first call;
        ``models`` holds only those once any call was made (the configured pair before).
        """
        steps = self._steps
        served = list(dict.fromkeys(s["model"] for s in steps))
        configured = self.desk.model_sha256(self.settings.paths.home)
        models = {name: sha for name, sha in configured.items() if name in served} or configured
        return {
            "calls": sum(1 for s in steps if not s["from_response_cache"]),
            "cached_calls": sum(1 for s in steps if s["from_response_cache"]),
            "prompt_tokens": sum(s["prompt_tokens"] for s in steps),
            "cached_prompt_tokens": sum(s["cached_prompt_tokens"] for s in steps),
            "completion_tokens": sum(s["completion_tokens"] for s in steps),
            "fixed_tokens": sum(s.get("fixed_tokens", 0) for s in steps),
            "failed_steps": sum(1 for s in steps if s.get("error")),
            "llm_cost_usd": steps_cost_usd(steps, self.settings.costs),
            "routes": dict(Counter(f"{s['model']}:{s['route_reason']}" for s in steps)),
            "models": models,
            "served": served,
            "seed": self.settings.llm.seed,
            "notes": list(self.desk.notes),
        }

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self.team.close())
            if self.manager_desk is not None:
                for client in {id(c): c for c in self.manager_desk.clients.values()}.values():
                    self._loop.run_until_complete(client.close())
        finally:
            self._loop.close()


def _with_cost(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with ``llm_cost_usd``: the decision's agent calls in dollars (see
    :mod:`trading_agents.agents.costs`), stored with it so a replay counts the original cost."""
    parts = [t.get("llm_cost_usd", 0.0) for t in record["tickers"].values()]
    manager = (record.get("portfolio") or {}).get("manager")
    if manager:
        parts.append(manager["llm_cost_usd"])
    record["llm_cost_usd"] = round(sum(parts), 8)
    return record


def _rounded(weights: Mapping[str, float]) -> dict[str, float]:
    return {t: round(w, 6) for t, w in weights.items()}


def _intent_dict(intent: OrderIntent | None) -> dict[str, Any] | None:
    if intent is None:
        return None
    return {k: getattr(intent, k) for k in intent.__dataclass_fields__}


def build_agent_strategy(
    settings: Settings,
    *,
    use_cache: bool = True,
    blind: bool = False,
    cache_path: Path | None = None,
    stream: bool = True,
    news: NewsSource | None = None,
) -> AgentStrategy:
    """The desk on the configured models; ``use_cache`` turns on the replay response cache
    (``<home>/llm_cache.sqlite`` unless ``cache_path`` is given); ``news``: what the analyst
    may read (see :func:`trading_agents.market.news.open_news`)."""
    cache = (cache_path or settings.paths.home / "llm_cache.sqlite") if use_cache else None
    desk = build_desk_models(settings, response_cache=cache)
    manager_desk = None
    if settings.portfolio.mode == "llm":  # the manager's reply has its own token cap
        llm = settings.llm.model_copy(update={"max_tokens": settings.portfolio.max_tokens})
        manager_desk = build_desk_models(settings.model_copy(update={"llm": llm}), response_cache=cache)
    return AgentStrategy(desk, settings, blind=blind, stream=stream, news=news, manager_desk=manager_desk)
