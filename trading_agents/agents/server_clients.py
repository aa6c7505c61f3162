"""The desk's model clients when ``llm.server_url`` points at a ``trading-agents serve`` server.

The server decides which models serve (its own ``llm:`` settings); this side asks its
``/health`` once, so an unreachable server stops a run before any bar is recorded, and learns
the served models' sha256 (the replay cache key). Roles that may fall back
(``selector.fallback_roles``) ask for ``selector`` when the server offers it, the others for
the server's primary; sampling (temperature, top_p, seed, max_tokens) and the selector's
deadline come from these settings, per request.
"""

from __future__ import annotations

from pathlib import Path

from trading_agents.agents.desk_models import DeskModels
from trading_agents.agents.team import ROLES
from trading_agents.config.settings import Settings
from trading_agents.model_files.registry import ResolvedModel
from utils.llm_integration.server_client import ServerChatCompletionClient, ServerClientConfig, fetch_health


def _served(health: dict, name: str) -> ResolvedModel:
    model = next(m for m in health["models"] if m["id"] == name)
    return ResolvedModel(
        name=name,
        path=Path(model["file"]),
        entry=None,
        n_ctx=int(model["n_ctx"]),
        chat_format="server",
        embedded=False,
    )


def server_desk_models(settings: Settings, response_cache: Path | None) -> DeskModels:
    """One :class:`ServerChatCompletionClient` per role, pointed at ``llm.server_url``."""
    llm = settings.llm
    assert llm.server_url is not None
    health = fetch_health(llm.server_url, llm.server_api_key)
    primary, fallback = health["primary"], health.get("fallback")
    shas = {m["id"]: m["sha256"] for m in health["models"] if m.get("sha256")}
    desk = DeskModels(
        primary=_served(health, primary),
        fallback=_served(health, fallback) if fallback else None,
        notes=[f"models served by {llm.server_url}"],
        server=llm.server_url,
        served_sha256={k: v for k, v in shas.items() if k in (primary, fallback)},
    )
    use_selector = bool(health.get("selector")) and settings.selector.enabled
    for role in ROLES:
        via_selector = use_selector and role in settings.selector.fallback_roles
        config = ServerClientConfig(
            base_url=llm.server_url,
            model="selector" if via_selector else primary,
            api_key=llm.server_api_key,
            model_sha256=shas,
            candidates=[primary, fallback] if via_selector and fallback else [primary],
            **llm.sampling_options(),
            deadline_s=settings.selector.deadline_s,
            response_cache=str(response_cache) if response_cache is not None else None,
        )
        desk.clients[role] = ServerChatCompletionClient(config)
    return desk
