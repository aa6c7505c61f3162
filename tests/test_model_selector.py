"""The model selector on two real GGUF models: the embedded SmolLM2 (primary) and a generated
tiny llama (fallback). Assertions are on routes, reasons and counts, never on wall times."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import pytest
import typer
import yaml
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import StructuredMessage
from autogen_core.models import ChatCompletionClient, UserMessage
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from tests.clocks import ManualClock, TickClock, model_clock, never_late
from trading_agents.agents.schemas import AnalystReport
from trading_agents.agents.selector_status import selector_status
from trading_agents.config.settings import load_settings, project_root
from utils.llm_integration.autogen_client import AutoGenLLMConfig
from utils.llm_integration.components import load_llm_config
from utils.llm_integration.errors import (
    ContextOverflowError,
    LLMError,
    ModelLoadError,
    ProviderNotAllowedError,
)
from utils.llm_integration.model_selector import (
    REASONS,
    LoadProbe,
    MachineLoad,
    ModelSelectorClient,
    SelectorConfig,
    kv_bytes_per_token,
)


class Decision(BaseModel):
    action: Literal["BUY", "SELL", "HOLD"]
    conviction: float = Field(ge=0.0, le=1.0)


class Trend(BaseModel):
    """A long reply (about 500 tokens) with no free text: a one-thread SmolLM2 takes many seconds."""

    days: list[Literal["up", "down", "flat"]] = Field(min_length=100, max_length=100)


class Month(BaseModel):
    """About 100 tokens with no free text: seconds on the primary, milliseconds on the tiny fallback."""

    days: list[Literal["up", "down", "flat"]] = Field(min_length=20, max_length=20)


QUIET = {"max_load_per_core": 1000.0, "min_available_mb": 0}  # no pressure from the shared machine
ASK = [UserMessage(content="GOOG rose 2% on volume; RSI 61. Buy, sell or hold?", source="desk")]


pytestmark = pytest.mark.usefixtures("fresh_selector_state")


def primary_cfg(path: Path, **options: Any) -> dict[str, Any]:
    options = {"model_name": "smol-primary", "n_ctx": 1024, "n_threads": 1, "max_tokens": 64, **options}
    return AutoGenLLMConfig.local(path, **options)


def fallback_cfg(path: Path, **options: Any) -> dict[str, Any]:
    options = {"model_name": "tiny-fallback", "n_ctx": 4096, "n_threads": 1, "max_tokens": 1500, **options}
    return AutoGenLLMConfig.local(path, **options)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class ScriptedProbe(LoadProbe):
    """Replays load readings (per core) in order; memory is plentiful."""

    def __init__(self, loads: list[float]) -> None:
        super().__init__()
        self.loads = list(loads)

    def sample(self) -> MachineLoad:
        load = self.loads.pop(0) if len(self.loads) > 1 else self.loads[0]
        return MachineLoad(cores=2, load_per_core_1m=load, load_per_core_now=load, available_mb=8000.0)


# ----------------------------------------------------------------------------- declarative config


def test_component_round_trip_nested_configs_and_model_info(embedded_model: Path, tiny_llama: Path) -> None:
    cfg = SelectorConfig(
        primary=primary_cfg(embedded_model), fallback=fallback_cfg(tiny_llama), role="risk", **QUIET
    )
    client = load_llm_config(ModelSelectorClient(cfg).dump_component().model_dump())
    assert isinstance(client, ModelSelectorClient)
    assert client.config == cfg
    again = ChatCompletionClient.load_component(client.dump_component())
    assert isinstance(again, ModelSelectorClient) and again.config.role == "risk"
    assert again.primary.spec.path == embedded_model.resolve() and again.fallback is not None
    info = client.model_info
    assert info["function_calling"] is False and info["vision"] is False
    assert info["json_output"] is True and info["structured_output"] is True
    with pytest.raises(ValueError, match="extra"):
        SelectorConfig(primary=primary_cfg(embedded_model), max_queue_len=3)  # type: ignore[call-arg]


def test_nested_providers_are_checked_and_a_missing_fallback_fails_clearly(
    embedded_model: Path, tmp_path: Path
) -> None:
    evil = {"provider": "os.system", "config": {}}
    with pytest.raises(ProviderNotAllowedError):
        load_llm_config(
            {
                "provider": "utils.llm_integration.model_selector.ModelSelectorClient",
                "config": {"primary": primary_cfg(embedded_model), "fallback": evil},
            }
        )
    with pytest.raises(LLMError, match=r"fallback model file .*missing\.gguf does not exist"):
        ModelSelectorClient(
            primary=primary_cfg(embedded_model), fallback=fallback_cfg(tmp_path / "missing.gguf")
        )
    # The shipped example names Mixtral and TinyLlama, which are not downloaded here.
    example = project_root() / "configs" / "autogen" / "selector.yaml"
    data = yaml.safe_load(example.read_text())
    assert data["config"]["primary"]["config"]["model_name"] == "mixtral-8x7b-instruct"
    with pytest.raises(LLMError, match=r"fallback model file .*tinyllama.* does not exist"):
        load_llm_config(example)


def test_kv_bytes_per_token_is_read_from_the_gguf_header(embedded_model: Path, tiny_llama: Path) -> None:
    assert kv_bytes_per_token(embedded_model) == 30 * 3 * 64 * 2 * 2  # as in configs/models.yaml
    assert kv_bytes_per_token(tiny_llama) == 2 * 4 * 64 * 2 * 2
    assert kv_bytes_per_token(tiny_llama.with_name("nope.gguf")) is None


# ----------------------------------------------------------------------------- failures and cooldown


def test_corrupt_primary_errors_then_cooldown_then_returns_after_cooldown(
    embedded_model: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "primary.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(4096))
    cfg = SelectorConfig(
        primary=primary_cfg(broken),
        fallback=fallback_cfg(tiny_llama),
        failure_threshold=2,
        cooldown_s=60.0,
        **QUIET,
    )
    clock = ManualClock()  # the bench runs on the test's time, not on how long the calls take
    client = ModelSelectorClient(cfg, clock=clock)
    reasons = []
    for _ in range(3):
        result = run(client.create(ASK, json_output=Decision))
        Decision.model_validate_json(result.content)  # the fallback answered, validly
        assert client.last_route is not None and client.last_route.model == "tiny-fallback"
        reasons.append(client.last_route.reason)
    assert reasons == ["error", "error", "cooldown"]
    assert "ModelLoadError" in client.health.last_error
    # Repair the primary in place; once the cooldown has run out it serves again.
    link = tmp_path / "link.gguf"
    link.symlink_to(embedded_model)
    os.replace(link, broken)
    assert client.health.benched_for(clock()) == 60.0
    clock.now += 59.0
    run(client.create(ASK, json_output=Decision))
    assert client.last_route is not None and client.last_route.reason == "cooldown"  # 1 s still to go
    clock.now += 1.0
    run(client.create(ASK, json_output=Decision))
    assert client.last_route is not None and client.last_route.reason == "primary"
    assert client.last_route.model == "smol-primary"
    assert client.health.failures == 0
    counts = client.route_counts()
    assert counts == {**dict.fromkeys(REASONS, 0), "error": 2, "cooldown": 2, "primary": 1}


def test_missing_primary_through_a_desk_agent_gives_structured_output_from_the_fallback(
    tiny_llama: Path, tmp_path: Path
) -> None:
    client = ModelSelectorClient(
        primary=primary_cfg(tmp_path / "not-downloaded.gguf"),
        fallback=fallback_cfg(tiny_llama),
        role="analyst",
        **QUIET,
    )
    agent = AssistantAgent(
        "analyst",
        model_client=client,
        system_message="You are an equity analyst. Reply with JSON only.",
        output_content_type=Decision,
        model_client_stream=True,
    )
    result = run(agent.run(task="GOOG closed at 300, above its 20-day average. Your view?"))
    final = result.messages[-1]
    assert isinstance(final, StructuredMessage) and isinstance(final.content, Decision)
    assert client.last_route is not None and client.last_route.reason == "error"
    assert "does not exist" in client.last_route.detail
    assert client.last_metrics is not None and client.last_metrics.model == "tiny-fallback"


def test_role_that_may_not_fall_back_fails_closed(tiny_llama: Path, tmp_path: Path) -> None:
    client = ModelSelectorClient(
        primary=primary_cfg(tmp_path / "absent.gguf"),
        fallback=fallback_cfg(tiny_llama),
        may_fall_back=False,
        **QUIET,
    )
    with pytest.raises(ModelLoadError, match="does not exist"):
        run(client.create(ASK, json_output=Decision))
    assert client.last_route is not None and client.last_route.model == "smol-primary"
    assert client.last_metrics is None and client.route_counts()["primary"] == 0


# ----------------------------------------------------------------------------- the real primary


def test_desk_agent_runs_through_the_selector_on_the_primary(embedded_model: Path, tiny_llama: Path) -> None:
    client = ModelSelectorClient(
        primary=primary_cfg(embedded_model, max_tokens=256), fallback=fallback_cfg(tiny_llama), **QUIET
    )
    agent = AssistantAgent(
        "analyst",
        model_client=client,
        system_message="You are an equity analyst. Reply with JSON only.",
        output_content_type=AnalystReport,
    )
    result = run(agent.run(task="GOOG closed at 300, above its 20-day average; RSI 62. Your view?"))
    final = result.messages[-1]
    assert isinstance(final, StructuredMessage) and isinstance(final.content, AnalystReport)
    assert client.last_route is not None and client.last_route.reason == "primary"
    assert client.last_metrics is not None and client.last_metrics.model == "smol-primary"
    assert client.total_usage().completion_tokens > 0
    assert client.count_tokens(ASK) == client.primary.count_tokens(ASK)


def test_short_deadline_is_routed_to_the_fallback_by_estimate(embedded_model: Path, tiny_llama: Path) -> None:
    client = ModelSelectorClient(
        primary=primary_cfg(embedded_model, max_tokens=200), fallback=fallback_cfg(tiny_llama), **QUIET
    )
    ask = [UserMessage(content="GOOG's daily direction, last 20 days?", source="desk")]
    run(client.create(ask, json_output=Month))  # measures the primary's rates
    assert client.last_route is not None and client.last_route.reason == "primary"
    assert client.last_metrics is not None
    # Well under what the primary just took: planned away by the estimate. The fallback's clock
    # never reaches a deadline, so how fast it answers on this machine cannot fail the test.
    deadline_s = 0.4 * client.last_metrics.latency_s
    other = [UserMessage(content="MSFT's daily direction, last 20 days?", source="desk")]
    assert client.fallback is not None
    with model_clock(client.fallback.llm, never_late):
        result = run(client.create(other, json_output=Month, extra_create_args={"deadline_s": deadline_s}))
    assert len(Month.model_validate_json(result.content).days) == 20
    assert client.last_route is not None and client.last_route.reason == "deadline", client.last_route
    assert client.last_route.detail.startswith("primary estimate")  # decided before calling the primary
    assert client.health.failures == 0


def test_slow_primary_is_cut_mid_generation_and_the_fallback_still_answers(
    embedded_model: Path, tiny_llama: Path
) -> None:
    """Neither model measured yet: the primary may use half the time left (1800 of 3600 s), then
    it is cut. Its clock runs 60 s ahead per read, so the cut comes after about 30 tokens of a
    reply that needs over 100, on any machine; the fallback has the rest of the hour."""
    client = ModelSelectorClient(
        primary=primary_cfg(embedded_model, model_name="slow-primary", max_tokens=900),
        fallback=fallback_cfg(tiny_llama, model_name="fresh-fallback", max_tokens=1500),
        **QUIET,
    )
    assert client.primary.llm.llama and client.fallback and client.fallback.llm.llama  # loaded, not measured
    ask = [UserMessage(content="List the daily direction of GOOG for the last 100 days.", source="desk")]
    with model_clock(client.primary.llm, TickClock(60.0)):
        result = run(client.create(ask, json_output=Trend, extra_create_args={"deadline_s": 3600.0}))
    assert len(Trend.model_validate_json(result.content).days) == 100
    route = client.last_route
    assert route is not None and route.reason == "deadline" and route.model == "fresh-fallback"
    cut = re.search(r"DeadlineExceededError: .* passed its deadline after (\d+) tokens", route.detail)
    assert cut and int(cut.group(1)) > 0, route.detail  # the primary started and was cut mid-reply
    assert client.primary.llm.calls == 0  # it never finished a reply
    assert client.health.failures == 1


def test_a_reply_kind_the_primary_has_not_answered_is_tried_with_a_cut_off(
    embedded_model: Path, tiny_llama: Path
) -> None:
    """Rates alone say nothing about how long a new kind of reply is: rather than assume
    max_tokens (and never try the primary again), the selector tries it, cut where the
    fallback's reserve begins, and plans the next call of that kind from what it measured."""
    client = ModelSelectorClient(
        primary=primary_cfg(embedded_model, max_tokens=200), fallback=fallback_cfg(tiny_llama), **QUIET
    )
    run(client.create(ASK, json_output=Decision))  # rates measured, on a short reply kind
    generous = {"deadline_s": 60.0}
    ask = [UserMessage(content="GOOG's daily direction, last 20 days?", source="desk")]
    with model_clock(client.primary.llm, never_late):  # the cut-off is planned, never reached
        run(client.create(ask, json_output=Month, extra_create_args=generous))
        route = client.last_route
        assert route is not None and route.reason == "primary", route
        assert route.detail.startswith("not yet measured for this reply; cut at")
        run(client.create(ask, json_output=Month, extra_create_args=generous))
    assert client.last_route is not None and client.last_route.reason == "primary"
    assert client.last_route.detail == ""  # planned from Month's measured length this time


