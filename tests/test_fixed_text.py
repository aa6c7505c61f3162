"""Structured replies decoded in pieces: the schema's fixed text evaluated in batches, only the
values sampled. The plan is checked as pure logic; the decoding on the real embedded model
(and on a tiny Mixtral-architecture GGUF with a SentencePiece vocabulary) through the desk's
own prompts."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from tests.clocks import TickClock, model_clock
from tests.test_decision_layout import _messages, _task
from trading_agents.agents.schemas import ROLE_SCHEMAS, OrderProposal
from trading_agents.agents.team import ROLES
from utils.llm_integration.errors import DeadlineExceededError, GenerationCancelledError, OutputTruncatedError
from utils.llm_integration.fixed_text import ends_by_itself, forced_prefix, reply_plan, value_complete
from utils.llm_integration.loaded_model import Completion, LocalLLM
from utils.llm_integration.spec import LLMSpec, SamplingParams

WHOLE = SamplingParams(fixed_text=False)


def test_a_desk_reply_is_planned_as_keys_and_forced_starts_around_sampled_values() -> None:
    plan = reply_plan(ROLE_SCHEMAS["analyst"].model_json_schema())
    assert plan is not None
    assert [s.fixed for s in plan.slots] == [
        '{"key_signals":["',
        ',"rationale":"',
        ',"action":"',
        ',"conviction":',
        ',"horizon_days":',
    ]
    # a number can go on (0.6 or 0.65): its slot samples the character after it too
    assert [s.after for s in plan.slots] == ["", "", "", ",", "}"]
    executor = reply_plan(OrderProposal.model_json_schema())
    assert executor is not None
    assert [(s.name, s.optional) for s in executor.slots][-1] == ("limit_price", True)
    risk = reply_plan(ROLE_SCHEMAS["risk"].model_json_schema())
    assert risk is not None and risk.slots[2].fixed == ',"stop_loss_pct":0.'  # every stop is 0.x


def test_only_flat_objects_are_planned() -> None:
    class TwoOptional(BaseModel):
        a: int
        b: int | None = None
        c: int | None = None

    class Nested(BaseModel):
        inner: TwoOptional

    assert reply_plan(TwoOptional.model_json_schema()) is None
    assert reply_plan(Nested.model_json_schema()) is None
    assert reply_plan({"type": "object"}) is None  # json mode: any object


@pytest.mark.parametrize(
    ("node", "prefix", "ends"),
    [
        ({"type": "string"}, '"', True),
        ({"enum": ["BUY", "SELL"]}, '"', True),
        ({"enum": [1, 2, 10]}, "", False),  # 1 may go on as 10
        ({"enum": [0.25, 0.5]}, "0.", True),
        ({"type": "array", "items": {"type": "string"}, "minItems": 1}, '["', True),
        ({"type": "array", "items": {"type": "string"}}, "[", True),
        ({"anyOf": [{"type": "string"}, {"type": "null"}]}, "", True),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, "", False),
        ({"type": "number"}, "", False),
    ],
)
def test_forced_starts_and_values_that_end_by_themselves(node: dict, prefix: str, ends: bool) -> None:
    assert forced_prefix(node) == prefix
    assert ends_by_itself(node) is ends


def test_a_value_is_complete_once_it_parses() -> None:
    assert value_complete('"trend up"', "") and not value_complete('"trend up', "")
    assert value_complete('["a","b"]', "") and not value_complete('["a",', "")
    assert value_complete("0.65,", ",") and not value_complete("0.6", ",")
    assert value_complete("12}", ",}") and not value_complete("1", ",}")


@pytest.fixture(scope="module")
def llm(embedded_model: Path) -> LocalLLM:
    model = LocalLLM(LLMSpec(path=embedded_model, n_threads=1, ram_cache_mb=0))
    yield model
    model.close()


def _desk(llm: LocalLLM, task: str, sampling: SamplingParams | None = None) -> list[Completion]:
    earlier: dict[str, str] = {}
    out = []
    for role in ROLES:
        streamed: list[str] = []
        done = llm.complete(
            _messages(role, task, earlier),
            schema=ROLE_SCHEMAS[role],
            sampling=sampling,
            on_text=streamed.append,
        )
        assert done.parsed is not None
        assert "".join(streamed) == done.text  # the fixed text is streamed too
        earlier[role] = done.text
        out.append(done)
    return out


def test_desk_replies_sample_fewer_tokens_and_stay_valid(llm: LocalLLM, embedded_model: Path) -> None:
    task = _task()
    planned = _desk(llm, task)
    for role, done in zip(ROLES, planned, strict=True):
        if role != "executor":  # (its quantity is a digit string in the grammar)
            assert done.text == done.parsed.model_dump_json()  # type: ignore[union-attr]
        assert done.metrics.fixed_tokens >= 8
    # the same calls on a fresh model: the same replies (greedy, and the same batches evaluated)
    fresh = LocalLLM(LLMSpec(path=embedded_model, n_threads=1, ram_cache_mb=0))
    try:
        assert [d.text for d in _desk(fresh, task)] == [d.text for d in planned]
    finally:
        fresh.close()
    whole = _desk(llm, task, WHOLE)
    sampled = sum(d.metrics.completion_tokens - d.metrics.fixed_tokens for d in planned)
    assert all(d.metrics.fixed_tokens == 0 for d in whole)
    assert sampled < 0.75 * sum(d.metrics.completion_tokens for d in whole)


def test_the_next_prompt_reuses_a_planned_reply_from_the_kv_cache(llm: LocalLLM) -> None:
    task = _task(-3)
    analyst = llm.complete(_messages("analyst", task, {}), schema=ROLE_SCHEMAS["analyst"])
    risk = llm.complete(_messages("risk", task, {"analyst": analyst.text}), schema=ROLE_SCHEMAS["risk"])
    a = analyst.metrics
    # all of the analyst's prompt and reply but its last sampled token came from the cache
    assert risk.metrics.cached_prompt_tokens >= a.prompt_tokens + a.completion_tokens - 1
    assert risk.metrics.prompt_tokens - risk.metrics.cached_prompt_tokens < 40


def test_truncation_deadline_and_cancellation_hold_in_pieces(llm: LocalLLM) -> None:
    msgs = _messages("analyst", _task(), {})
    schema = ROLE_SCHEMAS["analyst"]
    with pytest.raises(OutputTruncatedError):
        llm.complete(msgs, schema=schema, sampling=SamplingParams(max_tokens=4))
    # the model's clock runs 10 s ahead per read: 100 s away is passed after about ten tokens
    with model_clock(llm, TickClock(10.0)), pytest.raises(DeadlineExceededError, match="after"):
        llm.complete(msgs, schema=schema, deadline=time.monotonic() + 100.0)
    cancel = threading.Event()
    pieces: list[str] = []

    def on_text(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 4:
            cancel.set()

    with pytest.raises(GenerationCancelledError):
        llm.complete(msgs, schema=schema, on_text=on_text, cancel=cancel)
    assert len(pieces) < 8
    assert llm.complete(msgs, schema=schema).parsed is not None  # the model is fine afterwards


def test_a_reply_that_would_overflow_the_context_is_truncated_not_a_crash(embedded_model: Path) -> None:
    small = LocalLLM(LLMSpec(path=embedded_model, n_ctx=256, n_threads=1, ram_cache_mb=0))
    try:
        words = 10
        while small.count_tokens([{"role": "user", "content": "tick " * words}]) < 256 - 12:
            words += 4
        msgs = [{"role": "user", "content": "tick " * words}]
        with pytest.raises(OutputTruncatedError):  # the keys alone outgrow the 12 tokens left
            small.complete(msgs, schema=ROLE_SCHEMAS["analyst"])
        ok = small.complete([{"role": "user", "content": "Order?"}], schema=OrderProposal)
        assert ok.parsed is not None  # the model is fine afterwards
    finally:
        small.close()


def test_an_optional_property_is_chosen_by_the_model(llm: LocalLLM) -> None:
    class Order(BaseModel):
        side: Literal["buy", "sell"]
        note: str | None = Field(default=None, max_length=20)

    for ask in ('Reply {"side":"buy","note":"first"}', 'Reply {"side":"sell"}'):
        out = llm.complete(
            [{"role": "user", "content": ask}], schema=Order, sampling=SamplingParams(max_tokens=40)
        )
        assert isinstance(out.parsed, Order) and out.metrics.fixed_tokens > 0


def test_a_sentencepiece_vocabulary_gets_no_stray_spaces(tmp_path: Path) -> None:
    """SentencePiece (Mixtral's tokenizer) puts a space before a text tokenized on its own."""
    from tests.gguf_factory import make_tiny_mixtral

    path = make_tiny_mixtral(tmp_path / "tiny-mixtral.Q4_K_M.gguf")
    model = LocalLLM(LLMSpec(path=path, n_ctx=512, chat_format="mistral-instruct-system"))
    llama = model.llama
    assert b"".join(llama.piece(t) for t in llama.tokenize(b'"', add_bos=False)) == b' "'
    tokens = llama.fragment_tokens(',"quantity":"')
    assert tokens is not None and b"".join(llama.piece(t) for t in tokens) == b',"quantity":"'
    assert model.plan(OrderProposal.model_json_schema()) is not None
    out = model.complete([{"role": "user", "content": "Order?"}], schema=OrderProposal)
    assert isinstance(out.parsed, OrderProposal) and out.metrics.fixed_tokens > 0
    assert " " not in out.text  # no value of this schema holds a space
    model.close()


def test_llm_fixed_text_false_in_the_settings_samples_every_reply_token(tmp_path: Path) -> None:
    """The config key reaches the AutoGen client the desk builds. How a reply is decoded is not
    what is asked: the replay key is the same either way (one key rule for every path, so a
    reply cached through a server that decodes whole replies replays in-process)."""
    import asyncio

    from autogen_core.models import UserMessage

    from trading_agents.agents.clients import local_client_config
    from trading_agents.config.settings import load_settings
    from trading_agents.model_files.registry import resolve_llm_pair
    from utils.llm_integration.components import load_llm_config

    ask = [UserMessage(content='Reply {"side":"buy"}', source="user")]
    seen = {}
    for fixed in (True, False):
        settings = load_settings(
            overrides={"llm.fixed_text": fixed, "llm.n_threads": 1, "paths.home": str(tmp_path)}
        )
        primary, _, _ = resolve_llm_pair(settings)
        client = load_llm_config(local_client_config(primary, settings))
        asyncio.run(client.create(ask, json_output=OrderProposal))
        key = client.replay_key(ask, json_output=OrderProposal, extra_create_args={})
        seen[fixed] = (client.last_metrics.fixed_tokens, key)
    assert seen[True][0] > 0 and seen[False][0] == 0
    assert "fixed_text" not in seen[True][1]["sampling"] and seen[True][1] == seen[False][1]
