"""Decision cost on a CPU: the thread wait policy, ``n_threads: auto`` and the rejection
grammar sampler, on the real embedded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trading_agents.agents.schemas import ROLE_SCHEMAS
from trading_agents.config.settings import load_settings
from trading_agents.errors import ConfigError
from utils.llm_integration.grammar import json_schema_grammar
from utils.llm_integration.loaded_model import LocalLLM, load_llama
from utils.llm_integration.spec import LLMSpec, SamplingParams
from utils.llm_integration.threads import THREADS_FILE, cpu_signature

ROOT = Path(__file__).resolve().parents[1]

# Records the environment at the moment llama_cpp is first imported, then loads a model the
# way the desk does (through LocalLLM) and prints what it saw.
PROBE = textwrap.dedent(
    """
    import importlib.abc, json, os, sys
    seen = {}
    class Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "llama_cpp" and "policy" not in seen:
                seen["policy"] = os.environ.get("OMP_WAIT_POLICY")
            return None
    sys.meta_path.insert(0, Watch())
    from pathlib import Path
    from utils.llm_integration.loaded_model import LocalLLM
    from utils.llm_integration.spec import LLMSpec
    llm = LocalLLM(LLMSpec(path=Path(sys.argv[1]), n_threads=1, ram_cache_mb=0))
    llm.complete([{"role": "user", "content": "Say OK."}])
    print(json.dumps(seen))
    """
)


def _probe(embedded_model: Path, **env: str) -> dict[str, str | None]:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(embedded_model)],
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_wait_policy_is_passive_before_llama_cpp_is_first_imported(embedded_model: Path) -> None:
    assert _probe(embedded_model) == {"policy": "PASSIVE"}


def test_a_wait_policy_set_by_the_user_is_kept(embedded_model: Path) -> None:
    assert _probe(embedded_model, OMP_WAIT_POLICY="ACTIVE") == {"policy": "ACTIVE"}


# ----------------------------------------------------------------------------- n_threads


def test_n_threads_defaults_to_auto_and_accepts_a_number_or_null() -> None:
    assert LLMSpec.n_threads == "auto"
    assert load_settings().llm.n_threads == "auto"
    assert load_settings(overrides={"llm.n_threads": 3}).llm.n_threads == 3
    with pytest.raises(ConfigError, match="n_threads"):
        load_settings(overrides={"llm.n_threads": 0})
    with pytest.raises(ConfigError, match="n_threads"):
        load_settings(overrides={"llm.n_threads": "fast"})


def test_auto_threads_are_measured_once_then_read_from_the_cache(
    embedded_model: Path, tmp_path: Path
) -> None:
    spec = LLMSpec(path=embedded_model, n_threads="auto", ram_cache_mb=0)
    first = LocalLLM(spec, hash_cache_dir=tmp_path)
    assert first.threads is None and first.n_threads >= 1
    assert first.threads is not None and first.threads.source == "measured"
    timings = first.threads.timings_s
    assert timings and first.threads.n_threads in timings and first.threads.n_threads_batch in timings
    # each count is the fastest of the candidates for its half of the work
    assert timings[first.threads.n_threads]["decode"] == min(t["decode"] for t in timings.values())
    assert timings[first.threads.n_threads_batch]["prompt"] == min(t["prompt"] for t in timings.values())
    assert first.llama.n_threads == first.n_threads
    assert first.llama.n_threads_batch == first.threads.n_threads_batch
    saved = json.loads((tmp_path / THREADS_FILE).read_text())
    [(key, entry)] = saved.items()
    assert key == f"{first.sha256}|{cpu_signature()}" and entry["n_threads"] == first.n_threads
    assert entry["n_threads_batch"] == first.threads.n_threads_batch
    first.close()

    # a planted choice proves the second load reads the cache instead of measuring again
    saved[key]["n_threads"], saved[key]["n_threads_batch"] = 7, 3
    (tmp_path / THREADS_FILE).write_text(json.dumps(saved))
    second = LocalLLM(spec, hash_cache_dir=tmp_path)
    assert second.n_threads == 7 and second.threads is not None and second.threads.source == "cached"
    assert second.llama.n_threads == 7 and second.llama.n_threads_batch == 3
    assert second.complete(
        [{"role": "user", "content": "Say OK."}], sampling=SamplingParams(max_tokens=4)
    ).text
    second.close()


def test_an_explicit_thread_count_wins_over_the_cache(embedded_model: Path, tmp_path: Path) -> None:
    auto = LocalLLM(LLMSpec(path=embedded_model, ram_cache_mb=0), hash_cache_dir=tmp_path)
    key = f"{auto.sha256}|{cpu_signature()}"
    (tmp_path / THREADS_FILE).write_text(json.dumps({key: {"n_threads": 5, "n_threads_batch": 5}}))
    explicit = LocalLLM(LLMSpec(path=embedded_model, n_threads=1, ram_cache_mb=0), hash_cache_dir=tmp_path)
    assert explicit.n_threads == 1 and explicit.threads is not None and explicit.threads.source == "explicit"
    assert explicit.llama.n_threads == 1 and explicit.llama.n_threads_batch == 1
    assert auto.n_threads == 5
    explicit.close()
    auto.close()


# ----------------------------------------------------------------------------- grammar sampling

PROMPTS = [
    "GOOG closed at 798.2, up 0.4% on the day, RSI 64, above its 20-day average. Your JSON view.",
    "AAPL fell 3% to 141.10 on heavy volume; RSI 28, below the 50-day average. Your JSON view.",
]


def _assert_grammar_valid(schema: type, text: str) -> None:
    """What the grammar guarantees: one JSON object with the schema's required keys and no
    others (values in range is the validator's job: the grammar bounds digits, not magnitudes)."""
    data = json.loads(text)
    js = schema.model_json_schema()
    assert set(js.get("required", [])) <= set(data) <= set(js["properties"])


@pytest.fixture(scope="module")
def fast_and_stock(embedded_model: Path):  # type: ignore[no-untyped-def]
    fast = load_llama(embedded_model, 2048, n_threads=1, seed=42)
    stock = load_llama(embedded_model, 2048, n_threads=1, seed=42)
    stock.grammar_first = True  # llama-cpp-python's own chain: the grammar over every token
    yield fast, stock
    fast.close()
    stock.close()


@pytest.mark.parametrize("role", sorted(ROLE_SCHEMAS))
def test_rejection_sampler_gives_valid_replies_identical_to_grammar_first(fast_and_stock, role: str) -> None:  # type: ignore[no-untyped-def]
    fast, stock = fast_and_stock
    schema = ROLE_SCHEMAS[role]
    grammar = json_schema_grammar(schema.model_json_schema())
    for content in PROMPTS:
        prompt = f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
        texts = []
        for llama in (fast, stock):
            llama.reset()
            out = llama.create_completion(prompt, max_tokens=400, temperature=0.0, grammar=grammar)
            assert out["choices"][0]["finish_reason"] == "stop"
            texts.append(out["choices"][0]["text"])
        _assert_grammar_valid(schema, texts[0])
        assert texts[0] == texts[1]  # greedy: the same reply whichever order grammar and chain run


def test_rejection_sampler_stays_valid_when_sampling_with_temperature(fast_and_stock) -> None:  # type: ignore[no-untyped-def]
    fast, _ = fast_and_stock
    for role, schema in ROLE_SCHEMAS.items():
        grammar = json_schema_grammar(schema.model_json_schema())
        for seed in (1, 2, 3):
            fast.reset()
            out = fast.create_completion(
                f"<|im_start|>user\n{PROMPTS[0]}<|im_end|>\n<|im_start|>assistant\n",
                max_tokens=400,
                temperature=0.9,
                top_k=40,
                seed=seed,
                grammar=grammar,
            )
            assert out["choices"][0]["finish_reason"] == "stop", role
            _assert_grammar_valid(schema, out["choices"][0]["text"])


# ----------------------------------------------------------------------------- degenerate replies


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ({"rationale": "Trend up; RSI 64 is not stretched, MACD above signal."}, []),
        ({"rationale": "Buy 1,000,000 shares at 798.20 (up 0.4%)."}, []),
        ({"rationale": "Up .0.0.0.0.0.0.0.0"}, ["rationale repeats '.0'"]),
        ({"rationale": "aaaaaaaa"}, ["rationale repeats 'a'"]),
        ({"rationale": "buy buy buy now"}, ["rationale repeats the word 'buy'"]),
        ({"key_signals": [], "rationale": "Flat."}, ["empty key_signals"]),
        ({"reasons": ["ok", "limit limit limit"]}, ["reasons repeats the word 'limit'"]),
        ({"side": "none", "quantity": 0}, []),
        (None, []),
    ],
)
def test_degenerate_reply_detector(output: dict | None, expected: list[str]) -> None:
    from trading_agents.agents.replies import degenerate_reasons

    assert degenerate_reasons(output) == expected


