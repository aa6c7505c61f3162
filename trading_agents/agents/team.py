"""The desk: analyst -> risk -> executor as an AutoGen ``GraphFlow`` of ``AssistantAgent``s.

Each agent is a stock ``autogen_agentchat`` ``AssistantAgent`` with structured output
(``output_content_type``) on its own model client; the clients may share one loaded model.
Edges are conditional: the risk manager runs only when the analyst proposes a trade, the
executor only when the risk manager approves or reduces. Every agent's prompt starts with the
same static desk rules and the day's task; :class:`RoleContext` quotes the earlier agents'
replies back as the turns they were and ends with the agent's own cue, so each prompt extends
the one before it and llama.cpp evaluates only what is new (see
:mod:`trading_agents.agents.prompts`).

The team only proposes. :mod:`trading_agents.agents.guards` and the risk engine turn the
replies into an order under hard limits that no reply can bypass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import BaseChatMessage, StructuredMessage, TextMessage
from autogen_agentchat.teams import DiGraphBuilder, GraphFlow
from autogen_core import CancellationToken
from autogen_core.model_context import UnboundedChatCompletionContext
from autogen_core.models import AssistantMessage, ChatCompletionClient, LLMMessage, UserMessage
from pydantic import BaseModel

from trading_agents.agents.prompts import ROLE_CUES, desk_rules
from trading_agents.agents.schemas import ROLE_SCHEMAS, AnalystReport, OrderProposal, RiskVerdict
from trading_agents.config.settings import RiskSettings

ROLES = ("analyst", "risk", "executor")


class RoleContext(UnboundedChatCompletionContext):
    """Model context that lays the shared thread out as one conversation.

    Each earlier agent's reply becomes that agent's cue and its reply as an assistant turn,
    exactly as it was asked and answered, then the agent's own cue comes last. So the analyst's
    prompt plus its reply is the start of the risk manager's prompt, and so on: the reply's
    tokens are reused from llama.cpp's KV cache instead of evaluated again.
    """

    def __init__(self, role: str) -> None:
        super().__init__()
        self._cue = ROLE_CUES[role]

    async def get_messages(self) -> list[LLMMessage]:
        out: list[LLMMessage] = []
        for message in await super().get_messages():
            source = getattr(message, "source", "")
            if isinstance(message, UserMessage) and source in ROLE_CUES and isinstance(message.content, str):
                out.append(UserMessage(content=ROLE_CUES[source], source="desk"))
                out.append(AssistantMessage(content=message.content, source=source))
            else:
                out.append(message)
        return [*out, UserMessage(content=self._cue, source="desk")]


@dataclass
class AgentStep:
    """One agent's turn: what it was asked, what it answered, what it cost, who served it."""

    role: str
    output: dict[str, Any] | None
    model: str
    route_reason: str
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    fixed_tokens: int = 0  # of completion_tokens, the schema's fixed text: evaluated, not sampled
    latency_s: float = 0.0
    ttft_s: float = 0.0
    # what making the reply took: latency_s, or for a replayed reply the recorded call's latency
    compute_s: float = 0.0
    from_response_cache: bool = False
    prompt: str = ""
    error: str | None = None
    time_breakdown: dict[str, float] | None = None  # see BREAKDOWN_FIELDS

    def to_record(self, include_prompt: bool = True) -> dict[str, Any]:
        # time_breakdown is for benchmarks: timings are not part of what a decision recorded
        skip = {"time_breakdown"} if include_prompt else {"time_breakdown", "prompt"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}


# CallMetrics fields a step's time is split into (the rest of latency_s is everything else)
BREAKDOWN_FIELDS = ("prompt_eval_s", "generation_s", "sampling_s", "cache_state_s")


@dataclass
class TeamOutcome:
    analyst: AnalystReport | None
    risk: RiskVerdict | None
    executor: OrderProposal | None
    steps: list[AgentStep] = field(default_factory=list)
    wall_s: float = 0.0
    error: str | None = None


def step_from_client(role: str, client: ChatCompletionClient, output: BaseModel | None) -> AgentStep:
    """Read the metrics of the client's last call (our clients record them)."""
    m = getattr(client, "last_metrics", None)
    route = getattr(client, "last_route", None)
    model = route.model if route is not None else (m.model if m is not None else "unknown")
    reason = route.reason if route is not None else "primary"
    step = AgentStep(
        role=role,
        output=output.model_dump(mode="json") if output is not None else None,
        model=model,
        route_reason=reason,
    )
    if m is not None:
        step.prompt_tokens = m.prompt_tokens
        step.cached_prompt_tokens = m.cached_prompt_tokens
        step.completion_tokens = m.completion_tokens
        step.fixed_tokens = getattr(m, "fixed_tokens", 0)
        step.latency_s = m.latency_s
        step.ttft_s = m.ttft_s
        step.from_response_cache = m.from_response_cache
        recorded = getattr(client, "last_recorded_latency_s", None) if m.from_response_cache else None
        step.compute_s = float(recorded) if isinstance(recorded, int | float) else m.latency_s
        if not m.from_response_cache:
            step.time_breakdown = {k: getattr(m, k, 0.0) for k in BREAKDOWN_FIELDS}
    step.prompt = getattr(client, "last_prompt", "") or ""
    return step


