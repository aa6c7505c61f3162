"""The local llama.cpp backend on the real embedded SmolLM2 model."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from autogen_core.models import SystemMessage, UserMessage
from pydantic import BaseModel, Field

from tests.clocks import TickClock, model_clock
from trading_agents.agents.schemas import AnalystReport, OrderProposal
from utils.llm_integration.autogen_client import LocalLlamaChatCompletionClient
from utils.llm_integration.chat_formats import format_mistral_instruct, merge_turns
from utils.llm_integration.errors import (
    DeadlineExceededError,
    GenerationCancelledError,
    LLMError,
    ModelLoadError,
    OutputTruncatedError,
)
from utils.llm_integration.grammar import grammar_schema
from utils.llm_integration.loaded_model import STDIO_LOCK, CallMetrics, LocalLLM, get_local_llm
from utils.llm_integration.response_cache import ResponseCacheClient
from utils.llm_integration.spec import LLMSpec, SamplingParams

SYSTEM = "You are a careful equity analyst. Always answer with JSON only."
MESSAGES = [
    {"role": "system", "content": SYSTEM},
    {
        "role": "user",
        "content": "GOOG closed at 300.5, above its 20-day average of 290. RSI is 62. Give your view.",
    },
]


@pytest.fixture(scope="module")
def llm(embedded_model: Path) -> LocalLLM:
    return get_local_llm(LLMSpec(path=embedded_model, name="smollm2", n_ctx=2048, n_threads=2))


# ----------------------------------------------------------------------------- pure formatting


def test_mistral_format_keeps_the_system_message_and_merges_turns() -> None:
    prompt = format_mistral_instruct(
        [
            {"role": "system", "content": "RULES"},
            {"role": "user", "content": "task"},
            {"role": "user", "content": "instructions"},
            {"role": "assistant", "content": "{}"},
            {"role": "user", "content": "again"},
        ]
    )
    assert prompt == "[INST] RULES\n\ntask\n\ninstructions [/INST] {}</s>[INST] again [/INST]"


def test_llama_cpp_mistral_instruct_format_drops_system_messages() -> None:
    """Why our own handler exists: the stock format loses the desk rules."""
    from llama_cpp.llama_chat_format import format_mistral_instruct as stock

    stock_prompt = stock(
        messages=[{"role": "system", "content": "RULES"}, {"role": "user", "content": "hi"}]
    ).prompt
    assert "RULES" not in stock_prompt
    assert "RULES" in format_mistral_instruct(
        [{"role": "system", "content": "RULES"}, {"role": "user", "content": "hi"}]
    )


def test_merge_turns_starts_with_user_and_alternates() -> None:
    turns = merge_turns([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert [t["role"] for t in turns] == ["user", "assistant"]
    assert turns[1]["content"] == "a\n\nb"


def test_grammar_schema_bounds_numbers_by_construction() -> None:
    schema = grammar_schema(AnalystReport.model_json_schema())
    props = schema["properties"]
    assert props["conviction"]["enum"][0] == 0.0 and props["conviction"]["enum"][-1] == 1.0
    assert props["horizon_days"]["enum"] == list(range(1, 21))
    qty = grammar_schema(OrderProposal.model_json_schema())["properties"]["quantity"]
    assert qty == {"type": "string", "pattern": "^([0-9]{1,7}|10000000)$"}  # no 8-digit number over the bound


# ----------------------------------------------------------------------------- real llama.cpp


def test_structured_output_is_valid_and_metrics_are_reported(llm: LocalLLM) -> None:
    out = llm.complete(MESSAGES, schema=AnalystReport, sampling=SamplingParams(max_tokens=400))
    assert isinstance(out.parsed, AnalystReport)
    assert AnalystReport.model_validate_json(out.text) == out.parsed
    m = out.metrics
    assert m.model == "smollm2" and len(m.model_sha256) == 64
    assert m.prompt_tokens == llm.count_tokens(MESSAGES)
    assert m.completion_tokens > 5 and m.latency_s > 0 and m.ttft_s <= m.latency_s
    assert m.gen_tokens_per_s > 0 and m.grammar is True and m.finish_reason == "stop"


def test_shared_prefix_is_served_from_the_kv_cache(llm: LocalLLM) -> None:
    first = [
        {"role": "system", "content": SYSTEM + " " + "Rule. " * 150},
        {"role": "user", "content": "Day 1: up 2%."},
    ]
    second = [first[0], {"role": "user", "content": "Day 2: down 3%, volume heavy."}]
    llm.complete(first, sampling=SamplingParams(max_tokens=4))
    llm.complete(
        [{"role": "user", "content": "unrelated prompt in between"}], sampling=SamplingParams(max_tokens=4)
    )
    out = llm.complete(second, sampling=SamplingParams(max_tokens=4))
    # the system block (~300 tokens) comes back from the RAM state cache, not re-evaluated
    assert out.metrics.cached_prompt_tokens >= 250
    assert out.metrics.cached_prompt_tokens < out.metrics.prompt_tokens


def test_truncated_structured_output_is_an_error_not_a_default(llm: LocalLLM) -> None:
    with pytest.raises(OutputTruncatedError, match="max_tokens=6"):
        llm.complete(MESSAGES, schema=AnalystReport, sampling=SamplingParams(max_tokens=6))


@pytest.mark.parametrize("fixed_text", [True, False])
def test_out_of_range_values_are_rejected_by_validation(llm: LocalLLM, fixed_text: bool) -> None:
    from utils.llm_integration.errors import InvalidOutputError

    class Strict(BaseModel):
        value: int = Field(ge=990_000, le=999_999)  # too wide to enumerate: the grammar only says digits

    class Loose(BaseModel):
        value: int

    msgs = [{"role": "user", "content": 'Reply {"value": 7}'}]
    sampling = SamplingParams(max_tokens=30, fixed_text=fixed_text)
    with pytest.raises(InvalidOutputError, match="Strict validation"):
        llm.complete(msgs, schema=Strict, sampling=sampling)
    assert llm.complete(msgs, schema=Loose, sampling=sampling).parsed is not None


def test_deadline_and_cancellation_stop_generation(llm: LocalLLM) -> None:
    long = [{"role": "user", "content": "Write a long story about markets."}]
    # the model's clock runs 10 s ahead per read: 100 s away is passed after about ten tokens
    with model_clock(llm, TickClock(10.0)), pytest.raises(DeadlineExceededError, match="after"):
        llm.complete(long, sampling=SamplingParams(max_tokens=500), deadline=time.monotonic() + 100.0)
    cancel = threading.Event()
    seen: list[str] = []

    def on_text(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 3:
            cancel.set()

    with pytest.raises(GenerationCancelledError):
        llm.complete(long, sampling=SamplingParams(max_tokens=500), on_text=on_text, cancel=cancel)
    assert 3 <= len(seen) < 10


def test_response_cache_replays_identically_without_generating(llm: LocalLLM, tmp_path: Path) -> None:
    local = LocalLlamaChatCompletionClient(model_path=str(llm.spec.path), model_name="smollm2", n_threads=2)
    assert local.llm is llm  # the same loaded model as the fixture's
    client = ResponseCacheClient(local, tmp_path / "cache.sqlite")
    ask = [SystemMessage(content=SYSTEM), UserMessage(content=MESSAGES[1]["content"], source="user")]

    def call(**extra: object) -> tuple[str, AnalystReport, CallMetrics]:
        result = asyncio.run(client.create(ask, json_output=AnalystReport, extra_create_args=extra))
        assert isinstance(result.content, str) and client.last_metrics is not None
        return result.content, AnalystReport.model_validate_json(result.content), client.last_metrics

    first_text, first_parsed, first_metrics = call()
    first_prompt = client.last_prompt
    calls = llm.calls
    text, parsed, metrics = call()
    assert text == first_text and parsed == first_parsed
    assert metrics.from_response_cache and not first_metrics.from_response_cache
    assert llm.calls == calls  # no generation happened
    assert client.last_prompt == first_prompt and metrics.prompt_tokens == first_metrics.prompt_tokens
    _, _, other = call(seed=7)
    assert not other.from_response_cache  # sampling params are part of the key
    asyncio.run(client.close())


def test_missing_and_bad_model_files_fail_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        _ = LocalLLM(LLMSpec(path=tmp_path / "nope.gguf")).llama
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        _ = LocalLLM(LLMSpec(path=empty)).llama
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 100)
    with pytest.raises(ModelLoadError, match="could not load"):
        _ = LocalLLM(LLMSpec(path=junk)).llama


def test_concurrent_callers_are_serialised(llm: LocalLLM) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            msgs = [{"role": "user", "content": f"Say the number {i}."}]
            results.append(llm.complete(msgs, sampling=SamplingParams(max_tokens=8)).text)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    assert llm.in_flight == 0 and llm.waiting == 0


def test_every_desk_schema_compiles_to_a_grammar_that_decodes(llm: LocalLLM) -> None:
    """A grammar llama.cpp cannot parse crashes the process at sampling time: catch it here."""
    from trading_agents.agents.schemas import ROLE_SCHEMAS

    for schema in ROLE_SCHEMAS.values():
        out = llm.complete(MESSAGES, schema=schema, sampling=SamplingParams(max_tokens=400))
        assert isinstance(out.parsed, schema)


def test_a_grammar_llama_cpp_rejects_is_an_error_not_a_crash(llm: LocalLLM) -> None:
    bad = {"title": "Bad", "type": "object", "properties": {"x": {"type": "string", "pattern": "^a\\.b$"}}}
    with pytest.raises(LLMError, match="rejected the grammar"):
        llm.grammar(bad)


def test_mixtral_shaped_model_runs_with_the_system_folding_format(tmp_path: Path) -> None:
    """The Mixtral code path end to end on a tiny Mixtral-architecture Q4_K_M GGUF (random weights)."""
    from tests.gguf_factory import make_tiny_mixtral

    path = make_tiny_mixtral(tmp_path / "tiny-mixtral.Q4_K_M.gguf")
    llm = LocalLLM(LLMSpec(path=path, name="tiny-mixtral", n_ctx=512, chat_format="mistral-instruct-system"))
    prompt, stops = llm.render(MESSAGES)
    assert prompt.startswith(f"[INST] {SYSTEM}\n\nGOOG closed") and prompt.endswith("[/INST]")
    assert "</s>" in stops
    assert llm.tokenize(prompt)[0] == llm.llama.token_bos()  # BOS from the tokenizer, not the text
    out = llm.complete(MESSAGES, schema=OrderProposal, sampling=SamplingParams(max_tokens=300))
    assert isinstance(out.parsed, OrderProposal)  # gibberish weights, but the grammar holds
    assert out.metrics.prompt_tokens == len(llm.tokenize(prompt))
    llm.close()


def test_json_strings_cannot_hold_raw_control_characters(llm: LocalLLM) -> None:
    """Strict JSON parsers (AutoGen's structured output among them) reject raw newlines in strings."""
    from pydantic import BaseModel, Field

    class Report(BaseModel):  # free text: the desk's own strings follow word patterns
        rationale: str = Field(max_length=300)

    grammar = llm.grammar(Report.model_json_schema())
    assert '[^"\\\\\\x7F\\x00-\\x1F]' in grammar._grammar
    msgs = [{"role": "user", "content": "Write a rationale with several lines and tabs, as JSON."}]
    out = llm.complete(msgs, schema=Report, sampling=SamplingParams(max_tokens=400))
    Report.model_validate_json(out.text)  # strict parsing, as AssistantAgent does


def test_grammar_check_waits_while_a_model_load_silences_output(llm: LocalLLM) -> None:
    """llama-cpp-python silences a load by swapping sys.stdout and fds 1-2; a grammar check that
    swapped them too, in another thread, at the same time, would leave the CLI silent for good."""
    import sys
    import threading

    schema = {"title": "Probe", "type": "object", "properties": {"n": {"type": "integer"}}}
    stdout = sys.stdout
    done = threading.Event()
    assert llm.llama is not None  # loaded first: only the grammar check is left to wait
    with STDIO_LOCK:  # as load_llama holds it
        worker = threading.Thread(target=lambda: (llm.grammar(schema), done.set()))
        worker.start()
        assert not done.wait(0.5), "the grammar check ran while a load held the output"
        assert sys.stdout is stdout
    worker.join(30)
    assert done.is_set() and sys.stdout is stdout


def test_a_call_whose_deadline_passes_in_the_queue_does_not_start(llm: LocalLLM) -> None:
    """A caller that waited past its deadline for the model is told so at once: generating
    then would only delay the fallback that must answer instead."""
    import threading

    calls = llm.calls
    errors: list[BaseException] = []

    def late() -> None:
        try:
            llm.complete(MESSAGES, sampling=SamplingParams(max_tokens=8), deadline=time.monotonic() + 100.0)
        except BaseException as exc:
            errors.append(exc)

    # another call holds the model; the waiting caller's clock passes its deadline after a few reads
    with model_clock(llm, TickClock(30.0)), llm._slot():
        worker = threading.Thread(target=late)
        worker.start()
        worker.join(600)  # it leaves the queue at its deadline, while the model is still held
        assert not worker.is_alive() and llm.waiting == 0
    assert len(errors) == 1 and isinstance(errors[0], DeadlineExceededError)
    assert "waiting for the model" in str(errors[0])
    assert llm.calls == calls  # nothing was generated


def test_queued_calls_are_served_in_arrival_order_and_a_cancelled_one_leaves(llm: LocalLLM) -> None:
    """The model's queue is first come, first served; a caller cancelled while it waits
    leaves the queue at once instead of taking its turn."""
    import threading

    from utils.llm_integration.errors import GenerationCancelledError

    order: list[int] = []
    errors: list[BaseException] = []
    cancel = threading.Event()

    def call(i: int, event: threading.Event | None = None) -> None:
        try:
            llm.complete(MESSAGES, sampling=SamplingParams(max_tokens=2), cancel=event)
            order.append(i)
        except BaseException as exc:
            errors.append(exc)

    workers = []
    with llm._slot():  # the model is busy while the queue forms
        for i in range(4):
            workers.append(threading.Thread(target=call, args=(i, cancel if i == 1 else None)))
            workers[-1].start()
            while llm.waiting < i + 1:  # each joins the queue before the next arrives
                time.sleep(0.01)
        cancel.set()
        workers[1].join(30)
        assert not workers[1].is_alive() and llm.waiting == 3
    for w in workers:
        w.join(60)
    assert order == [0, 2, 3]
    assert len(errors) == 1 and isinstance(errors[0], GenerationCancelledError)
