"""Declarative model-client configs: the providers this project loads, checked before import.

``ChatCompletionClient.load_component`` imports whatever module a config's ``provider`` names;
:func:`load_llm_config` checks that provider (and every nested one) against
:data:`ALLOWED_PROVIDERS` first. The provider names live here, with nothing heavy imported,
so that each client module can name itself without importing the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from autogen_core.models import ChatCompletionClient

from utils.llm_integration.errors import LLMError, ProviderNotAllowedError

CLIENT_PROVIDER = "utils.llm_integration.autogen_client.LocalLlamaChatCompletionClient"
SELECTOR_PROVIDER = "utils.llm_integration.model_selector.ModelSelectorClient"
CACHE_PROVIDER = "utils.llm_integration.response_cache.ResponseCacheClient"
SERVER_PROVIDER = "utils.llm_integration.server_client.ServerChatCompletionClient"
ENDPOINT_PROVIDER = "utils.llm_integration.endpoint_client.EndpointChatCompletionClient"
OPENAI_PROVIDER = "autogen_ext.models.openai.OpenAIChatCompletionClient"
ALLOWED_PROVIDERS: frozenset[str] = frozenset(
    {CLIENT_PROVIDER, SELECTOR_PROVIDER, CACHE_PROVIDER, SERVER_PROVIDER, ENDPOINT_PROVIDER, OPENAI_PROVIDER}
)


def check_providers(config: Mapping[str, Any], allowed: frozenset[str] = ALLOWED_PROVIDERS) -> None:
    """Raise :class:`ProviderNotAllowedError` if this config or any nested one names another provider."""
    provider = config.get("provider")
    if provider is not None and provider not in allowed:
        raise ProviderNotAllowedError(
            f"provider {provider!r} is not allowed; use one of: {', '.join(sorted(allowed))}"
        )
    for value in config.values():
        if isinstance(value, Mapping):
            check_providers(value, allowed)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, Mapping):
                    check_providers(item, allowed)


def load_llm_config(
    source: str | Path | Mapping[str, Any], *, allowed: frozenset[str] = ALLOWED_PROVIDERS
) -> ChatCompletionClient:
    """Load a model client from a YAML file or mapping, after checking every ``provider``."""
    if isinstance(source, Mapping):
        data: Any = dict(source)
        where = "config"
    else:
        where = str(source)
        try:
            data = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LLMError(f"model config {source} does not exist") from None
        except yaml.YAMLError as exc:
            raise LLMError(f"model config {source} is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping) or "provider" not in data:
        raise LLMError(f"{where}: a model config needs `provider` and `config` keys")
    check_providers(data, allowed)
    try:
        return ChatCompletionClient.load_component(dict(data))
    except ImportError as exc:
        raise LLMError(f"{where}: cannot import the provider ({exc}); install the package it needs") from None
    except (ValueError, TypeError) as exc:
        raise LLMError(f"{where}: invalid model config: {str(exc).splitlines()[0]}") from None