def test_the_rationale_grammar_cannot_hold_a_run_longer_than_a_word() -> None:
    from pydantic import ValidationError

    from trading_agents.agents.schemas import AnalystReport

    ok = {"action": "HOLD", "conviction": 0.5, "horizon_days": 5, "key_signals": ["RSI 64"]}
    AnalystReport(**ok, rationale="Trend up, RSI 64 neutral; MACD above signal.")
    for bad in (".0.0.0.0.0.0.0.0.0.0", "0.0.0.0.0.0.0.0.0.0.0.0", "Up " + "x" * 20):
        with pytest.raises(ValidationError):
            AnalystReport(**ok, rationale=bad)
    with pytest.raises(ValidationError):
        AnalystReport(**{**ok, "key_signals": []}, rationale="Flat.")


# ----------------------------------------------------------------------------- what stopped an order

# scripted replies of a desk that wants to buy
ANALYST_BUY = {
    "action": "BUY",
    "conviction": 0.8,
    "horizon_days": 5,
    "key_signals": ["up"],
    "rationale": "Up.",
}
RISK_APPROVE = {"decision": "approve", "max_position_pct": 0.1, "stop_loss_pct": 0.05, "reasons": ["ok"]}


def test_order_text_names_the_rule_that_stopped_a_proposal() -> None:
    from trading_agents.agents.guards import order_text, stopped_by

    def rec(action: str, decision: str, side: str, guards: list[dict], intent: dict | None = None) -> dict:
        return {
            "agents": [
                {"role": "analyst", "output": {"action": action}},
                {"role": "risk", "output": {"decision": decision}},
                {"role": "executor", "output": {"side": side, "quantity": 10}},
            ],
            "guards": guards,
            "intent": intent,
        }

    veto = {"stage": "executor", "kind": "veto", "rule": "side_mismatch", "detail": "..."}
    clip = {"stage": "risk", "kind": "clip", "rule": "max_position_pct", "detail": "..."}
    assert order_text(rec("BUY", "approve", "sell", [clip, veto])) == (
        "none (sell 10 stopped by executor veto: side_mismatch)"
    )
    assert order_text(rec("HOLD", "approve", "buy", [])) == "none (buy 10 stopped by analyst: HOLD)"
    assert order_text(rec("BUY", "reject", "buy", [])) == "none (buy 10 stopped by risk: reject)"
    assert order_text(rec("HOLD", "approve", "none", [])) == "none"  # nothing was proposed
    assert stopped_by(rec("HOLD", "approve", "none", [])) is None
    placed = rec("BUY", "approve", "buy", [], {"side": "buy", "quantity": 4})
    assert order_text(placed) == "buy 4"
    assert order_text(placed, ["veto:max_daily_loss"]) == "buy 4 (veto:max_daily_loss)"
    assert stopped_by(placed) is None
    stale = ["clip:max_position_pct", "veto:max_data_age_days"]  # the risk engine refused the intent
    assert stopped_by(placed, stale) == "risk engine veto: max_data_age_days"
    assert stopped_by(placed, ["veto:max_gross_exposure_pct"]) == "risk engine veto: max_gross_exposure_pct"


