"""Model clients for the desk's roles, built from settings.

With a fallback model available and ``selector.enabled``, each role gets a
:class:`~utils.llm_integration.model_selector.ModelSelectorClient` (primary with fallback);
otherwise a plain :class:`~utils.llm_integration.autogen_client.LocalLlamaChatCompletionClient`.
With a response cache each role's client is wrapped in a
:class:`~utils.llm_integration.response_cache.ResponseCacheClient` (exact replay).
All clients built for one process share the loaded models. :func:`selector_config` is the one
place a selector config is built from settings (the desk and ``models status`` use it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from autogen_core.models import ChatCompletionClient

from trading_agents.agents.desk_models import DeskModels
from trading_agents.agents.endpoint_clients import endpoint_desk_models
from trading_agents.agents.server_clients import server_desk_models
from trading_agents.agents.team import ROLES
from trading_agents.config.settings import Settings
from trading_agents.errors import ModelFileError
from trading_agents.model_files.gguf_info import read_gguf_info
from trading_agents.model_files.registry import ResolvedModel, resolve_llm_pair, resolve_or_embedded
from utils.llm_integration.autogen_client import AutoGenLLMConfig, LocalLlamaChatCompletionClient

if TYPE_CHECKING:
    from utils.llm_integration.model_selector import SelectorConfig


def check_model_file(model: ResolvedModel) -> None:
    """Read ``model``'s GGUF header (a few MB at most) and match it against its registry entry.

    Raises :class:`ModelFileError` (exit 2) for a missing, empty, truncated or non-GGUF file,
    an unsupported tensor type, or an architecture other than the registry's.
    """
    info = read_gguf_info(model.path)
    entry = model.entry
    if entry is not None and not model.embedded and info.architecture != entry.architecture:
        raise ModelFileError(
            f"model file {model.path} is a {info.architecture} model but {entry.name} is "
            f"{entry.architecture}; get the right file: `trading-agents models download {entry.name}`"
        )


def local_client_config(model: ResolvedModel, settings: Settings) -> dict[str, Any]:
    """Declarative config of one local model client (see ``AutoGenLLMConfig.local``)."""
    llm = settings.llm
    options: dict[str, Any] = {
        "model_name": model.name,
        "n_ctx": model.n_ctx,
        "n_threads": llm.n_threads,
        "n_batch": llm.n_batch,
        "use_mmap": llm.use_mmap,
        "use_mlock": llm.use_mlock,
        "chat_format": model.chat_format,
        "ram_cache_mb": llm.ram_cache_mb,
        "n_gpu_layers": llm.n_gpu_layers,
        "main_gpu": llm.main_gpu,
        "tensor_split": llm.tensor_split,
        "state_dir": str(settings.paths.home),
        **llm.sampling_options(),
        "fixed_text": llm.fixed_text,
        "family": "mistral" if "mistral" in model.chat_format else "unknown",
    }
    return AutoGenLLMConfig.local(model.path, **options)


def selector_config(
    primary: ResolvedModel, fallback: ResolvedModel, settings: Settings, role: str
) -> SelectorConfig:
    """The selector config of one desk role: the two local models and the ``selector:`` limits."""
    from utils.llm_integration.model_selector import SelectorConfig

    return SelectorConfig(
        primary=local_client_config(primary, settings),
        fallback=local_client_config(fallback, settings),
        role=role,
        may_fall_back=role in settings.selector.fallback_roles,
        **settings.selector.model_dump(exclude={"enabled", "fallback_roles"}),
    )


def _local_fallback(settings: Settings) -> tuple[ResolvedModel, dict[str, Any]] | None:
    """The local fallback behind an endpoint primary (``llm.fallback`` with the selector on)."""
    if not settings.llm.fallback or not settings.selector.enabled:
        return None
    model, _ = resolve_or_embedded(settings.llm.fallback, settings)
    check_model_file(model)
    return model, local_client_config(model, settings)


def build_desk_models(settings: Settings, *, response_cache: Path | None = None) -> DeskModels:
    """Resolve primary/fallback and build one client per role: on an external endpoint with
    ``llm.endpoint``, on a ``serve`` server with ``llm.server_url``, else in this process."""
    if settings.llm.endpoint is not None:
        return endpoint_desk_models(settings, response_cache, _local_fallback(settings))
    if settings.llm.server_url:
        return server_desk_models(settings, response_cache)
    primary, fallback, notes = resolve_llm_pair(settings)
    for model in (primary, fallback):
        if model is not None:
            check_model_file(model)
    desk = DeskModels(primary=primary, fallback=fallback, notes=notes)
    primary_cfg = local_client_config(primary, settings)
    for role in ROLES:
        client: ChatCompletionClient
        if fallback is not None and settings.selector.enabled:
            from utils.llm_integration.model_selector import ModelSelectorClient

            client = ModelSelectorClient(selector_config(primary, fallback, settings, role))
        else:
            client = LocalLlamaChatCompletionClient.load_component(primary_cfg)
        if response_cache is not None:
            from utils.llm_integration.response_cache import ResponseCacheClient

            client = ResponseCacheClient(client, response_cache)
        desk.clients[role] = client
    return desk
