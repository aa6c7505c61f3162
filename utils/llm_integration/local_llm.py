"""Local GGUF models through llama.cpp (llama-cpp-python), shared safely by several agents.

One :class:`LocalLLM` per model file and settings per process (:func:`get_local_llm`):
the model is loaded lazily on first use and every call holds its lock, because a
llama.cpp context is not thread-safe. What a call gives back is a :class:`Completion`
with the text, the parsed object for structured output, and :class:`CallMetrics`.

Chat formatting
    ``gguf``: the GGUF's own Jinja chat template (SmolLM2 and most recent models).
    ``mistral-instruct-system``: Mistral/Mixtral ``[INST]`` format with the system message
    folded into the first user turn and consecutive same-role turns merged (llama-cpp-python's
    ``mistral-instruct`` format silently drops system messages).
    ``zephyr``: TinyLlama-Chat.  ``chatml``: ``<|im_start|>`` models without a template.

Structured output
    A pydantic model becomes a JSON schema becomes a llama.cpp grammar, so the reply is
    always JSON of that shape. If generation stops at ``max_tokens`` before the object is
    complete, :class:`OutputTruncatedError` is raised; nothing is ever parsed into a default.

Prefix reuse
    llama.cpp keeps the KV cache of the previous prompt and re-evaluates only the tokens after
    the longest common prefix; a RAM state cache (``ram_cache_mb``) keeps earlier prompts'
    states too, so agents whose prompts start with the same static instructions share them.
    ``CallMetrics.cached_prompt_tokens`` counts the prompt tokens that were not evaluated.

Replay
    :class:`ResponseCache` (SQLite) keys a reply by model sha256, the full prompt, sampling
    parameters and schema; with it a rerun returns identical replies without calling the model.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

ChatFormat = Literal["gguf", "mistral-instruct-system", "zephyr", "chatml"]
Message = Mapping[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


class LLMError(Exception):
    """Base of every error raised by this layer (the CLI maps it to exit code 3)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelLoadError(LLMError):
    """The GGUF file could not be loaded."""


class OutputTruncatedError(LLMError):
    """Generation hit ``max_tokens`` before the structured object was complete."""


class InvalidOutputError(LLMError):
    """The reply is not valid for its schema (for example a value out of range)."""


class DeadlineExceededError(LLMError):
    """Generation was stopped because the call's deadline passed."""

    def __init__(self, message: str, partial_text: str = "") -> None:
        super().__init__(message)
        self.partial_text = partial_text


class GenerationCancelledError(LLMError):
    """Generation was stopped by its cancellation event."""


@dataclass(frozen=True)
class LLMSpec:
    """How to load one model. Frozen and hashable: equal specs share one loaded model."""

    path: Path
    name: str = ""
    n_ctx: int = 2048
    n_threads: int | None = None
    n_batch: int = 512
    use_mmap: bool = True
    use_mlock: bool = False
    seed: int = 42
    chat_format: ChatFormat = "gguf"
    ram_cache_mb: int = 256
    n_gpu_layers: int = 0  # -1: all (see utils.llm_integration.gpu)
    main_gpu: int | None = None
    tensor_split: tuple[float, ...] | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.path.stem


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; part of the response-cache key."""

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 0.95
    seed: int = 42


@dataclass
class CallMetrics:
    """What one call cost. Rates are 0 when there was nothing to measure."""

    model: str
    model_sha256: str
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    latency_s: float
    prompt_tokens_per_s: float
    gen_tokens_per_s: float
    finish_reason: str
    grammar: bool
    from_response_cache: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Completion:
    text: str
    metrics: CallMetrics
    parsed: BaseModel | None = None
    prompt: str = field(default="", repr=False)


def physical_cores() -> int:
    """Physical cores (llama.cpp runs best with one thread per physical core)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or unsupported platform
        n = None
    return max(1, n or os.cpu_count() or 1)


# --------------------------------------------------------------------------- loading


