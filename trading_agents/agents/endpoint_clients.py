"""The desk's model clients when ``llm.endpoint`` names an external OpenAI-compatible server.

The endpoint is checked once (:func:`~utils.llm_integration.endpoint_client.check_endpoint`:
it answers, accepts the key, lists the model), so an unreachable server, a refused key or an
unknown model stop a run before any bar is recorded (``LLMError``, exit 3). Every role gets an
:class:`~utils.llm_integration.endpoint_client.EndpointChatCompletionClient` with this side's
sampling settings; no model is loaded in this process. With a response cache each client is
wrapped in a :class:`~utils.llm_integration.response_cache.ResponseCacheClient`.

With a local fallback (``llm.fallback`` and ``selector.enabled``) each role gets a
:class:`~utils.llm_integration.model_selector.ModelSelectorClient` with the endpoint as its
primary and the local model as fallback, with the ``selector:`` limits and reasons.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trading_agents.agents.desk_models import DeskModels
from trading_agents.agents.team import ROLES
from trading_agents.config.settings import EndpointSettings, Settings
from trading_agents.model_files.registry import ResolvedModel
from utils.llm_integration.components import ENDPOINT_PROVIDER
from utils.llm_integration.endpoint_client import (
    EndpointChatCompletionClient,
    EndpointClientConfig,
    check_endpoint,
)


def endpoint_client_config(endpoint: EndpointSettings, settings: Settings) -> EndpointClientConfig:
    """The client config of one role on ``endpoint``, with the ``llm:`` sampling settings."""
    return EndpointClientConfig(
        base_url=endpoint.base_url,
        model=endpoint.model,
        api_key=endpoint.api_key,
        structured=endpoint.structured,
        revision=endpoint.revision,
        max_in_flight=endpoint.max_in_flight,
        timeout_s=endpoint.timeout_s,
        **settings.llm.sampling_options(),
    )


def endpoint_desk_models(
    settings: Settings,
    response_cache: Path | None,
    fallback: tuple[ResolvedModel, dict[str, Any]] | None = None,
) -> DeskModels:
    """One endpoint client per role, after the endpoint's preflight check; with ``fallback``
    (the local model and its client config) a selector per role, the endpoint as primary."""
    endpoint = settings.llm.endpoint
    assert endpoint is not None
    check_endpoint(endpoint.base_url, endpoint.model, endpoint.api_key, structured=endpoint.structured)
    config = endpoint_client_config(endpoint, settings)
    first = EndpointChatCompletionClient(config)
    desk = DeskModels(
        primary=ResolvedModel(
            name=endpoint.model,
            path=Path(endpoint.model),
            entry=None,
            n_ctx=0,
            chat_format="server",
            embedded=False,
        ),
        fallback=fallback[0] if fallback is not None else None,
        notes=[f"model {endpoint.model} served by the endpoint {endpoint.base_url}"],
        server=endpoint.base_url,
        served_sha256={endpoint.model: first.identity},
    )
    if fallback is not None:
        from utils.llm_integration.files import file_sha256

        desk.served_sha256[fallback[0].name] = file_sha256(fallback[0].path, settings.paths.home)
    for role in ROLES:
        client: Any = EndpointChatCompletionClient(config)
        if fallback is not None:
            from utils.llm_integration.model_selector import ModelSelectorClient, SelectorConfig

            primary = {"provider": ENDPOINT_PROVIDER, "config": config.model_dump(mode="python")}
            if config.api_key is not None:
                primary["config"]["api_key"] = config.api_key.get_secret_value()
            client = ModelSelectorClient(
                SelectorConfig(
                    primary=primary,
                    fallback=fallback[1],
                    role=role,
                    may_fall_back=role in settings.selector.fallback_roles,
                    **settings.selector.model_dump(exclude={"enabled", "fallback_roles"}),
                )
            )
        if response_cache is not None:
            from utils.llm_integration.response_cache import ResponseCacheClient

            desk.clients[role] = ResponseCacheClient(client, response_cache)
        else:
            desk.clients[role] = client
    return desk