def test_an_unmeasured_small_fallback_does_not_cut_a_primary_that_meets_the_deadline(
    embedded_model: Path, tiny_llama: Path
) -> None:
    """One loop, a deadline 1.5x the selector's own estimate of the primary's call: the primary
    alone meets it. An unmeasured fallback used to be given half the time, so the plan saw
    0.75x of the estimate and sent the call away before trying the primary; sized from the
    primary's rates and the file sizes, the tiny fallback's reserve is the 10% floor."""
    primary = primary_cfg(embedded_model)
    probe = ModelSelectorClient(
        primary=primary, fallback=fallback_cfg(tiny_llama, model_name="probe"), **QUIET
    )
    run(probe.create(ASK, json_output=Decision))  # the primary's rates and reply length
    assert probe.last_metrics is not None
    short = {"deadline_s": 0.3 * probe.last_metrics.latency_s}
    other = [UserMessage(content="MSFT fell 1% on light volume; RSI 48. Buy, sell or hold?", source="desk")]
    # a deadline too short for the primary: the route's detail says what it is estimated to take
    assert probe.fallback is not None
    with model_clock(probe.fallback.llm, never_late):  # the fallback answers, however slow the machine
        run(probe.create(other, json_output=Decision, extra_create_args=short))
    assert probe.last_route is not None and probe.last_route.reason == "deadline"
    found = re.match(r"primary estimate ([0-9.]+)s", probe.last_route.detail)
    assert found, probe.last_route
    estimate = float(found.group(1))

    client = ModelSelectorClient(
        primary=primary, fallback=fallback_cfg(tiny_llama, model_name="never-measured-fallback"), **QUIET
    )
    assert client.fallback is not None and client.fallback.llm.rates() == (0.0, 0.0)
    served = client.primary.llm.calls
    meets = {"deadline_s": 1.5 * estimate}
    with model_clock(client.fallback.llm, never_late):  # if the primary is cut, the fallback answers
        result = run(client.create(other, json_output=Decision, extra_create_args=meets))
    Decision.model_validate_json(result.content)
    route = client.last_route
    assert route is not None
    assert not route.detail.startswith("primary estimate"), route  # not planned away
    # the primary served, unless the shared machine slowed it past its cut-off mid-reply
    assert route.reason == "primary" or route.detail.startswith("primary: DeadlineExceededError"), route
    assert route.reason != "primary" or client.primary.llm.calls == served + 1


