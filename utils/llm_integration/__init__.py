"""LLM integration layer: local GGUF models (llama.cpp), AutoGen model clients, a model selector.

Nothing here knows about trading, and nothing here imports the trading package; the trading
package builds on it. One module per concern:

``runtime``         llama.cpp's thread wait policy, set before llama.cpp is first imported
``errors``          every error (all derive from ``LLMError``)
``spec``            ``LLMSpec`` / ``SamplingParams``: what a model is loaded and sampled with, defaults once
``chat_formats``    prompt formats for models without a usable chat template
``grammar``         JSON schema -> llama.cpp grammar, reply -> validated object
``loaded_model``    ``LocalLLM``: one loaded model, its lock, metrics; the per-process registry
``files``           the atomic file writer; model-file sha256
``gguf_header``     GGUF header reading (architecture, quantization, KV bytes per token)
``components``      provider allowlist and ``load_llm_config`` for declarative client configs
``autogen_client``  ``LocalLlamaChatCompletionClient``: a ``LocalLLM`` as an AutoGen client
``response_cache``  ``ResponseCacheClient``: exact replay around any AutoGen client
``selector_limits`` ``SelectorLimits``: when the selector leaves the primary (cheap to import)
``model_selector``  ``ModelSelectorClient``: primary or fallback per call, with the reason

The names below are importable from the package itself, loaded on first use (so importing
``utils.llm_integration.spec`` or ``selector_limits`` does not import AutoGen or llama.cpp).
"""

from __future__ import annotations

import importlib
from typing import Any

from utils.llm_integration import runtime as _runtime  # noqa: F401  (sets the wait policy first)

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "LLMError",
            "ModelLoadError",
            "OutputTruncatedError",
            "InvalidOutputError",
            "DeadlineExceededError",
            "GenerationCancelledError",
            "ProviderNotAllowedError",
            "ContextOverflowError",
        ),
        "errors",
    ),
    **dict.fromkeys(("LLMSpec", "SamplingParams", "ChatFormat", "Message"), "spec"),
    **dict.fromkeys(("json_schema_grammar", "grammar_schema", "parse_reply"), "grammar"),
    **dict.fromkeys(
        ("LocalLLM", "CallMetrics", "Completion", "get_local_llm", "release_all", "load_llama"),
        "loaded_model",
    ),
    **dict.fromkeys(("atomic_write_bytes", "atomic_write_text", "file_sha256"), "files"),
    **dict.fromkeys(("ALLOWED_PROVIDERS", "check_providers", "load_llm_config"), "components"),
    **dict.fromkeys(
        ("LocalLlamaChatCompletionClient", "LocalLlamaConfig", "AutoGenLLMConfig"), "autogen_client"
    ),
    **dict.fromkeys(("ResponseCacheClient", "ResponseStore"), "response_cache"),
    **dict.fromkeys(("SelectorLimits",), "selector_limits"),
    **dict.fromkeys(
        ("ModelSelectorClient", "SelectorConfig", "Route", "reset_selector_state"),
        "model_selector",
    ),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
