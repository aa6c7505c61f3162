"""``bench session``: what a decision costs, and what the framework adds to llama.cpp.

A session of N trading days (60, or 5 with ``--quick``) runs the desk on the embedded model
over bundled GOOG bars ending on :data:`WINDOW_END`: a window with a fall (October 2012, -16%)
and a recovery, so ``analyst_actions`` shows whether the analyst's action follows the market.
Reported: per-agent latency; prompt and completion tokens per decision
(TradingAgents spends 11 LLM calls and 20+ tool calls per decision); the share of prompt tokens
served from the KV cache; and framework overhead: each decision's wall time (snapshot, AutoGen
team, guards) divided by the time raw llama.cpp takes for the same prompts and outputs, replayed
right after each decision on a second ``llama_cpp.Llama`` with the same grammar, sampling and
RAM cache (both instances map the same file, so the weights are in memory once).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from trading_agents.agents.desk_strategy import AgentStrategy, build_agent_strategy
from trading_agents.agents.replies import degenerate_reasons
from trading_agents.agents.schemas import ROLE_SCHEMAS
from trading_agents.bench.inputs import measure as measure_inputs
from trading_agents.config.settings import load_settings
from trading_agents.core import DecisionContext, StrategyDecision
from trading_agents.journal import MemoryJournal
from trading_agents.market import load_bars
from trading_agents.session import run_session
from utils.llm_integration.gpu import backend_info, offload_kwargs, planned_offload
from utils.llm_integration.grammar import json_schema_grammar
from utils.llm_integration.loaded_model import LocalLLM, load_llama, ram_state_cache
from utils.llm_integration.spec import SamplingParams


class _RawReplay:
    """Raw llama.cpp on its own ``Llama`` instance of the same file, with the same grammar,
    sampling and RAM state cache as the framework: the baseline of the overhead ratio."""

    def __init__(self, llm: LocalLLM, sampling: SamplingParams) -> None:
        spec = llm.spec
        self.sampling = sampling
        self.stops = llm.render([{"role": "user", "content": ""}])[1]  # the chat format's stop strings
        self.llama = load_llama(
            spec.path,
            spec.n_ctx,
            n_threads=llm.n_threads,
            n_batch=spec.n_batch,
            seed=spec.seed,
            **offload_kwargs(spec.n_gpu_layers, spec.main_gpu, spec.tensor_split),
        )
        if spec.ram_cache_mb:
            self.llama.set_cache(ram_state_cache(spec.ram_cache_mb << 20))
        self.grammars = {role: json_schema_grammar(s.model_json_schema()) for role, s in ROLE_SCHEMAS.items()}
        self.times: list[float] = []
        self.identical = 0

    def replay(self, steps: list[dict[str, Any]]) -> float:
        """Run ``steps`` (agent step records with their prompts); returns the seconds taken."""
        total = 0.0
        for step in steps:
            t = time.perf_counter()
            out = self.llama.create_completion(
                step["prompt"],
                max_tokens=self.sampling.max_tokens,
                temperature=self.sampling.temperature,
                top_p=self.sampling.top_p,
                top_k=self.sampling.top_k,
                repeat_penalty=self.sampling.repeat_penalty,
                seed=self.sampling.seed,
                stop=self.stops,
                grammar=self.grammars[step["role"]],
            )
            took = time.perf_counter() - t
            self.times.append(took)
            total += took
            text = out["choices"][0]["text"]
            schema = ROLE_SCHEMAS[step["role"]]
            with contextlib.suppress(ValueError):  # an unparseable reply simply does not count as identical
                self.identical += schema.model_validate_json(text).model_dump(mode="json") == step["output"]
        return total

    def close(self) -> None:
        self.llama.close()


class _Interleaved:
    """Wraps the desk's strategy: times each ``decide``, then replays its LLM calls on raw
    llama.cpp right away. Interleaving keeps the ratio honest on a shared machine: a burst of
    load from elsewhere slows both sides of the same decision instead of one whole phase."""

    def __init__(self, inner: AgentStrategy, raw: _RawReplay) -> None:
        self.inner = inner
        self.name = inner.name
        self.raw = raw
        self.wall: list[float] = []
        self.raw_wall: list[float] = []

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        seen = len(self.inner.outcomes)
        t = time.perf_counter()
        out = self.inner.decide(ctx)
        self.wall.append(time.perf_counter() - t)
        steps = [s.to_record() for o in self.inner.outcomes[seen:] for s in o.steps]
        self.raw_wall.append(self.raw.replay(steps))
        return out


def _time_breakdown(steps: list[Any]) -> dict[str, float]:
    """Mean seconds per call: prompt evaluation, generation, grammar sampling, state cache
    save and restore, and everything else (the rest of the call's latency)."""
    spent = [s.time_breakdown or {} for s in steps]
    n = max(1, len(steps))
    out = {
        "prompt_eval_s": sum(b.get("prompt_eval_s", 0.0) for b in spent) / n,
        "generation_s": sum(b.get("generation_s", 0.0) for b in spent) / n,
        "grammar_sampling_s": sum(b.get("sampling_s", 0.0) for b in spent) / n,
        "cache_state_s": sum(b.get("cache_state_s", 0.0) for b in spent) / n,
    }
    out["other_s"] = max(0.0, sum(s.latency_s for s in steps) / n - sum(out.values()))
    out["latency_s"] = sum(s.latency_s for s in steps) / n
    return {k: round(v, 4) for k, v in out.items()}


WINDOW_END = "2013-01-02"


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    days = 5 if quick else 60
    with tempfile.TemporaryDirectory() as home:
        # the plain desk: no news, no track record (their cost is measured next to it, below)
        settings = load_settings(overrides={"paths.home": home, "memory.enabled": False})
        bars = load_bars(tickers=["GOOG"])
        index = bars["GOOG"].index
        dates = index[index <= WINDOW_END][-days:]
        strategy = build_agent_strategy(settings, use_cache=False, stream=True)
        primary = strategy.desk.primary
        llm: LocalLLM = strategy.desk.clients["analyst"].llm  # type: ignore[attr-defined]
        sampling = SamplingParams(**settings.llm.sampling_options())  # as the desk's clients
        raw = _RawReplay(llm, sampling)
        timed = _Interleaved(strategy, raw)
        # one-time costs (first touch of buffers, thread pools) are paid before timing, on both sides
        llm.complete([{"role": "user", "content": "Reply OK."}], sampling=SamplingParams(max_tokens=4))
        raw.llama.create_completion("Reply OK.", max_tokens=4, temperature=0.0)
        started = time.perf_counter()
        run_session(settings, bars, dates[0], dates[-1], journal=MemoryJournal(), strategy=timed)
        session_wall = time.perf_counter() - started
        stats = strategy.llm_stats()
        steps = [s for o in strategy.outcomes for s in o.steps]
        strategy.close()
        raw.close()

    per_role: dict[str, dict[str, float]] = {}
    for role in ("analyst", "risk", "executor"):
        lat = [s.latency_s for s in steps if s.role == role]
        if lat:
            per_role[role] = {
                "calls": len(lat),
                "p50_s": round(statistics.median(lat), 3),
                "max_s": round(max(lat), 3),
                "mean_prompt_tokens": round(
                    statistics.mean(s.prompt_tokens for s in steps if s.role == role), 1
                ),
                "mean_completion_tokens": round(
                    statistics.mean(s.completion_tokens for s in steps if s.role == role), 1
                ),
            }
    time_breakdown = {
        role: _time_breakdown([s for s in steps if s.role == role])
        for role in ("analyst", "risk", "executor")
        if any(s.role == role for s in steps)
    }
    flagged = [(s.role, degenerate_reasons(s.output)) for s in steps if s.output is not None]
    degenerate = [(role, why) for role, why in flagged if why]
    actions = Counter(o.analyst.action for o in strategy.outcomes if o.analyst is not None)
    evaluated = stats["prompt_tokens"] - stats["cached_prompt_tokens"]
    decisions = len(timed.wall)
    total_tokens = stats["prompt_tokens"] + stats["completion_tokens"]
    framework = sum(timed.wall)
    raw_total = sum(timed.raw_wall)
    ratios = [w / r for w, r in zip(timed.wall, timed.raw_wall, strict=True) if r > 0]
    trades = sum(1 for o in strategy.outcomes if o.executor is not None)
    spec = llm.spec
    plan = planned_offload(spec.path, spec.n_ctx, spec.n_gpu_layers, spec.main_gpu, spec.tensor_split)
    with tempfile.TemporaryDirectory() as home:
        with_inputs = measure_inputs(days, Path(home), news_items=5, memory=True)
    return {
        "model": primary.name,
        "backend": backend_info()["backend"],
        "n_gpu_layers": llm.spec.n_gpu_layers,
        "offloaded_layers": plan.offloaded_layers if plan else None,
        "days": days,
        "decisions": decisions,
        "llm_calls": stats["calls"],
        "calls_per_decision": round(stats["calls"] / decisions, 2) if decisions else None,
        "decisions_reaching_executor": trades,
        "per_agent_latency": per_role,
        "time_breakdown": time_breakdown,
        "evaluated_prompt_tokens_per_decision": round(evaluated / decisions, 1) if decisions else None,
        "evaluated_prompt_tokens_per_decision_target": 450,
        # sampled by the model; the schema's fixed text is evaluated in batches instead
        "generated_tokens_per_decision": round(
            (stats["completion_tokens"] - stats["fixed_tokens"]) / decisions, 1
        )
        if decisions
        else None,
        "generated_tokens_per_decision_target": 150,
        "fixed_tokens_per_decision": round(stats["fixed_tokens"] / decisions, 1) if decisions else None,
        "degenerate_reply_share": round(len(degenerate) / len(flagged), 3) if flagged else None,
        "degenerate_reply_share_target": 0.0,
        "degenerate_examples": [f"{role}: {'; '.join(why)}" for role, why in degenerate[:5]],
        "window": [str(dates[0].date()), str(dates[-1].date())],
        "analyst_actions": dict(actions),
        "analyst_actions_vary": len(actions) > 1,
        "threads": llm.n_threads,
        "tokens_per_decision": round(total_tokens / decisions, 1) if decisions else None,
        "tokens_per_decision_target": 3000,
        "prompt_tokens": stats["prompt_tokens"],
        "cached_prompt_tokens": stats["cached_prompt_tokens"],
        "kv_cache_share": round(stats["cached_prompt_tokens"] / stats["prompt_tokens"], 3)
        if stats["prompt_tokens"]
        else None,
        "kv_cache_share_target": 0.80,
        "decision_wall_s_total": round(framework, 2),
        "raw_llama_cpp_s_total": round(raw_total, 2),
        "framework_overhead_ratio": round(framework / raw_total, 3) if raw_total else None,
        "framework_overhead_target": 1.10,
        "decision_wall_s_p50": round(statistics.median(timed.wall), 3) if timed.wall else None,
        "decision_wall_s_median": round(statistics.median(timed.wall), 2) if timed.wall else None,
        "decision_wall_s_median_target": 4.0,
        "decision_wall_s": [round(w, 2) for w in timed.wall],
        "raw_wall_s": [round(w, 2) for w in timed.raw_wall],
        "framework_overhead_per_decision_p50": round(statistics.median(ratios), 3) if ratios else None,
        "framework_overhead_per_decision_max": round(max(ratios), 3) if ratios else None,
        "raw_replay_identical_outputs": f"{raw.identical}/{len(raw.times)}",
        "session_wall_s": round(session_wall - raw_total, 2),
        "failed_steps": stats["failed_steps"],
        "with_news_and_memory": with_inputs,
    }