def test_reply_lengths_are_remembered_per_kind() -> None:
    """A long report's length must not make a short order look too slow for the primary."""
    from collections import deque

    from trading_agents.agents.schemas import OrderProposal
    from utils.llm_integration.model_selector import PrimaryHealth, reply_kind

    report, order = reply_kind(AnalystReport), reply_kind(OrderProposal)
    assert len({report, order, reply_kind(True), reply_kind(None)}) == 4
    health = PrimaryHealth(replies={report: deque([120, 250]), order: deque([50, 48])})
    assert health.expected_reply_tokens(order, 400) == 51
    assert health.expected_reply_tokens(report, 400) == 251
    assert health.expected_reply_tokens(report, 200) == 200  # never beyond max_tokens
    assert health.expected_reply_tokens(reply_kind(True), 400) is None  # not measured: no guess


def test_context_too_long_for_the_primary_goes_to_the_fallback_or_fails_closed(
    embedded_model: Path, tiny_llama: Path
) -> None:
    long_ask = [UserMessage(content="Market notes: " + "prices up, volume up. " * 60, source="desk")]
    client = ModelSelectorClient(
        primary=primary_cfg(embedded_model, n_ctx=256), fallback=fallback_cfg(tiny_llama), **QUIET
    )
    run(client.create(long_ask, json_output=Decision, extra_create_args={"max_tokens": 64}))
    assert client.last_route is not None and client.last_route.reason == "context"
    assert client.health.failures == 0
    small = ModelSelectorClient(
        primary=primary_cfg(embedded_model, n_ctx=256),
        fallback=fallback_cfg(tiny_llama, model_name="tiny-256", n_ctx=256),
        **QUIET,
    )
    with pytest.raises(ContextOverflowError, match="fits neither"):
        run(small.create(long_ask, json_output=Decision, extra_create_args={"max_tokens": 64}))
    assert small.health.failures == 0


