"""Our local model as an AutoGen ``ChatCompletionClient`` that is also a declarative ``Component``.

A plain ``autogen_agentchat`` ``AssistantAgent`` can run on a local GGUF model from a YAML
file alone::

    import yaml
    from autogen_agentchat.agents import AssistantAgent
    from utils.llm_integration.components import load_llm_config

    client = load_llm_config("configs/autogen/local_llm.yaml")   # provider checked first
    agent = AssistantAgent("analyst", model_client=client, output_content_type=MyReport)

``ChatCompletionClient.load_component(yaml.safe_load(open(path)))`` works too, but it imports
whatever module a config names; :func:`load_llm_config` checks the ``provider`` (and nested
ones) against :data:`~utils.llm_integration.components.ALLOWED_PROVIDERS` before anything is
imported. Replay from recorded replies is a wrapper client:
:class:`~utils.llm_integration.response_cache.ResponseCacheClient`.

What the client states in ``model_info``: no vision, no function calling, JSON output and
structured output yes (constrained decoding from the pydantic model's JSON schema).

``model_path`` in a config may be absolute, relative to the working directory, or
``pkg://<distribution>/<file>`` for a GGUF shipped inside an installed Python package.

To use ``python -m llama_cpp.server`` instead, see :meth:`AutoGenLLMConfig.openai_server`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from autogen_core import CancellationToken, Component, ComponentModel
from autogen_core.models import CreateResult, LLMMessage
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel, ConfigDict, Field

from utils.llm_integration.client_base import (
    BaseChatClient,
    call_sampling,
    output_schema,
    replay_blob,
    to_chat_messages,
)
from utils.llm_integration.components import CLIENT_PROVIDER, OPENAI_PROVIDER
from utils.llm_integration.errors import LLMError
from utils.llm_integration.files import atomic_write_text
from utils.llm_integration.loaded_model import LocalLLM, get_local_llm
from utils.llm_integration.spec import ChatFormat, LLMSpec, SamplingParams

_EXTRA_ARGS = {"max_tokens", "temperature", "top_p", "top_k", "repeat_penalty", "seed", "deadline_s"}


class LocalLlamaConfig(BaseModel):
    """Declarative config of :class:`LocalLlamaChatCompletionClient` (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    model_path: str = Field(description="GGUF path, or pkg://<distribution>/<file> inside a package.")
    model_name: str = ""
    # defaults: LLMSpec's and SamplingParams' (declared once, in utils.llm_integration.spec)
    n_ctx: int = Field(LLMSpec.n_ctx, ge=256)
    n_threads: Annotated[int, Field(ge=1)] | Literal["auto"] | None = LLMSpec.n_threads
    n_batch: int = Field(LLMSpec.n_batch, ge=8)
    use_mmap: bool = LLMSpec.use_mmap
    use_mlock: bool = LLMSpec.use_mlock
    seed: int = Field(LLMSpec.seed, ge=0)
    chat_format: ChatFormat = LLMSpec.chat_format
    ram_cache_mb: int = Field(LLMSpec.ram_cache_mb, ge=0)
    n_gpu_layers: int = Field(LLMSpec.n_gpu_layers, ge=-1, description="Layers on the GPU; -1: all, 0: none.")
    main_gpu: int | None = Field(
        LLMSpec.main_gpu, ge=0, description="Whole offload on this GPU; null: split."
    )
    tensor_split: list[float] | None = Field(None, description="Share of the layers per GPU.")
    max_tokens: int = Field(SamplingParams.max_tokens, ge=1)
    temperature: float = Field(SamplingParams.temperature, ge=0.0, le=2.0)
    top_p: float = Field(SamplingParams.top_p, gt=0.0, le=1.0)
    top_k: int = Field(SamplingParams.top_k, ge=0)
    repeat_penalty: float = Field(SamplingParams.repeat_penalty, ge=1.0, le=2.0)
    fixed_text: bool = Field(
        SamplingParams.fixed_text,
        description="Evaluate a reply's fixed JSON text in batches, sample only values.",
    )
    family: str = "unknown"
    allowed_dir: str | None = Field(None, description="If set, the model file must resolve inside it.")
    state_dir: str | None = Field(
        None, description="Where measured thread counts and file digests are kept; null: not kept."
    )


def resolve_model_path(model_path: str, allowed_dir: str | Path | None = None) -> Path:
    """Resolve ``model_path`` (absolute, relative, or ``pkg://dist/file``), confined to ``allowed_dir``."""
    if model_path.startswith("pkg://"):
        dist_name, _, file_name = model_path[len("pkg://") :].partition("/")
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            raise LLMError(
                f"package {dist_name} holding {file_name} is not installed; run `make install`"
            ) from None
        for f in dist.files or []:
            if f.name == file_name or str(f) == file_name:
                return Path(str(dist.locate_file(f))).resolve()
        raise LLMError(f"package {dist_name} has no file {file_name}")
    path = Path(model_path).expanduser()
    if allowed_dir is not None:
        base = Path(allowed_dir).expanduser().resolve()
        full = (base / path).resolve() if not path.is_absolute() else path.resolve()
        if not full.is_relative_to(base):
            raise LLMError(
                f"model path {model_path} escapes the models folder {base}; put the file inside it"
            )
        return full
    return path.resolve()


class LocalLlamaChatCompletionClient(BaseChatClient, Component[LocalLlamaConfig]):
    """AutoGen model client over :class:`LocalLLM`: ``create``, real ``create_stream``, token counts.

    ``extra_create_args`` accepts ``max_tokens``, ``temperature``, ``top_p``, ``seed`` and
    ``deadline_s`` (seconds from now; generation stops there). A cancellation token stops
    generation between tokens. ``last_metrics`` holds the :class:`CallMetrics` of the last call.
    """

    component_type = "model"
    component_config_schema = LocalLlamaConfig
    component_provider_override = CLIENT_PROVIDER

    def __init__(self, config: LocalLlamaConfig | None = None, /, **kwargs: Any) -> None:
        self._config = config if config is not None else LocalLlamaConfig(**kwargs)
        cfg = self._config
        path = resolve_model_path(cfg.model_path, cfg.allowed_dir)
        self._spec = LLMSpec(
            path=path,
            name=cfg.model_name or path.stem,
            n_ctx=cfg.n_ctx,
            n_threads=cfg.n_threads,
            n_batch=cfg.n_batch,
            use_mmap=cfg.use_mmap,
            use_mlock=cfg.use_mlock,
            seed=cfg.seed,
            chat_format=cfg.chat_format,
            ram_cache_mb=cfg.ram_cache_mb,
            n_gpu_layers=cfg.n_gpu_layers,
            main_gpu=cfg.main_gpu,
            tensor_split=tuple(cfg.tensor_split) if cfg.tensor_split else None,
        )
        self.family = self._config.family

    # -- component ----------------------------------------------------------------------------

    def _to_config(self) -> LocalLlamaConfig:
        return self._config.model_copy()

    @classmethod
    def _from_config(cls, config: LocalLlamaConfig) -> Self:
        return cls(config)

    # -- properties -----------------------------------------------------------------------------

    @property
    def llm(self) -> LocalLLM:
        """The shared model behind this client (loaded on first use)."""
        state = self._config.state_dir
        return get_local_llm(self._spec, hash_cache_dir=Path(state).expanduser() if state else None)

    @property
    def spec(self) -> LLMSpec:
        return self._spec

    @property
    def config(self) -> LocalLlamaConfig:
        return self._config

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()) -> int:
        """Prompt tokens with the model's real tokenizer and chat template."""
        return self.llm.count_tokens(to_chat_messages(messages))

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()
    ) -> int:
        return max(0, self._spec.n_ctx - self.count_tokens(messages, tools=tools))

    # -- calls ------------------------------------------------------------------------------------

    def _prepare(
        self,
        tools: Sequence[Tool | ToolSchema],
        json_output: bool | type[BaseModel] | None,
        extra_create_args: Mapping[str, Any],
    ) -> tuple[type[BaseModel] | None, bool, SamplingParams, float | None]:
        if tools:
            raise ValueError(
                f"{self._spec.display_name} has no function calling; use structured output instead"
            )
        sampling = call_sampling(
            self._config, extra_create_args, _EXTRA_ARGS, fixed_text=self._config.fixed_text
        )
        deadline_s = extra_create_args.get("deadline_s")
        deadline = time.monotonic() + float(deadline_s) if deadline_s is not None else None
        schema = json_output if isinstance(json_output, type) and issubclass(json_output, BaseModel) else None
        json_mode = json_output is True
        return schema, json_mode, sampling, deadline

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        """Yield text pieces as llama.cpp produces them, then one :class:`CreateResult`."""
        schema, json_mode, sampling, deadline = self._prepare(tools, json_output, extra_create_args)
        chat = to_chat_messages(messages)
        self._begin()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()
        if cancellation_token is not None:
            cancellation_token.add_callback(cancel.set)

        def work() -> None:
            try:
                completion = self.llm.complete(
                    chat,
                    schema=schema,
                    json_mode=json_mode,
                    sampling=sampling,
                    on_text=lambda piece: loop.call_soon_threadsafe(queue.put_nowait, ("text", piece)),
                    deadline=deadline,
                    cancel=cancel,
                )
                loop.call_soon_threadsafe(queue.put_nowait, ("done", completion))
            except BaseException as exc:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        worker = loop.run_in_executor(None, work)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "text":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    yield self._finish(value.text, value.metrics, None, value.prompt)
                    break
        finally:
            cancel.set()  # stops generation if the consumer went away early
            await asyncio.shield(worker)

    def replay_key(
        self,
        messages: Sequence[LLMMessage],
        *,
        json_output: bool | type[BaseModel] | None,
        extra_create_args: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The one key rule (:func:`~utils.llm_integration.client_base.replay_blob`) with the
        model file's sha256: what a ``serve`` server on the same file records too."""
        _, _, sampling, _ = self._prepare((), json_output, extra_create_args)
        _, schema_json = output_schema(json_output)
        return replay_blob(self.llm.sha256, to_chat_messages(messages), sampling, schema_json)

    async def close(self) -> None:
        """Nothing to release: the loaded model is shared by the process (``release_all``)."""


class AutoGenLLMConfig:
    """Builds declarative configs that ``ChatCompletionClient.load_component`` and
    :func:`load_llm_config` accept."""

    @staticmethod
    def local(model_path: str | Path, **options: Any) -> dict[str, Any]:
        """Config of a :class:`LocalLlamaChatCompletionClient` (options: :class:`LocalLlamaConfig` fields)."""
        cfg = LocalLlamaConfig(model_path=str(model_path), **options)
        return ComponentModel(
            provider=CLIENT_PROVIDER,
            component_type="model",
            version=1,
            component_version=1,
            description="Local GGUF model through llama.cpp",
            label="LocalLlamaChatCompletionClient",
            config=cfg.model_dump(exclude_none=True),
        ).model_dump(exclude_none=True)

    @staticmethod
    def openai_server(
        base_url: str = "http://127.0.0.1:8000/v1", model: str = "local-gguf", family: str = "unknown"
    ) -> dict[str, Any]:
        """Config for AutoGen's OpenAI client against ``python -m llama_cpp.server``.

        Start the server with ``python -m llama_cpp.server --model FILE.gguf --chat_format chatml``
        and install ``autogen-ext[openai]``. The server keeps one model with a global lock.
        """
        return {
            "provider": OPENAI_PROVIDER,
            "component_type": "model",
            "config": {
                "model": model,
                "base_url": base_url,
                "api_key": "not-needed",
                "model_info": {
                    "vision": False,
                    "function_calling": False,
                    "json_output": True,
                    "structured_output": True,
                    "family": family,
                },
            },
        }

    @staticmethod
    def write_yaml(config: Mapping[str, Any], path: Path) -> None:
        """Write a config as YAML, atomically."""
        atomic_write_text(Path(path), yaml.safe_dump(dict(config), sort_keys=False))