def llama_has_amx_kernels() -> bool:
    """True when the installed llama.cpp was compiled with AMX kernels.

    Those kernels crash (SIGSEGV in ``ggml_backend_amx_mul_mat``) on CPUs that advertise AMX
    inside VMs that do not grant it; ``make install`` builds without them.
    """
    import llama_cpp

    return "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode("utf-8", "ignore")


@contextlib.contextmanager
def llama_model_params_patch(**fields: Any) -> Iterator[None]:
    """Set ``llama_model_params`` fields that ``llama_cpp.Llama`` has no argument for.

    ``Llama.__init__`` builds its params from ``llama_model_default_params()``; inside this
    block that function returns params with ``fields`` applied. Callers hold a load lock.
    """
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def patched() -> Any:
        params = original()
        for key, value in fields.items():
            setattr(params, key, value)
        return params

    lib.llama_model_default_params = patched
    try:
        yield
    finally:
        lib.llama_model_default_params = original


def ram_state_cache(capacity_bytes: int) -> Any:
    """A ``LlamaRAMCache`` that counts what a saved state really holds.

    llama-cpp-python counts only the KV bytes of a state, but each one also copies the logits
    buffer (about 100 MB for a 49k vocabulary), so its capacity let memory grow far past the
    setting. Counting scores and input ids keeps resident memory within ``capacity_bytes``.
    """
    from llama_cpp import LlamaRAMCache

    class _HonestRAMCache(LlamaRAMCache):
        @property
        def cache_size(self) -> int:
            return sum(
                s.llama_state_size + s.scores.nbytes + s.input_ids.nbytes for s in self.cache_state.values()
            )

    return _HonestRAMCache(capacity_bytes=capacity_bytes)