# ----------------------------------------------------------------------------- pressure logic


def test_oscillating_load_inside_the_hysteresis_band_does_not_flap(
    embedded_model: Path, tiny_llama: Path
) -> None:
    # Threshold 1.5 per core, hysteresis 0.2: enter above 1.5, leave only below 1.2.
    loads = [0.5, 1.6, 1.4, 1.3, 1.45, 1.25, 1.35, 1.1, 1.4, 1.45, 1.6]
    probe = ScriptedProbe(loads)
    client = ModelSelectorClient(
        SelectorConfig(
            primary=primary_cfg(embedded_model),
            fallback=fallback_cfg(tiny_llama),
            max_load_per_core=1.5,
            hysteresis=0.2,
            min_available_mb=0,
        ),
        probe=probe,
    )
    routes = [client.plan_now().reason for _ in loads[:-1]]
    assert routes == ["primary"] + ["pressure"] * 6 + ["primary"] * 3
    # and a real call while in pressure is served by the fallback
    run(client.create(ASK, json_output=Decision))
    assert client.last_route is not None and client.last_route.reason == "pressure"
    assert client.last_route.model == "tiny-fallback"


def test_primary_too_big_for_ram_is_never_loaded(embedded_model: Path, tiny_llama: Path) -> None:
    class LowMemory(LoadProbe):
        def sample(self) -> MachineLoad:
            return MachineLoad(cores=2, load_per_core_1m=0.0, load_per_core_now=0.0, available_mb=100.0)

    client = ModelSelectorClient(
        primary=primary_cfg(embedded_model, model_name="too-big", n_ctx=4096),
        fallback=fallback_cfg(tiny_llama),
        min_available_mb=10,
        probe=LowMemory(),
    )
    run(client.create(ASK, json_output=Decision))
    assert client.last_route is not None and client.last_route.reason == "pressure"
    assert "file + KV cache" in client.last_route.detail
    assert not client.primary.llm.loaded


