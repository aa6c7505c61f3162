"""A loaded GGUF model (llama.cpp through llama-cpp-python), shared safely by several agents.

One :class:`LocalLLM` per model spec per process (:func:`get_local_llm`): the model is loaded
lazily on first use and every call holds its lock, because a llama.cpp context is not
thread-safe. What a call gives back is a :class:`Completion` with the text, the parsed object
for structured output (see :mod:`utils.llm_integration.grammar`), and :class:`CallMetrics`.

Chat formatting
    ``gguf``: the GGUF's own Jinja chat template (SmolLM2 and most recent models); the fixed
    formats of :mod:`utils.llm_integration.chat_formats` otherwise.

Prefix reuse
    llama.cpp keeps the KV cache of the previous prompt and re-evaluates only the tokens after
    the longest common prefix; a RAM state cache (``ram_cache_mb``) keeps earlier prompts'
    states too, so agents whose prompts start with the same static instructions share them.
    A prompt that starts with the previous prompt and the reply generated to it (a reply
    quoted back as the assistant's turn) keeps that reply's tokens as they were generated:
    under a grammar they are often not the tokenizer's own split of the same text, and
    re-tokenizing would throw their KV cache away. ``CallMetrics.cached_prompt_tokens``
    counts the prompt tokens that were not evaluated.

Replay is not this module's business: :mod:`utils.llm_integration.response_cache` wraps a
model client.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from utils.llm_integration.chat_formats import FIXED_FORMATS, render_fixed
from utils.llm_integration.errors import (
    DeadlineExceededError,
    GenerationCancelledError,
    LLMError,
    ModelLoadError,
    OutputTruncatedError,
)
from utils.llm_integration.files import file_sha256
from utils.llm_integration.fixed_text import ReplyPlan, decode_planned, plan_fits, reply_plan
from utils.llm_integration.grammar import json_schema_grammar, parse_json_reply, parse_reply
from utils.llm_integration.spec import LLMSpec, Message, SamplingParams
from utils.llm_integration.threads import ThreadChoice, choose_threads, physical_cores


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
    # where the call's time went (seconds): llama.cpp's prompt evaluation and generation
    # forward passes, sampling (under a grammar: its checks), the RAM state cache's saves and
    # restores; the rest of latency_s is everything else (tokenizing, streaming, Python)
    prompt_eval_s: float = 0.0
    generation_s: float = 0.0
    sampling_s: float = 0.0
    cache_state_s: float = 0.0
    # of completion_tokens, those the schema fixed (keys, punctuation): evaluated in batches,
    # not sampled (see utils.llm_integration.fixed_text)
    fixed_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Completion:
    text: str
    metrics: CallMetrics
    parsed: BaseModel | None = None
    prompt: str = field(default="", repr=False)


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
STDIO_LOCK = threading.Lock()


def load_llama(path: Path, n_ctx: int, *, extra_buffers: bool | None = None, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(path, n_ctx=..., **kwargs)``, safe with a llama.cpp built with AMX, with
    grammar calls sampled by :class:`~utils.llm_integration.sampling.RejectionGrammarSampler`.

    With AMX kernels compiled in, the extra buffer types (AMX and weight repacking) are turned
    off unless ``extra_buffers=True``; without them (our build) nothing changes.
    """
    from utils.llm_integration.sampling import llama_class

    if extra_buffers is None:
        extra_buffers = not llama_has_amx_kernels()
    kwargs.setdefault("verbose", False)
    with STDIO_LOCK, llama_model_params_patch(use_extra_bufts=extra_buffers):
        return llama_class()(model_path=str(path), n_ctx=n_ctx, **kwargs)