class TradingTeam:
    """Builds the three agents and runs them as one AutoGen ``GraphFlow`` per decision.

    Args:
        clients: one model client per role (``analyst``, ``risk``, ``executor``).
        stream: stream tokens from the clients (``create_stream``) instead of ``create``.
        system_message: what every agent is told first (:func:`~trading_agents.agents.prompts.desk_rules`
            for the session's limits; the default limits when not given).
    """

    def __init__(
        self,
        clients: Mapping[str, ChatCompletionClient],
        *,
        stream: bool = True,
        system_message: str | None = None,
    ) -> None:
        missing = [r for r in ROLES if r not in clients]
        if missing:
            raise ValueError(f"missing model clients for roles {missing}")
        self.clients = dict(clients)
        self.agents = {
            role: AssistantAgent(
                role,
                model_client=self.clients[role],
                system_message=system_message or desk_rules(RiskSettings()),
                model_context=RoleContext(role),
                output_content_type=ROLE_SCHEMAS[role],
                model_client_stream=stream,
                description=f"the desk's {role}",
            )
            for role in ROLES
        }
        self.flow = self._build_flow()

    def _build_flow(self) -> GraphFlow:
        builder = DiGraphBuilder()
        for agent in self.agents.values():
            builder.add_node(agent)
        builder.add_edge(self.agents["analyst"], self.agents["risk"], condition=_proposes_trade)
        builder.add_edge(self.agents["risk"], self.agents["executor"], condition=_approves)
        builder.set_entry_point(self.agents["analyst"])
        return GraphFlow(
            participants=builder.get_participants(),
            graph=builder.build(),
            custom_message_types=[StructuredMessage[kind] for kind in ROLE_SCHEMAS.values()],
        )

    async def decide(self, task: str, on_event: Callable[[str, Any], None] | None = None) -> TeamOutcome:
        """Run one decision. ``on_event(kind, payload)`` sees ``start``/``token``/``done`` per role."""
        await self.flow.reset()
        for client in self.clients.values():
            if hasattr(client, "last_metrics"):
                client.last_metrics = None  # type: ignore[attr-defined]
        started = time.monotonic()
        outputs: dict[str, BaseModel] = {}
        steps: list[AgentStep] = []
        error: str | None = None
        if on_event:
            on_event("start", "analyst")
        try:
            result: TaskResult | None = None
            async for item in self.flow.run_stream(task=TextMessage(content=task, source="desk")):
                if isinstance(item, TaskResult):
                    result = item
                    continue
                if on_event and type(item).__name__ == "ModelClientStreamingChunkEvent":
                    on_event("token", (item.source, item.content))  # type: ignore[attr-defined]
                if isinstance(item, StructuredMessage) and item.source in self.agents:
                    outputs[item.source] = item.content
                    steps.append(step_from_client(item.source, self.clients[item.source], item.content))
                    if on_event:
                        on_event("done", steps[-1])
                        nxt = _next_role(item.source, item.content)
                        if nxt:
                            on_event("start", nxt)
            if result is not None and result.stop_reason and "error" in result.stop_reason.lower():
                error = result.stop_reason
        except Exception as exc:  # a model failure fails closed: no order
            error = f"{type(exc).__name__}: {exc}"
            failed = next((r for r in ROLES if r not in outputs), "analyst")
            step = step_from_client(failed, self.clients[failed], None)
            step.error = error
            steps.append(step)
            if on_event:
                on_event("done", step)
        if error is not None:
            # a run that failed inside the flow leaves its graph state behind (the next run
            # would stop after the analyst): the next decision starts on a fresh flow
            self.flow = self._build_flow()
        return TeamOutcome(
            analyst=_typed(outputs.get("analyst"), AnalystReport),
            risk=_typed(outputs.get("risk"), RiskVerdict),
            executor=_typed(outputs.get("executor"), OrderProposal),
            steps=steps,
            wall_s=time.monotonic() - started,
            error=error,
        )

    async def analyse(self, task: str, on_event: Callable[[str, Any], None] | None = None) -> TeamOutcome:
        """Only the analyst's report (the portfolio modes size positions across the universe
        instead of per ticker). A failed reply fails closed: ``analyst`` is ``None``."""
        agent = self.agents["analyst"]
        await agent.on_reset(CancellationToken())
        client = self.clients["analyst"]
        if hasattr(client, "last_metrics"):
            client.last_metrics = None  # type: ignore[attr-defined]
        started = time.monotonic()
        if on_event:
            on_event("start", "analyst")
        output: BaseModel | None = None
        error: str | None = None
        try:
            result = await agent.run(task=TextMessage(content=task, source="desk"))
            last = result.messages[-1] if result.messages else None
            if isinstance(last, StructuredMessage):
                output = last.content
            else:
                error = f"no structured analyst reply ({type(last).__name__})"
        except Exception as exc:  # a model failure fails closed: no report
            error = f"{type(exc).__name__}: {exc}"
        step = step_from_client("analyst", client, output)
        step.error = error
        if on_event:
            on_event("done", step)
        return TeamOutcome(
            analyst=_typed(output, AnalystReport),
            risk=None,
            executor=None,
            steps=[step],
            wall_s=time.monotonic() - started,
            error=error,
        )

    async def close(self) -> None:
        for client in {id(c): c for c in self.clients.values()}.values():
            await client.close()


def _typed(value: BaseModel | None, kind: type[BaseModel]) -> Any:
    return value if isinstance(value, kind) else None


def _proposes_trade(message: BaseChatMessage) -> bool:
    return isinstance(message, StructuredMessage) and getattr(message.content, "action", "HOLD") != "HOLD"


def _approves(message: BaseChatMessage) -> bool:
    return (
        isinstance(message, StructuredMessage) and getattr(message.content, "decision", "reject") != "reject"
    )


def _next_role(role: str, output: BaseModel) -> str | None:
    if role == "analyst" and getattr(output, "action", "HOLD") != "HOLD":
        return "risk"
    if role == "risk" and getattr(output, "decision", "reject") != "reject":
        return "executor"
    return None
