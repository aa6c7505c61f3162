"""What a model is loaded with and sampled with: the one place their defaults are declared.

:class:`LLMSpec` (loading) and :class:`SamplingParams` (sampling) hold the defaults; the AutoGen
component config (``LocalLlamaConfig``) and the trading settings' ``llm:`` section take theirs
from here (``LLMSpec.n_batch`` is the default value, read off the dataclass), adding only their
own bounds. Cheap to import (standard library only): the settings load it on every command.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ChatFormat = Literal["gguf", "mistral-instruct-system", "zephyr", "chatml"]
Message = Mapping[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass(frozen=True)
class LLMSpec:
    """How to load one model. Frozen and hashable: equal specs share one loaded model."""

    path: Path
    name: str = ""
    n_ctx: int = 2048
    # "auto": measured once per model file and CPU (utils.llm_integration.threads); None: one
    # thread per physical core; a number: exactly that
    n_threads: int | Literal["auto"] | None = "auto"
    n_batch: int = 512
    use_mmap: bool = True
    use_mlock: bool = False
    seed: int = 42
    chat_format: ChatFormat = "gguf"
    ram_cache_mb: int = 512  # llama.cpp state cache shared by the prompts of one model; 0: off
    n_gpu_layers: int = 0  # layers offloaded to the GPU; -1: all (see utils.llm_integration.gpu)
    main_gpu: int | None = None  # the whole offload on this GPU; None: split by tensor_split
    tensor_split: tuple[float, ...] | None = None  # share of the offloaded layers per GPU

    @property
    def display_name(self) -> str:
        return self.name or self.path.stem


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; part of the response-cache key."""

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 0.95
    seed: int = LLMSpec.seed
    top_k: int = 40
    # >1 makes tokens of the last 64 less likely: what stops a small model's ".0.0.0.0" runs
    repeat_penalty: float = 1.15
    # structured replies: the schema's fixed text (keys, punctuation) is evaluated in batches
    # and only the values are sampled (utils.llm_integration.fixed_text); False: the whole
    # reply is sampled under one grammar, token by token
    fixed_text: bool = True