# ----------------------------------------------------------------------------- status and CLI


def _settings_file(tmp_path: Path, tiny_llama: Path, fallback: str | None) -> Path:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    (models / tiny_llama.name).write_bytes(tiny_llama.read_bytes())
    data = {
        "paths": {"models_dir": str(models)},
        "llm": {"primary": "smollm2", "fallback": fallback},
        "selector": {"max_load_per_core": 1000.0},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_status_snapshot_and_cli(tiny_llama: Path, tmp_path: Path) -> None:
    from trading_agents.cli.status_cmd import status

    config = _settings_file(tmp_path, tiny_llama, tiny_llama.name)
    snap = selector_status(load_settings(config))
    assert snap["active"] is True
    assert snap["primary"]["name"] == "smollm2-135m-instruct" and snap["primary"]["fits_in_ram"] is True
    assert snap["fallback"]["file_present"] is True
    assert snap["route_now"]["reason"] == "primary"
    assert snap["machine"]["available_mb"] > 0 and snap["cooldown"]["benched"] is False

    app = typer.Typer()
    app.command("status")(status)
    app.command("other")(lambda: None)  # keeps `status` a subcommand
    out = CliRunner().invoke(app, ["status", "--config", str(config), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["route_now"]["model"] == "smollm2-135m-instruct"
    table = CliRunner().invoke(app, ["status", "--config", str(config)])
    assert table.exit_code == 0 and "route now" in table.stdout

    (tmp_path / "b").mkdir()
    inactive = _settings_file(tmp_path / "b", tiny_llama, None)
    shown = CliRunner().invoke(app, ["status", "--config", str(inactive), "--json"])
    data = json.loads(shown.stdout)
    assert data["active"] is False and "no fallback" in data["why_inactive"]


def test_bench_selector_runs_on_the_embedded_pair(tmp_path: Path) -> None:
    """With no configured models downloaded, the bench pairs the embedded model with a generated
    fallback from this checkout's tests/gguf_factory.py (it was silently skipped when loading
    that file by path failed)."""
    from trading_agents.bench import selector as bench

    result = bench.run(tmp_path, quick=True)
    assert "skipped" not in result, result
    assert result["models"]["synthetic_fallback"] is True
    assert [s["concurrent_loops"] for s in result["steps"]] == list(bench.RAMP)
    for step in result["steps"]:
        for mode in ("off", "on"):
            assert step[mode]["calls"] == step["concurrent_loops"] * result["calls_per_loop"]
            assert set(step[mode]["routes"]) <= {*REASONS, "failed"}
