"""What news and the track record cost a decision, for ``bench session``.

Runs the desk on the embedded model over the same bundled GOOG bars as the session benchmark,
with the bundled synthetic news file (``news.max_items`` 5) and the track record on, and
reports tokens per decision next to the figures of the plain run. The analyst's prompt is the
one that grows (news and track record are in the day's task, which all three agents share),
so ``analyst_prompt_tokens_mean`` is the like-for-like figure; tokens per decision also
depend on how many decisions reach the risk manager and the executor.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from trading_agents.agents.desk_strategy import build_agent_strategy
from trading_agents.config.settings import load_settings
from trading_agents.journal import MemoryJournal
from trading_agents.market import load_bars
from trading_agents.market.news import FileNewsProvider
from trading_agents.session import run_session

BUNDLED_NEWS = Path(__file__).resolve().parents[1] / "market" / "data" / "GOOG.news.jsonl"


def measure(days: int, home: Path, *, news_items: int = 5, memory: bool = True) -> dict[str, Any]:
    """One session of the last ``days`` bundled GOOG bars with news and memory as given."""
    settings = load_settings(
        overrides={"paths.home": str(home), "news.max_items": news_items, "memory.enabled": memory}
    )
    bars = load_bars(tickers=["GOOG"])
    dates = bars["GOOG"].index[-days:]
    news = FileNewsProvider(BUNDLED_NEWS) if news_items else None
    strategy = build_agent_strategy(settings, use_cache=False, stream=True, news=news)
    try:
        result = run_session(
            settings,
            bars,
            dates[0],
            dates[-1],
            account="bench-inputs",
            journal=MemoryJournal(),
            strategy=strategy,
        ).result
        stats = strategy.llm_stats()
        steps = [s for o in strategy.outcomes for s in o.steps]
    finally:
        strategy.close()
    records = [r for d in result.decisions for r in (d["record"].get("tickers") or {}).values()]
    decisions = len(strategy.outcomes)
    analyst = [s.prompt_tokens for s in steps if s.role == "analyst"]
    tokens = stats["prompt_tokens"] + stats["completion_tokens"]
    return {
        "news_items": news_items,
        "memory": memory,
        "decisions": decisions,
        "decisions_with_news": sum(1 for r in records if r.get("news")),
        "decisions_with_track_record": sum(
            1 for r in records if (r.get("track_record") or {}).get("outcomes")
        ),
        "llm_calls": stats["calls"],
        "tokens_per_decision": round(tokens / decisions, 1) if decisions else None,
        "prompt_tokens_per_decision": round(stats["prompt_tokens"] / decisions, 1) if decisions else None,
        "analyst_prompt_tokens_mean": round(statistics.mean(analyst), 1) if analyst else None,
        "kv_cache_share": round(stats["cached_prompt_tokens"] / stats["prompt_tokens"], 3)
        if stats["prompt_tokens"]
        else None,
    }