class FifoLock:
    """A lock granted in the order it was asked for (``threading.Lock`` wakes waiters in any
    order), so the calls queued on one model are served first come, first served."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._tickets: deque[object] = deque()
        self._held = False

    def acquire(self, give_up: Callable[[], bool] | None = None, poll_s: float = 0.05) -> bool:
        """Wait for the lock; with ``give_up``, leave the queue (and return False) once it says so."""
        me = object()
        with self._cond:
            self._tickets.append(me)
            try:
                while self._held or self._tickets[0] is not me:
                    if give_up is not None and give_up():
                        self._tickets.remove(me)
                        self._cond.notify_all()
                        return False
                    self._cond.wait(poll_s if give_up is not None else None)
            except BaseException:  # interrupted while waiting: leave the queue
                if me in self._tickets:
                    self._tickets.remove(me)
                self._cond.notify_all()
                raise
            self._tickets.popleft()
            self._held = True
        return True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class LocalLLM:
    """One GGUF model, loaded lazily, shared by every agent of the process.

    Thread-safe: calls are serialised by a lock, in arrival order. ``in_flight`` and ``waiting``
    expose the queue to a router, and ``rates()`` the rolling prompt/generation speeds it estimates with.
    """

    def __init__(self, spec: LLMSpec, *, hash_cache_dir: Path | None = None) -> None:
        self.spec = spec
        self._hash_cache_dir = hash_cache_dir
        self._llama: Any = None
        self._load_lock = threading.Lock()
        self._call_lock = FifoLock()
        self._count_lock = threading.Lock()
        self.in_flight = 0
        self.waiting = 0
        self.busy_since = 0.0  # time.monotonic() when the call in flight took the model
        # What deadlines are compared with (a ``time.monotonic()`` value); tests swap in a clock
        # they control so that a deadline is passed after a known number of reads, on any machine.
        self.clock: Callable[[], float] = time.monotonic
        self.calls = 0
        self._prompt_rate = 0.0  # tokens/s, exponential moving average
        self._gen_rate = 0.0
        self._formatter: Any = None
        self._grammars: dict[str, Any] = {}
        self._plans: dict[str, ReplyPlan | None] = {}
        self._add_bos = True
        self._bos_text = ""
        self.threads: ThreadChoice | None = None  # set at load
        # the last call's prompt text plus reply text, and the tokens the KV cache holds for it
        self._kv_text = ""
        self._kv_tokens: list[int] = []

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
                n_threads=n if isinstance(n := self.spec.n_threads, int) else physical_cores(),
                n_batch=self.spec.n_batch,
                use_mmap=self.spec.use_mmap,
                use_mlock=self.spec.use_mlock,
                seed=self.spec.seed,
                **offload,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"llama.cpp could not load {path}: {exc}") from None
        sha = self.sha256 if self.spec.n_threads == "auto" else None
        self.threads = choose_threads(llama, self.spec.n_threads, sha, self._hash_cache_dir)
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
    def n_threads(self) -> int:
        """The thread count the loaded model runs with (``n_threads: auto`` resolved; loads it)."""
        _ = self.llama
        assert self.threads is not None
        return self.threads.n_threads

    @property
    def sha256(self) -> str:
        return file_sha256(self.spec.path, self._hash_cache_dir)

    # -- prompts and tokens ----------------------------------------------------------------

    def render(self, messages: Sequence[Message]) -> tuple[str, list[str]]:
        """The prompt text for ``messages`` and the stop strings of the chat format."""
        _ = self.llama
        if self._format in FIXED_FORMATS:
            return render_fixed(self._format, messages)
        result = self._formatter(messages=[dict(m) for m in messages])
        stops = result.stop if isinstance(result.stop, list) else ([result.stop] if result.stop else [])
        return result.prompt, stops

    def tokenize(self, text: str) -> list[int]:
        """Tokens of ``text`` (BOS added unless the text starts with it). Needs no call lock:
        tokenizing only reads the vocabulary, so a router can count while a call runs."""
        llama = self.llama
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        return list(llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def prompt_tokens(self, prompt: str) -> list[int]:
        """Tokens of a prompt to generate from: the previous call's prompt and reply tokens
        as they are in the KV cache when the prompt starts with their text, then the rest."""
        kv_text, kv_tokens = self._kv_text, self._kv_tokens
        if kv_text and prompt.startswith(kv_text):
            rest = prompt[len(kv_text) :]
            llama = self.llama
            return [*kv_tokens, *llama.tokenize(rest.encode("utf-8"), add_bos=False, special=True)]
        return self.tokenize(prompt)

    def _remember_reply(self, prompt: str, tokens: Sequence[int], text: str) -> None:
        """Keep the prompt and the reply tokens that spell ``text``, for :meth:`prompt_tokens`."""
        llama = self._llama
        self._kv_text, self._kv_tokens = "", []
        if llama is None or not text:
            return
        generated = list(llama._input_ids[len(tokens) : llama.n_tokens])
        if list(llama._input_ids[: len(tokens)]) != list(tokens):
            return
        spelled = b""
        want = text.encode("utf-8")
        for k, token in enumerate(generated, start=1):
            spelled += llama.piece(token)
            if spelled == want:
                self._kv_text, self._kv_tokens = prompt + text, [*tokens, *generated[:k]]
                return
            if not want.startswith(spelled):
                return

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
    def _slot(self, cancel: threading.Event | None = None, deadline: float | None = None) -> Iterator[None]:
        """Hold the model for one call, counting callers that wait for it. A call cancelled or
        past its deadline while it waits leaves the queue at once instead of taking its turn."""
        clock = self.clock

        def give_up() -> bool:
            return (cancel is not None and cancel.is_set()) or (deadline is not None and clock() >= deadline)

        with self._count_lock:
            self.waiting += 1
        try:
            got = self._call_lock.acquire(give_up if cancel is not None or deadline is not None else None)
        finally:
            with self._count_lock:
                self.waiting -= 1
        if not got:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelledError(f"generation on {self.display} was cancelled while queued")
            raise DeadlineExceededError(f"{self.display} passed its deadline waiting for the model")
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
    ) -> Completion:
        """Generate a reply to ``messages``.

        Args:
            schema: a pydantic model; the reply is grammar-constrained to its JSON schema,
                parsed and validated (``Completion.parsed``).
            json_mode: any JSON object (grammar-constrained), when no schema is given.
            sampling: max_tokens, temperature, top_p, top_k, repeat_penalty, seed (defaults:
                greedy with a repeat penalty, seed 42).
            on_text: called with each streamed piece of text.
            deadline: ``time.monotonic()`` value (read through ``self.clock``); generation stops there and
                :class:`DeadlineExceededError` is raised.
            cancel: an event; when set, generation stops and
                :class:`GenerationCancelledError` is raised.

        Raises:
            OutputTruncatedError: structured output cut by max_tokens.
            InvalidOutputError: the reply does not validate against ``schema``.
        """
        sampling = sampling or SamplingParams(seed=self.spec.seed)
        prompt, stops = self.render(messages)
        schema_json = schema.model_json_schema() if schema else ({"type": "object"} if json_mode else None)
        metrics, text = self._generate(prompt, stops, schema_json, sampling, on_text, deadline, cancel)
        if schema is not None:
            parsed = parse_reply(text, schema, finish_reason=metrics.finish_reason, model=self.display)
            return Completion(text, metrics, parsed, prompt)
        if json_mode:
            parse_json_reply(text, finish_reason=metrics.finish_reason, model=self.display)
        return Completion(text, metrics, None, prompt)

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

        clock = self.clock
        grammar = self.grammar(schema_json) if schema_json else None
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
        with self._slot(cancel, deadline):
            if deadline is not None and clock() >= deadline:
                raise DeadlineExceededError(f"{self.display} passed its deadline waiting for the model")
            if cancel is not None and cancel.is_set():
                raise GenerationCancelledError(f"generation on {self.display} was cancelled while queued")
            llama = self.llama
            tokens = self.prompt_tokens(prompt)  # under the lock: it reads what the KV holds
            max_tokens = max(1, min(sampling.max_tokens, self.spec.n_ctx - len(tokens)))
            llama_cpp.llama_perf_context_reset(llama._ctx.ctx)
            llama.reset_timings()
            start = time.monotonic()
            ttft = 0.0
            n_gen = 0
            plan = self.plan(schema_json) if schema_json and sampling.fixed_text else None
            if plan is not None and not llama.grammar_first:
                return self._generate_planned(
                    llama, prompt, tokens, plan, sampling, max_tokens, on_text, deadline, cancel
                )
            stream = llama.create_completion(
                tokens,
                max_tokens=max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                repeat_penalty=sampling.repeat_penalty,
                seed=sampling.seed,
                stop=stops,
                grammar=grammar,
                stream=True,
                stopping_criteria=_halt_criteria(cancel, deadline, self.clock),
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
                    if deadline is not None and clock() > deadline:
                        raise DeadlineExceededError(
                            f"{self.display} passed its deadline after {n_gen} tokens", "".join(pieces)
                        )
                # the halt criteria end the stream without a chunk while text is held back
                if cancel is not None and cancel.is_set():
                    raise GenerationCancelledError(f"generation on {self.display} was cancelled")
                if deadline is not None and clock() > deadline:
                    raise DeadlineExceededError(
                        f"{self.display} passed its deadline after {n_gen} tokens", "".join(pieces)
                    )
            finally:
                stream.close()
            latency = time.monotonic() - start
            perf = llama_cpp.llama_perf_context(llama._ctx.ctx)
            self._remember_reply(prompt, tokens, "".join(pieces))
        evaluated = max(0, int(perf.n_p_eval))
        generated = int(llama.timings["sampled"]) or max(n_gen, int(perf.n_eval))
        metrics = self._record_call(
            perf,
            llama.timings,
            prompt_tokens=len(tokens),
            cached_prompt_tokens=max(0, len(tokens) - evaluated),
            completion_tokens=generated,
            eval_tokens=generated,
            ttft=ttft,
            latency=latency,
            finish=finish,
            grammar=grammar is not None,
            max_tokens=max_tokens,
        )
        return metrics, "".join(pieces)

    def _generate_planned(
        self,
        llama: Any,
        prompt: str,
        tokens: list[int],
        plan: ReplyPlan,
        sampling: SamplingParams,
        max_tokens: int,
        on_text: Callable[[str], None] | None,
        deadline: float | None,
        cancel: threading.Event | None,
    ) -> tuple[CallMetrics, str]:
        """:meth:`_generate` for a schema with a :class:`ReplyPlan` (the caller holds the slot,
        has reset the counters and resolved ``max_tokens``)."""
        from llama_cpp import llama_cpp

        clock = self.clock

        start = time.monotonic()
        llama.set_seed(sampling.seed)
        decoded = decode_planned(
            llama,
            tokens,
            plan,
            self.grammar_text,
            {
                "temp": sampling.temperature,
                "top_p": sampling.top_p,
                "top_k": sampling.top_k,
                "repeat_penalty": sampling.repeat_penalty,
            },
            max_tokens=max_tokens,
            on_text=on_text,
            stopping_criteria=_halt_criteria(cancel, deadline, self.clock),
        )
        latency = time.monotonic() - start
        text = decoded.text
        if cancel is not None and cancel.is_set():
            raise GenerationCancelledError(f"generation on {self.display} was cancelled")
        if deadline is not None and clock() > deadline:
            raise DeadlineExceededError(
                f"{self.display} passed its deadline after {decoded.sampled} tokens", text
            )
        # the prompt and the whole reply: what the next prompt that quotes it starts with
        self._kv_text, self._kv_tokens = prompt + text, [*tokens, *decoded.tokens]
        metrics = self._record_call(
            llama_cpp.llama_perf_context(llama._ctx.ctx),
            llama.timings,
            prompt_tokens=len(tokens),
            cached_prompt_tokens=decoded.reused_prompt_tokens,
            # the reply's tokens, as usage counts them
            completion_tokens=decoded.sampled + decoded.fixed_tokens,
            eval_tokens=None,  # llama.cpp's own count: fixed text is evaluated in batches
            ttft=decoded.first_token_s,
            latency=latency,
            finish="length" if decoded.finish_reason == "length" else "stop",
            grammar=True,
            max_tokens=max_tokens,
            fixed_tokens=decoded.fixed_tokens,
        )
        return metrics, text

    def _record_call(
        self,
        perf: Any,
        timings: Mapping[str, float],
        *,
        prompt_tokens: int,
        cached_prompt_tokens: int,
        completion_tokens: int,
        eval_tokens: int | None,
        ttft: float,
        latency: float,
        finish: str,
        grammar: bool,
        max_tokens: int,
        fixed_tokens: int = 0,
    ) -> CallMetrics:
        """A finished call's :class:`CallMetrics` from llama.cpp's perf counters and the sampler's
        timings; updates the rolling rates the router plans with. ``eval_tokens``: the tokens the
        generation rate is over (None: llama.cpp's decode count). A structured reply cut at
        ``max_tokens`` raises :class:`OutputTruncatedError`."""
        prompt_s = perf.t_p_eval_ms / 1e3
        gen_s = perf.t_eval_ms / 1e3
        evaluated = max(0, int(perf.n_p_eval))
        decoded = eval_tokens if eval_tokens is not None else max(1, int(perf.n_eval))
        p_rate = evaluated / prompt_s if prompt_s > 0 else 0.0
        g_rate = decoded / gen_s if gen_s > 0 else 0.0
        # the router plans with what a reply token really costs: sampling under a grammar and
        # streaming take as long as the forward pass on small models, and llama.cpp counts neither
        n = completion_tokens
        wall_rate = (n - 1) / (latency - ttft) if n > 1 and latency > ttft > 0 else 0.0
        self._update_rates(p_rate, wall_rate or g_rate)
        self.calls += 1
        metrics = CallMetrics(
            model=self.display,
            model_sha256=self.sha256,
            prompt_tokens=prompt_tokens,
            cached_prompt_tokens=cached_prompt_tokens,
            completion_tokens=completion_tokens,
            ttft_s=round(ttft or latency, 4),
            latency_s=round(latency, 4),
            prompt_tokens_per_s=round(p_rate, 1),
            gen_tokens_per_s=round(g_rate, 1),
            finish_reason=finish,
            grammar=grammar,
            prompt_eval_s=round(prompt_s, 4),
            generation_s=round(gen_s, 4),
            sampling_s=round(timings["sampling_s"], 4),
            cache_state_s=round(timings["cache_state_s"], 4),
            fixed_tokens=fixed_tokens,
        )
        if grammar and finish == "length":
            raise OutputTruncatedError(
                f"{self.display} hit max_tokens={max_tokens} before the JSON reply was complete;"
                " raise llm.max_tokens"
            )
        return metrics

    def plan(self, schema_json: Mapping[str, Any]) -> ReplyPlan | None:
        """The :class:`ReplyPlan` of a schema (None: decoded whole), built once per schema."""
        key = json.dumps(schema_json, sort_keys=True)
        if key not in self._plans:
            plan = reply_plan(schema_json)
            self._plans[key] = plan if plan is not None and plan_fits(plan, self.llama) else None
        return self._plans[key]

    def grammar_text(self, text: str) -> Any:
        """The llama.cpp grammar of GBNF ``text``, checked once (see :meth:`grammar`)."""
        from llama_cpp import LlamaGrammar

        cached = self._grammars.get(text)
        if cached is None:
            cached = self._checked(LlamaGrammar.from_string(text, verbose=False), "a reply value")
            self._grammars[text] = cached
        return cached

    def grammar(self, schema_json: Mapping[str, Any]) -> Any:
        """The llama.cpp grammar for a schema, checked once: a grammar llama.cpp cannot parse
        would crash the process when sampling starts, so it is refused here instead."""
        key = json.dumps(schema_json, sort_keys=True)
        cached = self._grammars.get(key)
        if cached is not None:
            return cached
        grammar = self._checked(json_schema_grammar(schema_json), f"schema {schema_json.get('title', '?')}")
        self._grammars[key] = grammar
        return grammar

    def _checked(self, grammar: Any, what: str) -> Any:
        from llama_cpp import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr

        vocab = self.llama._model.vocab
        # llama.cpp prints the whole grammar on failure
        with STDIO_LOCK, suppress_stdout_stderr(disable=False):
            probe = llama_cpp.llama_sampler_init_grammar(
                vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
            )
        if not probe:
            raise LLMError(f"llama.cpp rejected the grammar built from {what}")
        llama_cpp.llama_sampler_free(probe)
        return grammar

    def _update_rates(self, p_rate: float, g_rate: float, alpha: float = 0.3) -> None:
        if p_rate > 0:
            self._prompt_rate = (
                p_rate if not self._prompt_rate else (1 - alpha) * self._prompt_rate + alpha * p_rate
            )
        if g_rate > 0:
            self._gen_rate = g_rate if not self._gen_rate else (1 - alpha) * self._gen_rate + alpha * g_rate

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


def _halt_criteria(
    cancel: threading.Event | None, deadline: float | None, clock: Callable[[], float] = time.monotonic
) -> Any:
    """llama.cpp stopping criteria checked after every token: a cancellation or a deadline stops
    generation even while llama-cpp-python holds text back (a partial UTF-8 character or a
    possible stop string) and so yields no chunk to check between."""
    if cancel is None and deadline is None:
        return None
    from llama_cpp import StoppingCriteriaList

    def halt(_ids: Any, _logits: Any) -> bool:
        late = deadline is not None and clock() > deadline
        return late or (cancel is not None and cancel.is_set())

    return StoppingCriteriaList([halt])


_REGISTRY: dict[LLMSpec, LocalLLM] = {}
_REGISTRY_LOCK = threading.Lock()


def get_local_llm(spec: LLMSpec, *, hash_cache_dir: Path | None = None) -> LocalLLM:
    """The process-wide :class:`LocalLLM` for ``spec`` (created on first request, loaded on first use)."""
    with _REGISTRY_LOCK:
        llm = _REGISTRY.get(spec)
        if llm is None:
            llm = _REGISTRY[spec] = LocalLLM(spec, hash_cache_dir=hash_cache_dir)
        return llm


def loaded_models() -> list[LocalLLM]:
    """The shared models of this process that are loaded now."""
    with _REGISTRY_LOCK:
        return [llm for llm in _REGISTRY.values() if llm.loaded]


def release_all() -> None:
    """Close every shared model (tests, long-running servers and interpreter exit use this)."""
    with _REGISTRY_LOCK:
        for llm in _REGISTRY.values():
            llm.close()
        _REGISTRY.clear()


# Closing models before interpreter teardown avoids llama-cpp-python's noisy Llama.__del__.
atexit.register(release_all)