# llama-cpp-python silences llama.cpp by swapping the process's stdout/stderr (sys.stdout and
# fds 1 and 2) around model loads; two such sections overlapping in threads leave the swap in
# place for good, and the CLI's output with it. Every such section in this process holds this.
_STDIO_LOCK = threading.Lock()
_LOOSE_CHAR_RULE = 'char ::= [^"\\\\] |'
_STRICT_CHAR_RULE = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def load_llama(path: Path, n_ctx: int, *, extra_buffers: bool | None = None, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(path, n_ctx=..., **kwargs)``, safe with a llama.cpp built with AMX.

    With AMX kernels compiled in, the extra buffer types (AMX and weight repacking) are turned
    off unless ``extra_buffers=True``; without them (our build) nothing changes.
    """
    import llama_cpp

    if extra_buffers is None:
        extra_buffers = not llama_has_amx_kernels()
    kwargs.setdefault("verbose", False)
    with _STDIO_LOCK, llama_model_params_patch(use_extra_bufts=extra_buffers):
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, **kwargs)


# --------------------------------------------------------------------------- chat formats


def merge_turns(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Fold system messages into the next user turn and merge consecutive same-role turns.

    The result alternates user/assistant, starting with user, as ``[INST]`` formats require.
    """
    system_parts: list[str] = []
    turns: list[dict[str, str]] = []
    for msg in messages:
        role, content = msg["role"], msg["content"]
        if role == "system":
            system_parts.append(content)
            continue
        if role not in ("user", "assistant"):
            raise ValueError(f"unsupported chat role {role!r}")
        if role == "user" and system_parts:
            content = "\n\n".join([*system_parts, content])
            system_parts = []
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + content
        else:
            turns.append({"role": role, "content": content})
    if system_parts:  # system text with no user turn after it
        turns.append({"role": "user", "content": "\n\n".join(system_parts)})
    if turns and turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": ""})
    return turns


def format_mistral_instruct(messages: Sequence[Message]) -> str:
    """``[INST] system\\n\\nuser [/INST] assistant</s>[INST] user [/INST]`` (BOS added by the tokenizer)."""
    out: list[str] = []
    for turn in merge_turns(messages):
        if turn["role"] == "user":
            out.append(f"[INST] {turn['content']} [/INST]")
        else:
            out.append(f" {turn['content']}</s>")
    return "".join(out)


def format_zephyr(messages: Sequence[Message]) -> str:
    parts = [f"<|{m['role']}|>\n{m['content']}</s>\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n"


def format_chatml(messages: Sequence[Message]) -> str:
    parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


_STOPS: dict[str, list[str]] = {
    "mistral-instruct-system": ["</s>", "[INST]"],
    "zephyr": ["</s>", "<|user|>"],
    "chatml": ["<|im_end|>", "<|im_start|>"],
}


# --------------------------------------------------------------------------- grammar schemas


def grammar_schema(schema: Mapping[str, Any], steps: int = 20) -> dict[str, Any]:
    """A copy of a JSON schema whose bounds llama.cpp's grammar can enforce while decoding.

    The grammar converter ignores ``minimum``/``maximum``, so bounds are rewritten into shapes
    it does enforce: a ``number`` bounded within a span of at most 1 becomes an ``enum`` of
    ``steps + 1`` evenly spaced values; a wider non-negative bounded number becomes a decimal
    string with as many integer digits as the bound (no ``inf``, no exponent); a bounded
    ``integer`` with a span of at most 100 becomes an ``enum``, a wider non-negative one a digit
    string. pydantic turns the strings back into numbers, and the original schema, not this
    one, validates the parsed reply.
    """

    def bound(node: Mapping[str, Any], *keys: str) -> float | None:
        values = [node[k] for k in keys if node.get(k) is not None]
        return values[0] if values else None

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, Mapping):
            return node
        out = {k: walk(v) for k, v in node.items()}
        kind = out.get("type")
        lo = bound(out, "minimum", "exclusiveMinimum")
        hi = bound(out, "maximum", "exclusiveMaximum")
        if kind == "number" and lo is not None and hi is not None and 0 < hi - lo <= 1:
            step = (hi - lo) / steps
            return {"enum": sorted({round(lo + i * step, 4) for i in range(steps + 1)})}
        if kind == "number" and lo is not None and lo >= 0 and hi is not None:
            digits = len(str(int(hi)))
            return {"type": "string", "pattern": f"^[0-9]{{1,{digits}}}([.][0-9]{{1,4}})?$"}
        if kind == "integer" and lo is not None and hi is not None and hi - lo <= 100:
            return {"enum": list(range(int(lo), int(hi) + 1))}
        if kind == "integer" and lo is not None and lo >= 0:
            digits = len(str(int(hi))) if hi is not None else 9
            return {"type": "string", "pattern": f"^[0-9]{{1,{digits}}}$"}
        return out

    return walk(dict(schema))


# --------------------------------------------------------------------------- model file hashing

_SHA_LOCK = threading.Lock()
_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def json_schema_grammar(schema_json: Mapping[str, Any]) -> Any:
    """The ``LlamaGrammar`` that constrains a reply to ``schema_json`` (bounded by
    :func:`grammar_schema`); not yet checked by llama.cpp (``LocalLLM`` does that once)."""
    from llama_cpp import LlamaGrammar

    grammar = LlamaGrammar.from_json_schema(json.dumps(grammar_schema(schema_json)), verbose=False)
    # llama-cpp-python's port lets raw control characters into JSON strings (llama.cpp's own
    # converter excludes them); strict JSON parsers, AutoGen's included, then reject the reply
    grammar._grammar = grammar._grammar.replace(_LOOSE_CHAR_RULE, _STRICT_CHAR_RULE)
    return grammar


def file_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """sha256 of a (possibly 26 GB) file, remembered by path, size and mtime.

    With ``cache_dir`` the digest is also kept in ``cache_dir/sha256.json`` across processes.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _SHA_LOCK:
        if key in _SHA_MEMO:
            return _SHA_MEMO[key]
        store = cache_dir / "sha256.json" if cache_dir else None
        saved: dict[str, str] = {}
        if store and store.is_file():
            with contextlib.suppress(OSError, ValueError):
                saved = json.loads(store.read_text())
        skey = "|".join(map(str, key))
        digest = saved.get(skey)
        if digest is None:
            h = hashlib.sha256()
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
            digest = h.hexdigest()
            if store:
                saved[skey] = digest
                with contextlib.suppress(OSError):
                    store.parent.mkdir(parents=True, exist_ok=True)
                    tmp = store.with_suffix(f".{os.getpid()}.tmp")
                    tmp.write_text(json.dumps(saved))
                    os.replace(tmp, store)
        _SHA_MEMO[key] = digest
        return digest


# --------------------------------------------------------------------------- response cache


class ResponseCache:
    """SQLite cache of model replies for exact replay.

    The key is the sha256 of (model sha256, full prompt, sampling parameters, schema).
    Safe for several threads and processes (WAL, one short transaction per write).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model_sha256 TEXT NOT NULL,"
            " text TEXT NOT NULL, metrics TEXT NOT NULL, created_at REAL NOT NULL)"
        )
        self._db.commit()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(
        model_sha256: str, prompt: str, sampling: SamplingParams, schema: Mapping[str, Any] | None
    ) -> str:
        blob = json.dumps(
            {"model": model_sha256, "prompt": prompt, "sampling": asdict(sampling), "schema": schema},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> tuple[str, dict[str, Any]] | None:
        with self._lock:
            row = self._db.execute("SELECT text, metrics FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return row[0], json.loads(row[1])

    def put(self, key: str, model_sha256: str, text: str, metrics: Mapping[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                (key, model_sha256, text, json.dumps(dict(metrics)), time.time()),
            )
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


# --------------------------------------------------------------------------- the model


class LocalLLM:
    """One GGUF model, loaded lazily, shared by every agent of the process.

    Thread-safe: calls are serialised by a lock. ``in_flight`` and ``waiting`` expose the
    queue to a router, and ``rates()`` the rolling prompt/generation speeds it estimates with.
    """

    def __init__(self, spec: LLMSpec, *, hash_cache_dir: Path | None = None) -> None:
        self.spec = spec
        self._hash_cache_dir = hash_cache_dir
        self._llama: Any = None
        self._load_lock = threading.Lock()
        self._call_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.in_flight = 0
        self.waiting = 0
        self.busy_since = 0.0  # time.monotonic() when the call in flight took the model
        self.calls = 0
        self._prompt_rate = 0.0  # tokens/s, exponential moving average
        self._gen_rate = 0.0
        self._formatter: Any = None
        self._grammars: dict[str, Any] = {}
        self._add_bos = True
        self._bos_text = ""

    # -- loading ---------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._llama is not None

    @property
    def llama(self) -> Any:
        """The ``llama_cpp.Llama`` instance (loads the model on first access)."""
        if self._llama is None:
            with self._load_lock:
                if self._llama is None:
                    self._llama = self._load()
        return self._llama

    def _load(self) -> Any:
        path = self.spec.path
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist; download it or fix the path")
        if path.stat().st_size == 0:
            raise ModelLoadError(f"model file {path} is empty; download it again")
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:  # pragma: no cover - install problem
            raise ModelLoadError(f"llama-cpp-python is not importable ({exc}); run `make install`") from None
        from utils.llm_integration.gpu import prepare_offload

        offload = prepare_offload(self.spec.n_gpu_layers, self.spec.main_gpu, self.spec.tensor_split)
        try:
            llama = load_llama(
                path,
                self.spec.n_ctx,
                n_threads=self.spec.n_threads or physical_cores(),
                n_batch=self.spec.n_batch,
                use_mmap=self.spec.use_mmap,
                use_mlock=self.spec.use_mlock,
                seed=self.spec.seed,
                **offload,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"llama.cpp could not load {path}: {exc}") from None
        if self.spec.ram_cache_mb > 0:
            llama.set_cache(ram_state_cache(self.spec.ram_cache_mb << 20))
        self._setup_format(llama)
        return llama

    def _setup_format(self, llama: Any) -> None:
        meta = llama.metadata
        self._add_bos = meta.get("tokenizer.ggml.add_bos_token", "true") != "false"
        bos_id = llama.token_bos()
        self._bos_text = (
            llama.detokenize([bos_id], special=True).decode("utf-8", "ignore") if bos_id >= 0 else ""
        )
        fmt = self.spec.chat_format
        if fmt == "gguf":
            template = meta.get("tokenizer.chat_template")
            name = (meta.get("general.name", "") + " " + self.spec.path.name).lower()
            if template is None and ("mixtral" in name or "mistral" in name):
                fmt = "mistral-instruct-system"
            elif template is None:
                fmt = "chatml"
            else:
                from llama_cpp.llama_chat_format import Jinja2ChatFormatter

                eos_id = llama.token_eos()
                eos_text = llama.detokenize([eos_id], special=True).decode("utf-8", "ignore")
                self._formatter = Jinja2ChatFormatter(
                    template=template,
                    eos_token=eos_text,
                    bos_token=self._bos_text,
                    add_generation_prompt=True,
                )
        self._format = fmt

    @property
    def chat_format(self) -> str:
        _ = self.llama
        return self._format

    @property
    def n_ctx(self) -> int:
        return self.spec.n_ctx

    @property
    def sha256(self) -> str:
        return file_sha256(self.spec.path, self._hash_cache_dir)

    # -- prompts and tokens ----------------------------------------------------------------

    def render(self, messages: Sequence[Message]) -> tuple[str, list[str]]:
        """The prompt text for ``messages`` and the stop strings of the chat format."""
        _ = self.llama
        if self._format == "mistral-instruct-system":
            return format_mistral_instruct(messages), _STOPS[self._format]
        if self._format == "zephyr":
            return format_zephyr(messages), _STOPS["zephyr"]
        if self._format == "chatml":
            return format_chatml(messages), _STOPS["chatml"]
        result = self._formatter(messages=[dict(m) for m in messages])
        stops = result.stop if isinstance(result.stop, list) else ([result.stop] if result.stop else [])
        return result.prompt, stops

    def tokenize(self, text: str) -> list[int]:
        """Tokens of ``text`` (BOS added unless the text starts with it). Needs no call lock:
        tokenizing only reads the vocabulary, so a router can count while a call runs."""
        llama = self.llama
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        return list(llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def cached_prefix(self, tokens: Sequence[int]) -> int:
        """How many leading ``tokens`` the KV cache holds from the last call (0 when not loaded)."""
        if self._llama is None:
            return 0
        llama = self._llama
        held = list(llama._input_ids[: llama.n_tokens])
        n = 0
        for a, b in zip(held, tokens, strict=False):
            if a != b:
                break
            n += 1
        return min(n, max(0, len(tokens) - 1))

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens for ``messages`` with the real tokenizer and chat template."""
        return len(self.tokenize(self.render(messages)[0]))

    def rates(self) -> tuple[float, float]:
        """Rolling (prompt tokens/s, reply tokens/s by the wall clock); 0 before the first call."""
        return self._prompt_rate, self._gen_rate

    # -- generation ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """Hold the model for one call, counting callers that wait for it."""
        with self._count_lock:
            self.waiting += 1
        try:
            self._call_lock.acquire()
        finally:
            with self._count_lock:
                self.waiting -= 1
        try:
            with self._count_lock:
                self.in_flight += 1
                self.busy_since = time.monotonic()
            yield
        finally:
            with self._count_lock:
                self.in_flight -= 1
            self._call_lock.release()

    def complete(
        self,
        messages: Sequence[Message],
        *,
        schema: type[BaseModel] | None = None,
        json_mode: bool = False,
        sampling: SamplingParams | None = None,
        on_text: Callable[[str], None] | None = None,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
        cache: ResponseCache | None = None,
    ) -> Completion:
        """Generate a reply to ``messages``.

        Args:
            schema: a pydantic model; the reply is grammar-constrained to its JSON schema,
                parsed and validated (``Completion.parsed``).
            json_mode: any JSON object (grammar-constrained), when no schema is given.
            sampling: max_tokens, temperature, top_p, seed (defaults: greedy, seed 42).
            on_text: called with each streamed piece of text.
            deadline: ``time.monotonic()`` value; generation stops there and
                :class:`DeadlineExceededError` is raised.
            cancel: an event; when set, generation stops and
                :class:`GenerationCancelledError` is raised.
            cache: a :class:`ResponseCache`; a hit returns the stored reply without generating.

        Raises:
            OutputTruncatedError: structured output cut by max_tokens.
            InvalidOutputError: the reply does not validate against ``schema``.
        """
        sampling = sampling or SamplingParams(seed=self.spec.seed)
        prompt, stops = self.render(messages)
        schema_json = schema.model_json_schema() if schema else ({"type": "object"} if json_mode else None)
        key = ResponseCache.key(self.sha256, prompt, sampling, schema_json) if cache else None
        if cache and key:
            hit = cache.get(key)
            if hit is not None:
                text, stored = hit
                metrics = CallMetrics(
                    **{**stored, "from_response_cache": True, "ttft_s": 0.0, "latency_s": 0.0}
                )
                if on_text:
                    on_text(text)
                return Completion(text, metrics, self._parse(text, schema, metrics), prompt)

        metrics, text = self._generate(prompt, stops, schema_json, sampling, on_text, deadline, cancel)
        parsed = self._parse(text, schema, metrics) if schema else None
        if json_mode and not schema:
            self._parse_json(text, metrics)
        if cache and key:
            cache.put(key, metrics.model_sha256, text, metrics.to_dict())
        return Completion(text, metrics, parsed, prompt)

    def _generate(
        self,
        prompt: str,
        stops: list[str],
        schema_json: Mapping[str, Any] | None,
        sampling: SamplingParams,
        on_text: Callable[[str], None] | None,
        deadline: float | None,
        cancel: threading.Event | None,
    ) -> tuple[CallMetrics, str]:
        from llama_cpp import llama_cpp

        grammar = self._grammar(schema_json) if schema_json else None
        tokens = self.tokenize(prompt)
        budget = self.spec.n_ctx - len(tokens)
        if budget < 1:
            raise LLMError(
                f"prompt of {len(tokens)} tokens does not fit {self.display} context of {self.spec.n_ctx};"
                " shorten the prompt or raise llm.n_ctx"
            )
        max_tokens = min(sampling.max_tokens, budget)
        pieces: list[str] = []
        finish = "stop"
        with self._slot():
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceededError(f"{self.display} passed its deadline waiting for the model")
            llama = self.llama
            llama_cpp.llama_perf_context_reset(llama._ctx.ctx)
            start = time.monotonic()
            ttft = 0.0
            n_gen = 0
            stream = llama.create_completion(
                tokens,
                max_tokens=max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=sampling.seed,
                stop=stops,
                grammar=grammar,
                stream=True,
            )
            try:
                for chunk in stream:
                    choice = chunk["choices"][0]
                    piece = choice.get("text", "")
                    if piece:
                        if not ttft:
                            ttft = time.monotonic() - start
                        pieces.append(piece)
                        if on_text:
                            on_text(piece)
                    n_gen += 1
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                    if cancel is not None and cancel.is_set():
                        raise GenerationCancelledError(f"generation on {self.display} was cancelled")
                    if deadline is not None and time.monotonic() > deadline:
                        raise DeadlineExceededError(
                            f"{self.display} passed its deadline after {n_gen} tokens", "".join(pieces)
                        )
            finally:
                stream.close()
            latency = time.monotonic() - start
            perf = llama_cpp.llama_perf_context(llama._ctx.ctx)
        evaluated = max(0, int(perf.n_p_eval))
        generated = max(n_gen, int(perf.n_eval))
        p_rate = perf.n_p_eval / (perf.t_p_eval_ms / 1e3) if perf.t_p_eval_ms > 0 else 0.0
        g_rate = perf.n_eval / (perf.t_eval_ms / 1e3) if perf.t_eval_ms > 0 else 0.0
        # the router plans with what a reply token really costs: sampling under a grammar and
        # streaming take as long as the forward pass on small models, and llama.cpp counts neither
        wall_rate = (generated - 1) / (latency - ttft) if generated > 1 and latency > ttft > 0 else 0.0
        self._update_rates(p_rate, wall_rate or g_rate)
        self.calls += 1
        metrics = CallMetrics(
            model=self.display,
            model_sha256=self.sha256,
            prompt_tokens=len(tokens),
            cached_prompt_tokens=max(0, len(tokens) - evaluated),
            completion_tokens=generated,
            ttft_s=round(ttft or latency, 4),
            latency_s=round(latency, 4),
            prompt_tokens_per_s=round(p_rate, 1),
            gen_tokens_per_s=round(g_rate, 1),
            finish_reason=finish,
            grammar=grammar is not None,
        )
        text = "".join(pieces)
        if grammar is not None and finish == "length":
            raise OutputTruncatedError(
                f"{self.display} hit max_tokens={max_tokens} before the JSON reply was complete;"
                " raise llm.max_tokens"
            )
        return metrics, text

    def _grammar(self, schema_json: Mapping[str, Any]) -> Any:
        """The llama.cpp grammar for a schema, checked once: a grammar llama.cpp cannot parse
        would crash the process when sampling starts, so it is refused here instead."""
        from llama_cpp import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr

        key = json.dumps(schema_json, sort_keys=True)
        cached = self._grammars.get(key)
        if cached is not None:
            return cached
        grammar = json_schema_grammar(schema_json)
        vocab = self.llama._model.vocab
        # llama.cpp prints the whole grammar on failure
        with _STDIO_LOCK, suppress_stdout_stderr(disable=False):
            probe = llama_cpp.llama_sampler_init_grammar(
                vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
            )
        if not probe:
            title = schema_json.get("title", "?")
            raise LLMError(f"llama.cpp rejected the grammar built from schema {title}")
        llama_cpp.llama_sampler_free(probe)
        self._grammars[key] = grammar
        return grammar

    def _update_rates(self, p_rate: float, g_rate: float, alpha: float = 0.3) -> None:
        if p_rate > 0:
            self._prompt_rate = (
                p_rate if not self._prompt_rate else (1 - alpha) * self._prompt_rate + alpha * p_rate
            )
        if g_rate > 0:
            self._gen_rate = g_rate if not self._gen_rate else (1 - alpha) * self._gen_rate + alpha * g_rate

    def _parse_json(self, text: str, metrics: CallMetrics) -> Any:
        try:
            return json.loads(text, strict=False)  # control characters inside strings are tolerated
        except json.JSONDecodeError as exc:
            if metrics.finish_reason == "length":
                raise OutputTruncatedError(f"{self.display} reply was cut at max_tokens: {exc}") from None
            raise InvalidOutputError(f"{self.display} reply is not JSON: {exc}") from None

    def _parse(self, text: str, schema: type[BaseModel] | None, metrics: CallMetrics) -> BaseModel | None:
        if schema is None:
            return None
        data = self._parse_json(text, metrics)
        try:
            return schema.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or schema.__name__
            raise InvalidOutputError(
                f"{self.display} reply failed {schema.__name__} validation at {where}: {first['msg']}"
            ) from None

    @property
    def display(self) -> str:
        return self.spec.display_name

    def close(self) -> None:
        """Free the model (the next call loads it again)."""
        with self._load_lock, self._call_lock:
            if self._llama is not None:
                with contextlib.suppress(Exception):
                    self._llama.close()
                self._llama = None


_REGISTRY: dict[LLMSpec, LocalLLM] = {}
_REGISTRY_LOCK = threading.Lock()


def get_local_llm(spec: LLMSpec, *, hash_cache_dir: Path | None = None) -> LocalLLM:
    """The process-wide :class:`LocalLLM` for ``spec`` (created on first request, loaded on first use)."""
    with _REGISTRY_LOCK:
        llm = _REGISTRY.get(spec)
        if llm is None:
            llm = _REGISTRY[spec] = LocalLLM(spec, hash_cache_dir=hash_cache_dir)
        return llm


def release_all() -> None:
    """Close every shared model (tests, long-running servers and interpreter exit use this)."""
    with _REGISTRY_LOCK:
        for llm in _REGISTRY.values():
            llm.close()
        _REGISTRY.clear()


# Closing models before interpreter teardown avoids llama-cpp-python's noisy Llama.__del__.
atexit.register(release_all)
