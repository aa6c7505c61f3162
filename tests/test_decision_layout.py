"""What a decision evaluates: prompts that extend each other, replies quoted back as the tokens
they were generated as, lean cache states and batch threads, on the real embedded model
through the desk's own prompt layout."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from autogen_core.models import UserMessage

from trading_agents.agents.prompts import desk_rules, render_task
from trading_agents.agents.schemas import ROLE_SCHEMAS
from trading_agents.agents.team import ROLES, RoleContext
from trading_agents.config.settings import RiskSettings
from trading_agents.core import PortfolioView
from trading_agents.market import load_bars
from trading_agents.market.snapshot import build_snapshot, signal_reading, snapshot_to_prompt
from utils.llm_integration.autogen_client import to_chat_messages
from utils.llm_integration.loaded_model import Completion, LocalLLM
from utils.llm_integration.spec import LLMSpec


def _task(day: int = -1) -> str:
    bars = load_bars(tickers=["GOOG"])["GOOG"]
    snap = build_snapshot("GOOG", bars, bars.index[day])
    view = PortfolioView(
        cash=100_000.0,
        equity=100_000.0,
        positions={},
        prices={"GOOG": snap.last_close},
        peak_equity=100_000.0,
        day_start_equity=100_000.0,
        risk_state="ACTIVE",
    )
    return render_task(snapshot_to_prompt(snap), "GOOG", view, "GOOG")


def _messages(role: str, task: str, earlier: dict[str, str]) -> list[dict[str, str]]:
    """The chat messages ``role``'s AssistantAgent sends: its RoleContext over the task and the
    earlier agents' replies as GraphFlow hands them over (compact JSON, source = the role)."""
    context = RoleContext(role)

    async def build() -> list[dict[str, str]]:
        await context.add_message(UserMessage(content=task, source="desk"))
        for source, text in earlier.items():
            await context.add_message(UserMessage(content=text, source=source))
        return [
            {"role": "system", "content": desk_rules(RiskSettings())},
            *to_chat_messages(await context.get_messages()),
        ]

    return asyncio.run(build())


def _decide(llm: LocalLLM, task: str) -> list[Completion]:
    """Analyst, risk and executor in turn, each shown what the ones before it replied."""
    earlier: dict[str, str] = {}
    out = []
    for role in ROLES:
        done = llm.complete(_messages(role, task, earlier), schema=ROLE_SCHEMAS[role])
        assert done.parsed is not None
        earlier[role] = done.parsed.model_dump_json()  # what StructuredMessage.to_model_text() gives
        out.append(done)
    return out


@pytest.fixture(scope="module")
def llm(embedded_model: Path) -> LocalLLM:
    model = LocalLLM(LLMSpec(path=embedded_model, n_threads=1, ram_cache_mb=0))
    yield model
    model.close()


def test_each_agent_reuses_the_prompt_and_reply_before_it(llm: LocalLLM) -> None:
    task = _task()
    steps = _decide(llm, task)
    for before, after in itertools.pairwise(steps):
        # compact JSON: the reply is the very text it is quoted back as
        assert before.text == before.parsed.model_dump_json()  # type: ignore[union-attr]
        # everything up to and including the reply came from the KV cache: only the short
        # cue after it was evaluated
        assert (
            after.metrics.cached_prompt_tokens
            >= before.metrics.prompt_tokens + before.metrics.completion_tokens - 2
        )
        assert after.metrics.prompt_tokens - after.metrics.cached_prompt_tokens < 40
    # the next day's analyst evaluates the new task, not the desk rules again
    rules_tokens = len(
        llm.tokenize(llm.render([{"role": "system", "content": desk_rules(RiskSettings())}])[0])
    )
    nxt = llm.complete(_messages("analyst", _task(-2), {}), schema=ROLE_SCHEMAS["analyst"])
    assert nxt.metrics.cached_prompt_tokens >= rules_tokens - 2


def test_a_reply_that_is_not_quoted_back_verbatim_is_tokenized_afresh(llm: LocalLLM) -> None:
    task = _task()
    analyst = llm.complete(_messages("analyst", task, {}), schema=ROLE_SCHEMAS["analyst"])
    edited = analyst.text.replace('"action":"', '"action": "')  # not what the KV holds
    msgs = _messages("risk", task, {"analyst": edited})
    prompt = llm.render(msgs)[0]
    assert llm.prompt_tokens(prompt) == llm.tokenize(prompt)
    risk = llm.complete(msgs, schema=ROLE_SCHEMAS["risk"])
    assert (
        risk.metrics.cached_prompt_tokens
        < analyst.metrics.prompt_tokens + analyst.metrics.completion_tokens - 2
    )


def test_cache_states_leave_the_unused_logits_buffer_out(embedded_model: Path) -> None:
    model = LocalLLM(LLMSpec(path=embedded_model, n_threads=1, ram_cache_mb=256))
    try:
        task_a, task_b = _task(-1), _task(-30)
        first = model.complete(_messages("analyst", task_a, {}), schema=ROLE_SCHEMAS["analyst"])
        model.complete(_messages("analyst", task_b, {}), schema=ROLE_SCHEMAS["analyst"])
        cache = model.llama.cache
        assert cache is not None and cache.cache_state
        assert all(state.scores.shape[0] == 0 for state in cache.cache_state.values())
        again = model.complete(_messages("analyst", task_a, {}), schema=ROLE_SCHEMAS["analyst"])
        # task A's state came back from the RAM cache, and with it the same reply
        assert again.metrics.cached_prompt_tokens >= first.metrics.prompt_tokens - 1
        assert again.text == first.text
    finally:
        model.close()


def test_short_batches_run_on_the_decoding_thread_count(embedded_model: Path) -> None:
    """A two-thread prompt batch is faster on long prompts; a short one keeps the decode count
    (waking threads costs more than it saves), and the batch count is restored afterwards."""
    from llama_cpp import llama_cpp as lib

    model = LocalLLM(LLMSpec(path=embedded_model, n_threads=1, ram_cache_mb=0))
    try:
        llama = model.llama
        lib.llama_set_n_threads(llama._ctx.ctx, 1, 2)
        llama.n_threads_batch = 2
        seen: list[int] = []
        decode = llama._ctx.decode

        def watch(batch: object) -> None:
            seen.append(lib.llama_n_threads_batch(llama._ctx.ctx))
            decode(batch)

        llama._ctx.decode = watch  # type: ignore[method-assign]
        tokens = model.tokenize(_task())
        llama.eval(tokens[:8])
        llama.eval(tokens[8:200])
        assert seen == [1, 2]
        assert lib.llama_n_threads_batch(llama._ctx.ctx) == 2
    finally:
        model.close()


@pytest.mark.parametrize(
    ("day", "trend"),
    [("2013-03-01", "trend up"), ("2012-10-25", "trend down"), ("2012-10-18", "trend mixed")],
)
def test_the_snapshot_reads_its_comparisons_in_words(day: str, trend: str) -> None:
    bars = load_bars(tickers=["GOOG"])["GOOG"]
    snap = build_snapshot("GOOG", bars, day)
    reading = signal_reading(snap)
    assert reading.startswith(trend)
    up = snap.macd >= snap.macd_signal  # type: ignore[operator]
    assert f"momentum {'up' if up else 'down'}" in reading
    assert f"Signals: {reading}." in snapshot_to_prompt(snap)


def test_a_short_history_has_no_reading() -> None:
    bars = load_bars(tickers=["GOOG"])["GOOG"]
    snap = build_snapshot("GOOG", bars, bars.index[3])
    assert snap.sma_50 is None and not signal_reading(snap).startswith("trend")
