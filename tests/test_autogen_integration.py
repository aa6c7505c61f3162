"""Our AutoGen model client: a Component loadable from YAML, driving stock AutoGen agents."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import yaml
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import StructuredMessage
from autogen_core import CancellationToken
from autogen_core.models import ChatCompletionClient, CreateResult, SystemMessage, UserMessage

from trading_agents.agents.schemas import AnalystReport
from trading_agents.config.settings import project_root
from utils.llm_integration.autogen_client import AutoGenLLMConfig, LocalLlamaChatCompletionClient
from utils.llm_integration.components import load_llm_config
from utils.llm_integration.errors import GenerationCancelledError, LLMError, ProviderNotAllowedError

CONFIG = project_root() / "configs" / "autogen" / "local_llm.yaml"


def test_third_party_assistant_agent_runs_from_the_yaml_config_alone() -> None:
    """What someone else's code does: stock load_component + stock AssistantAgent."""
    client = ChatCompletionClient.load_component(yaml.safe_load(CONFIG.read_text()))
    agent = AssistantAgent(
        "analyst",
        model_client=client,
        system_message="You are an equity analyst. Reply with JSON only.",
        output_content_type=AnalystReport,
    )
    result = asyncio.run(agent.run(task="SPX closed at 4000, up 1% on the day, RSI 55. Your view?"))
    final = result.messages[-1]
    assert isinstance(final, StructuredMessage)
    assert isinstance(final.content, AnalystReport)
    assert final.models_usage is not None and final.models_usage.completion_tokens > 0
    asyncio.run(client.close())


def test_component_round_trip_and_model_info() -> None:
    client = load_llm_config(CONFIG)
    assert isinstance(client, LocalLlamaChatCompletionClient)
    dumped = client.dump_component()
    assert dumped.provider == "utils.llm_integration.autogen_client.LocalLlamaChatCompletionClient"
    again = ChatCompletionClient.load_component(dumped)
    assert again.spec == client.spec  # type: ignore[attr-defined]
    info = client.model_info
    assert info["function_calling"] is False and info["vision"] is False
    assert info["json_output"] is True and info["structured_output"] is True


def test_provider_allowlist_is_checked_before_any_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "evil_provider.py").write_text(
        "import sys\nsys.modules['evil_marker'] = True\nclass C: pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    bad = {"provider": "evil_provider.C", "config": {}}
    with pytest.raises(ProviderNotAllowedError, match=r"evil_provider\.C"):
        load_llm_config(bad)
    nested = {
        "provider": "utils.llm_integration.model_selector.ModelSelectorClient",
        "config": {"primary": bad},
    }
    with pytest.raises(ProviderNotAllowedError):
        load_llm_config(nested)
    assert "evil_marker" not in sys.modules and "evil_provider" not in sys.modules


def test_unknown_config_keys_and_escaping_paths_are_errors(tmp_path: Path) -> None:
    cfg = AutoGenLLMConfig.local("model.gguf")
    cfg["config"]["n_ctxx"] = 5
    with pytest.raises(LLMError, match="invalid model config"):
        load_llm_config(cfg)
    escaping = AutoGenLLMConfig.local("../outside.gguf", allowed_dir=str(tmp_path / "models"))
    with pytest.raises(LLMError, match="escapes the models folder"):
        load_llm_config(escaping)


def test_stream_count_tokens_and_cancellation(embedded_model: Path) -> None:
    client = LocalLlamaChatCompletionClient(model_path=str(embedded_model), model_name="smol", max_tokens=40)
    messages = [
        SystemMessage(content="Be brief."),
        UserMessage(content="Name three stock indices.", source="u"),
    ]
    assert client.count_tokens(messages) == client.llm.count_tokens(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three stock indices."}]
    )
    assert client.remaining_tokens(messages) == 2048 - client.count_tokens(messages)

    async def collect() -> list[object]:
        return [item async for item in client.create_stream(messages)]

    items = asyncio.run(collect())
    pieces = [i for i in items if isinstance(i, str)]
    assert len(pieces) >= 2 and isinstance(items[-1], CreateResult)
    assert "".join(pieces) == items[-1].content
    assert client.total_usage().completion_tokens == items[-1].usage.completion_tokens

    async def cancelled() -> None:
        token = CancellationToken()
        seen = 0
        async for _item in client.create_stream(
            [UserMessage(content="Write a long essay on bonds.", source="u")],
            extra_create_args={"max_tokens": 400},
            cancellation_token=token,
        ):
            seen += 1
            if seen == 2:
                token.cancel()

    with pytest.raises(GenerationCancelledError):
        asyncio.run(cancelled())
    assert client.llm.in_flight == 0


def test_tools_and_unknown_extra_args_are_refused(embedded_model: Path) -> None:
    from autogen_core.tools import FunctionTool

    client = LocalLlamaChatCompletionClient(model_path=str(embedded_model))
    tool = FunctionTool(lambda: 1, description="noop", name="noop")
    with pytest.raises(ValueError, match="no function calling"):
        asyncio.run(client.create([UserMessage(content="hi", source="u")], tools=[tool]))
    with pytest.raises(ValueError, match="unknown extra_create_args"):
        asyncio.run(client.create([UserMessage(content="hi", source="u")], extra_create_args={"foo": 1}))