def test_the_ledger_shows_what_stopped_the_executors_order(
    capsys: pytest.CaptureFixture[str], isolated_state: Path
) -> None:
    import pandas as pd

    from tests.scripted_client import ScriptedClient
    from trading_agents.agents.clients import DeskModels
    from trading_agents.agents.desk_strategy import AgentStrategy
    from trading_agents.cli.app import main
    from trading_agents.journal import Ledger, default_ledger_path
    from trading_agents.market import load_bars
    from trading_agents.model_files.registry import resolve_llm_pair
    from trading_agents.session import run_session

    settings = load_settings()
    primary, _, notes = resolve_llm_pair(settings)
    analyst, risk = ANALYST_BUY, RISK_APPROVE
    order = {"side": "sell", "quantity": 10, "order_type": "market", "time_in_force": "day"}
    clients = {
        role: ScriptedClient([json.dumps(reply)])
        for role, reply in (("analyst", analyst), ("risk", risk), ("executor", order))
    }
    strategy = AgentStrategy(DeskModels(primary, None, notes, clients), settings, stream=False)
    bars = load_bars(tickers=["GOOG"])
    with Ledger.open(default_ledger_path(settings.paths.home)) as ledger:
        run_session(
            settings,
            bars,
            pd.Timestamp("2013-02-27"),
            pd.Timestamp("2013-02-27"),
            journal=ledger,
            strategy=strategy,
        )
    strategy.close()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["ledger"])
    out = capsys.readouterr().out
    assert exc.value.code in (0, None)
    assert "side_mismatch" in out and "stopped by" in out
    assert "analyst: BUY" in out  # the verdict, though the analyst's reply starts with its signals

    with pytest.raises(SystemExit) as exc:
        main(["ledger", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert exc.value.code in (0, None)
    [decision] = doc["run"]["decisions"]
    assert decision["stopped_by"] == {"GOOG": "executor veto: side_mismatch"}


def test_a_decision_after_a_failed_one_runs_every_agent_again() -> None:
    """A model failure inside the flow used to leave the graph's state behind, so every later
    decision stopped after the analyst."""
    import asyncio

    from tests.scripted_client import ScriptedClient
    from trading_agents.agents.team import TradingTeam

    class FailsFirst(ScriptedClient):
        async def create(self, messages, **kwargs):  # type: ignore[no-untyped-def,override]
            if self.calls == 0:
                self.calls += 1
                raise RuntimeError("llama.cpp went away")
            return await super().create(messages, **kwargs)

    analyst, risk = ANALYST_BUY, RISK_APPROVE
    order = {"side": "buy", "quantity": 3, "order_type": "market", "time_in_force": "day"}
    team = TradingTeam(
        {
            "analyst": ScriptedClient([json.dumps(analyst)]),
            "risk": ScriptedClient([json.dumps(risk)]),
            "executor": FailsFirst([json.dumps(order)]),
        },
        stream=False,
    )
    loop = asyncio.new_event_loop()
    try:
        first = loop.run_until_complete(team.decide("TASK one"))
        second = loop.run_until_complete(team.decide("TASK two"))
        loop.run_until_complete(team.close())
    finally:
        loop.close()
    assert first.error is not None and first.executor is None
    assert second.error is None and [s.role for s in second.steps] == ["analyst", "risk", "executor"]
    assert second.executor is not None and second.executor.quantity == 3


def test_bench_contention_runs_sessions_side_by_side(tmp_path: Path) -> None:
    """``bench contention``'s building block: sessions started together, each timing its own
    decisions, with the wait policy the LLM layer set and the same greedy decisions."""
    from trading_agents.bench.contention import run_concurrent

    results = run_concurrent(2, 1, tmp_path, "1")
    assert len(results) == 2
    assert all(r["decisions"] == 1 and r["wall_s"] > 0 and r["threads"] == 1 for r in results)
    assert all(r["omp_wait_policy"] == "PASSIVE" and r["set_before_llama_cpp"] for r in results)
    assert results[0]["actions"] == results[1]["actions"]
