"""What the desk's own LLM calls cost, in dollars (``costs:`` in the config).

Each agent reply costs its compute time at ``costs.compute_usd_per_hour`` plus its tokens at
``costs.usd_per_1k_prompt_tokens`` and ``costs.usd_per_1k_completion_tokens`` (external
endpoints). The time is the step's ``compute_s``: the call's own latency, or for a reply
replayed from the response cache the latency of the call it was recorded from, so a replayed
run costs what its original decisions cost, not zero. The cost is stored with each decision
(``llm_cost_usd`` in the decision record) and summed from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from trading_agents.config.settings import CostsSettings


def steps_cost_usd(steps: Iterable[Mapping[str, Any]], costs: CostsSettings) -> float:
    """Dollars of the agent steps (``AgentStep.to_record()`` dicts)."""
    total = 0.0
    for step in steps:
        seconds = float(step.get("compute_s", step.get("latency_s", 0.0)) or 0.0)
        total += seconds * costs.compute_usd_per_hour / 3600.0
        total += float(step.get("prompt_tokens", 0) or 0) / 1000.0 * costs.usd_per_1k_prompt_tokens
        total += float(step.get("completion_tokens", 0) or 0) / 1000.0 * costs.usd_per_1k_completion_tokens
    return round(total, 8)


def decisions_cost_usd(decisions: Iterable[Mapping[str, Any]]) -> float:
    """The ``llm_cost_usd`` stored with each decision record (journal or decisions.jsonl rows)."""
    total = 0.0
    for item in decisions:
        record = item.get("record") or {}
        if isinstance(record, Mapping):
            total += float(record.get("llm_cost_usd", 0.0) or 0.0)
    return round(total, 6)
