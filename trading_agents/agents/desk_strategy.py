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
from trading_agents.agents.desk_models import DeskModels
from trading_agents.agents.guards import outcome_to_intent
from trading_agents.agents.inputs import DeskInputs
from trading_agents.agents.prompts import desk_rules, render_task
from trading_agents.agents.team import TeamOutcome, TradingTeam
from trading_agents.config.settings import Settings
from trading_agents.core import DecisionContext, OrderIntent, StrategyDecision
from trading_agents.market.news import BLIND_LABEL, NewsSource


class AgentStrategy:
    """Runs the :class:`TradingTeam` on every decision bar. Not thread-safe; one per run."""

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
    ) -> None:
        self.desk = desk
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
                "error": outcome.error,
                **seen.record,
                **self.inputs.settle(ticker, ctx.as_of, outcome.analyst, seen),
            }
        return StrategyDecision(intents=intents, record={"tickers": per_ticker})

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
            "routes": dict(Counter(f"{s['model']}:{s['route_reason']}" for s in steps)),
            "models": models,
            "served": served,
            "seed": self.settings.llm.seed,
            "notes": list(self.desk.notes),
        }

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self.team.close())
        finally:
            self._loop.close()


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
    return AgentStrategy(desk, settings, blind=blind, stream=stream, news=news)
