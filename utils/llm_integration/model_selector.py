"""Pick the primary or the fallback model per call, from signals measured here, and say why.

On a CPU server the primary (Mixtral) takes tens of seconds per decision at best. When the
machine is busy, the primary's queue is long, or a call has a deadline the primary cannot
meet, :class:`ModelSelectorClient` answers with the small fallback (TinyLlama) instead and
records a :class:`Route` with one of these reasons:

``primary``   the primary served (or the role may not fall back).
``queue``     the primary already has ``max_in_flight + max_queue`` requests in flight or waiting.
``deadline``  the estimated primary latency (queue wait + uncached prompt / prompt rate +
              expected reply tokens / generation rate) leaves no time for the fallback before the
              call's deadline, or the primary was cut mid-generation to leave that time.
``pressure``  the machine is overloaded (runnable tasks per core, available memory; with
              hysteresis), or the primary's file plus KV cache does not fit in available RAM
              (then it is never loaded).
``cooldown``  the primary failed ``failure_threshold`` times in a row and is benched for
              ``cooldown_s`` (after that, one more failure benches it again; a success resets).
``context``   prompt + ``max_tokens`` does not fit the primary's context but fits the fallback's.
``error``     the primary failed on this call (load error, out of memory, timeout, llama.cpp error).

Failure counts, the bench and the pressure state are shared by every selector of the process
that has the same primary (the desk's three roles see one bench). A role with
``may_fall_back=False`` always uses the primary; when no model can answer, an
:class:`~utils.llm_integration.errors.LLMError` is raised (the desk fails closed).

The whole arrangement is one declarative AutoGen component::

    client = load_llm_config("configs/autogen/selector.yaml")      # providers checked first
    again = ChatCompletionClient.load_component(client.dump_component())

Machine load: the 1-minute load average reacts in minutes, so the decision uses the number of
runnable tasks sampled from ``/proc/loadavg`` at each call, minus this process's own running
threads (our own model work is the ``queue`` signal's business), smoothed with a 2-second
exponential moving average. The 1-minute figure is reported alongside.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from autogen_core import CancellationToken, Component
from autogen_core.models import (
    CreateResult,
    LLMMessage,
    ModelCapabilities,  # type: ignore[attr-defined]
    ModelInfo,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel, ConfigDict

from utils.llm_integration.autogen_client import LocalLlamaChatCompletionClient
from utils.llm_integration.client_base import BaseChatClient, Route, to_chat_messages
from utils.llm_integration.components import (
    CLIENT_PROVIDER,
    ENDPOINT_PROVIDER,
    SELECTOR_PROVIDER,
    check_providers,
)
from utils.llm_integration.endpoint_client import EndpointChatCompletionClient
from utils.llm_integration.errors import (
    ContextOverflowError,
    DeadlineExceededError,
    GenerationCancelledError,
    InvalidOutputError,
    LLMError,
    OutputTruncatedError,
)
from utils.llm_integration.files import file_sha256
from utils.llm_integration.gguf_header import GGUFHeaderError, GGUFInfo, read_gguf_info
from utils.llm_integration.loaded_model import CallMetrics, LocalLLM
from utils.llm_integration.selector_limits import SelectorLimits
from utils.llm_integration.spec import LLMSpec

Reason = Literal["primary", "queue", "deadline", "pressure", "cooldown", "context", "error"]
REASONS: tuple[str, ...] = ("primary", "queue", "deadline", "pressure", "cooldown", "context", "error")

# Before either model has been measured, the primary may use this share of the time left.
UNMEASURED_PRIMARY_SHARE = 0.5
# Safety factor on the fallback's estimated latency when reserving time for it.
FALLBACK_MARGIN = 1.5
# The fallback's reserve is at least this share of the time left: the primary's cut is checked
# token by token and its reply still has to be parsed, so a reserve of a few milliseconds for a
# fast fallback would be eaten by that tail and the fallback cut in turn.
RESERVE_FLOOR_SHARE = 0.1
# Recent replies kept to estimate how many tokens a reply takes.
_HISTORY = 20


class _SelectorModels(BaseModel):
    """The models to choose between and the role served (a base so that they come first in dumps)."""

    primary: dict[str, Any]
    fallback: dict[str, Any] | None = None
    role: str = ""
    may_fall_back: bool = True


class SelectorConfig(SelectorLimits, _SelectorModels):
    """Declarative config of :class:`ModelSelectorClient` (unknown keys are errors).

    ``primary`` and ``fallback`` are :class:`LocalLlamaChatCompletionClient` component configs
    (``AutoGenLLMConfig.local(...)``); the other fields are the :class:`SelectorLimits` and mean
    what they mean in the ``selector:`` settings section.
    """

    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- machine load


@dataclass(frozen=True)
class MachineLoad:
    """One reading of the machine: runnable tasks per core (1-minute and now) and free memory."""

    cores: int
    load_per_core_1m: float
    load_per_core_now: float
    available_mb: float


class LoadProbe:
    """Measures machine load and memory; the instantaneous run queue is smoothed over ``tau_s``.

    ``load_per_core_now`` counts runnable tasks of *other* processes (``/proc/loadavg``'s
    running count minus this process's running threads) per logical CPU; where
    ``/proc/loadavg`` does not exist the 1-minute load average stands in.
    """

    def __init__(self, tau_s: float = 2.0) -> None:
        self.tau_s = tau_s
        self._lock = threading.Lock()
        self._smoothed: float | None = None
        self._at = 0.0

    def sample(self) -> MachineLoad:
        import psutil

        cores = os.cpu_count() or 1
        one_min = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        raw = _others_running()
        now_load = one_min if raw is None else raw
        with self._lock:
            t = time.monotonic()
            if self._smoothed is None:
                self._smoothed = now_load
            else:
                alpha = 1.0 - math.exp(-(t - self._at) / self.tau_s) if self.tau_s > 0 else 1.0
                self._smoothed += alpha * (now_load - self._smoothed)
            self._at = t
            smoothed = self._smoothed
        return MachineLoad(
            cores=cores,
            load_per_core_1m=round(one_min / cores, 3),
            load_per_core_now=round(smoothed / cores, 3),
            available_mb=round(psutil.virtual_memory().available / 2**20, 1),
        )


class FixedProbe(LoadProbe):
    """Replays one reading (so that a status reports one consistent sample)."""

    def __init__(self, load: MachineLoad) -> None:
        super().__init__()
        self._load = load

    def sample(self) -> MachineLoad:
        return self._load


def _others_running(reads: int = 3) -> float | None:
    """Mean runnable tasks on the machine not belonging to this process, or None off Linux."""
    try:
        total = 0
        for _ in range(reads):
            with open("/proc/loadavg", encoding="ascii") as fh:
                total += int(fh.read().split()[3].split("/")[0])
        return max(0.0, total / reads - _own_running())
    except (OSError, ValueError, IndexError):
        return None


def _own_running() -> int:
    """This process's threads in state R (the reading thread itself is one of them)."""
    count = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        state = stat[stat.rfind(")") + 2 : stat.rfind(")") + 3]
        count += state == "R"
    return max(1, count)


_DEFAULT_PROBE = LoadProbe()


def default_probe() -> LoadProbe:
    """The process-wide probe (one smoothing state per process)."""
    return _DEFAULT_PROBE


# --------------------------------------------------------------------------- RAM fit


def kv_bytes_per_token(path: Path) -> int | None:
    """f16 KV cache bytes per context token from the GGUF header, or None if it cannot tell.

    See :attr:`~utils.llm_integration.gguf_header.GGUFInfo.kv_bytes_per_token`. Only the header
    is read; a file whose tensor data is cut short still has a usable header.
    """
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _KV_MEMO:
        try:
            info: GGUFInfo | None = read_gguf_info(path)
        except GGUFHeaderError as exc:
            info = exc.info  # set when only the tensor data is missing
        _KV_MEMO[key] = info.kv_bytes_per_token if info else None
    return _KV_MEMO[key]


_KV_MEMO: dict[tuple[str, int, int], int | None] = {}


def ram_needed_mb(spec: LLMSpec) -> float | None:
    """File size plus KV cache for ``spec.n_ctx`` tokens, in MiB (None when the file is unreadable).

    With ``n_gpu_layers`` set, only what stays on the CPU counts: the weights and KV cache of
    the layers that this build and machine really offload live in GPU memory.
    """
    try:
        size = spec.path.stat().st_size
    except OSError:
        return None
    kv = kv_bytes_per_token(spec.path) or 0
    need = size + spec.n_ctx * kv
    if spec.n_gpu_layers:
        from utils.llm_integration.gpu import planned_offload

        plan = planned_offload(spec.path, spec.n_ctx, spec.n_gpu_layers, spec.main_gpu, spec.tensor_split)
        if plan is not None and plan.offloaded_layers:
            need = plan.cpu_bytes
    return round(need / 2**20, 1)


# --------------------------------------------------------------------------- shared primary health


@dataclass
class PrimaryHealth:
    """What all selectors sharing one primary know about it (guarded by ``lock``)."""

    failures: int = 0
    benched_until: float = 0.0
    last_error: str = ""
    in_pressure: bool = False
    active: int = 0  # calls routed to the primary and not finished yet
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    replies: dict[str, deque[int]] = field(default_factory=dict)  # reply tokens per reply kind
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def benched_for(self, now: float) -> float:
        return max(0.0, self.benched_until - now)

    def mean_latency(self) -> float | None:
        return sum(self.latencies) / len(self.latencies) if self.latencies else None

    def longest_reply(self, kind: str) -> int | None:
        """The longest of the recent replies of ``kind`` (call with ``lock`` held), or None."""
        recent = self.replies.get(kind)
        return max(recent) if recent else None

    def expected_reply_tokens(self, kind: str, cap: int) -> int | None:
        """Reply tokens to plan for: the longest recent reply of this kind (at most ``cap``,
        the call's max_tokens), or None before the model has given one.

        Structured replies are bounded by their schema and end long before max_tokens;
        planning with max_tokens would route nearly every call away from a slow primary.
        """
        with self.lock:
            recent = self.longest_reply(kind)
        return None if recent is None else min(cap, recent + 1)


def reply_kind(json_output: bool | type[BaseModel] | None) -> str:
    """What a reply's length depends on: its schema (a desk role's verdict, say) or free text.

    Reply lengths are remembered per kind, so a short order is not planned like a long report.
    """
    if isinstance(json_output, type):
        return f"schema:{json_output.__module__}.{json_output.__qualname__}"
    return "json" if json_output else "text"


_HEALTH: dict[LLMSpec | str, PrimaryHealth] = {}
_HEALTH_LOCK = threading.Lock()
_FALLBACK_STATS: dict[LLMSpec, PrimaryHealth] = {}


def primary_health(spec: LLMSpec | str) -> PrimaryHealth:
    """The process-wide health record of the primary loaded with ``spec`` (or of an endpoint's
    model, by its identity)."""
    with _HEALTH_LOCK:
        return _HEALTH.setdefault(spec, PrimaryHealth())


def _fallback_stats(spec: LLMSpec) -> PrimaryHealth:
    with _HEALTH_LOCK:
        return _FALLBACK_STATS.setdefault(spec, PrimaryHealth())


def reset_selector_state() -> None:
    """Forget failures, benches, pressure and latency history (tests and long-running servers)."""
    with _HEALTH_LOCK:
        _HEALTH.clear()
        _FALLBACK_STATS.clear()


# --------------------------------------------------------------------------- the client


@dataclass
class _Plan:
    route: Route
    use_primary: bool
    primary_deadline: float | None = None  # monotonic cut-off for the primary


def _is_failure(exc: BaseException) -> bool:
    """Errors that count against the primary (not the reply's validity, not a cancellation)."""
    if isinstance(
        exc, OutputTruncatedError | InvalidOutputError | GenerationCancelledError | ContextOverflowError
    ):
        return False
    return isinstance(exc, LLMError | MemoryError)


def load_local_client(config: Mapping[str, Any], what: str) -> LocalLlamaChatCompletionClient:
    """The local model client of a selector's ``primary`` or ``fallback`` config (providers checked)."""
    check_providers(config)
    if config.get("provider") != CLIENT_PROVIDER:
        raise LLMError(f"selector {what}: provider must be {CLIENT_PROVIDER}, not {config.get('provider')!r}")
    try:
        client = LocalLlamaChatCompletionClient.load_component(dict(config))
    except (ValueError, TypeError) as exc:
        raise LLMError(f"selector {what}: invalid model config: {str(exc).splitlines()[0]}") from None
    return client


def load_primary_client(
    config: Mapping[str, Any],
) -> LocalLlamaChatCompletionClient | EndpointChatCompletionClient:
    """The selector's primary: a local model, or a model behind an OpenAI-compatible endpoint."""
    if config.get("provider") != ENDPOINT_PROVIDER:
        return load_local_client(config, "primary")
    check_providers(config)
    try:
        return EndpointChatCompletionClient.load_component(dict(config))
    except (ValueError, TypeError) as exc:
        raise LLMError(f"selector primary: invalid endpoint config: {str(exc).splitlines()[0]}") from None


class ModelSelectorClient(BaseChatClient, Component[SelectorConfig]):
    """An AutoGen model client that routes each call to the primary or the fallback.

    Args:
        config: a :class:`SelectorConfig` (or its fields as keyword arguments).
        probe: what measures machine load (default: the process-wide :class:`LoadProbe`);
            anything with a ``sample() -> MachineLoad`` method.
        clock: what the cooldown is timed with (default ``time.monotonic``): a bench starts
            and ends on its readings, so a test can step through one without waiting.

    After each call ``last_route`` says who served and why, ``route_counts()`` counts the
    reasons, and ``last_metrics`` / ``last_prompt`` are the serving client's.
    ``extra_create_args`` are those of :class:`LocalLlamaChatCompletionClient`; ``deadline_s``
    defaults to the config's.
    """

    component_type = "model"
    component_config_schema = SelectorConfig
    component_provider_override = SELECTOR_PROVIDER

    def __init__(
        self,
        config: SelectorConfig | None = None,
        /,
        *,
        probe: LoadProbe | None = None,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        self._config = config if config is not None else SelectorConfig(**kwargs)
        cfg = self._config
        self._primary = load_primary_client(cfg.primary)
        # a primary behind an endpoint: no file, no tokenizer here, and this machine's load
        # does not slow it; it is judged by cooldown, its open requests and measured latency
        self._remote = isinstance(self._primary, EndpointChatCompletionClient)
        self._fallback = load_local_client(cfg.fallback, "fallback") if cfg.fallback is not None else None
        if self._fallback is not None and not self._fallback.spec.path.is_file():
            raise LLMError(
                f"fallback model file {self._fallback.spec.path} does not exist; download it"
                " (`trading-agents models download NAME`) or set fallback to null"
            )
        self._probe = probe or default_probe()
        self._clock = clock
        self._health = primary_health(
            self._primary.identity
            if isinstance(self._primary, EndpointChatCompletionClient)
            else self._primary.spec
        )
        self._counts: Counter[str] = Counter()
        self.last_route: Route | None = None
        self.last_metrics: CallMetrics | None = None
        self.last_prompt = ""

    # -- component ----------------------------------------------------------------------------

    def _to_config(self) -> SelectorConfig:
        return self._config.model_copy(deep=True)

    @classmethod
    def _from_config(cls, config: SelectorConfig) -> Self:
        return cls(config)

    # -- properties -----------------------------------------------------------------------------

    @property
    def config(self) -> SelectorConfig:
        return self._config

    @property
    def primary(self) -> LocalLlamaChatCompletionClient | EndpointChatCompletionClient:
        return self._primary

    @property
    def fallback(self) -> LocalLlamaChatCompletionClient | None:
        return self._fallback

    @property
    def health(self) -> PrimaryHealth:
        return self._health

    def replay_key(
        self,
        messages: Sequence[LLMMessage],
        *,
        json_output: bool | type[BaseModel] | None,
        extra_create_args: Mapping[str, Any],
    ) -> dict[str, Any]:
        """What shapes the reply: both models (file sha256 and config), the limits and role, the
        messages, the schema and the call's arguments. Which model served is part of the
        recorded reply, so a replay gives what was served whatever the machine's load now;
        nothing is loaded to compute it."""
        schema: Any = json_output
        if isinstance(json_output, type) and issubclass(json_output, BaseModel):
            schema = json_output.model_json_schema()
        return {
            "selector": self._config.model_dump(mode="json", exclude={"primary", "fallback"}),
            "primary": _model_identity(self._primary),
            "fallback": _model_identity(self._fallback) if self._fallback is not None else None,
            "messages": to_chat_messages(messages),
            "json_output": schema,
            "extra_create_args": dict(extra_create_args),
        }

    def route_counts(self) -> dict[str, int]:
        """Calls served per reason by this client (every reason present, zeros included)."""
        return {reason: self._counts.get(reason, 0) for reason in REASONS}

    @property
    def model_info(self) -> ModelInfo:
        """The weaker of the two models' capabilities."""
        infos = [self._primary.model_info] + ([self._fallback.model_info] if self._fallback else [])
        first = infos[0]
        return ModelInfo(
            vision=all(i["vision"] for i in infos),
            function_calling=all(i["function_calling"] for i in infos),
            json_output=all(i["json_output"] for i in infos),
            structured_output=all(i.get("structured_output", False) for i in infos),
            family=first["family"] if all(i["family"] == first["family"] for i in infos) else "unknown",
            multiple_system_messages=False,
        )

    @property
    def capabilities(self) -> ModelCapabilities:  # type: ignore[override]
        info = self.model_info
        return ModelCapabilities(  # type: ignore[typeddict-item]
            vision=info["vision"], function_calling=info["function_calling"], json_output=info["json_output"]
        )

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()) -> int:
        """The primary's prompt tokens for ``messages``."""
        return self._primary.count_tokens(messages, tools=tools)

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()
    ) -> int:
        return self._primary.remaining_tokens(messages, tools=tools)

    # -- routing ------------------------------------------------------------------------------

    def plan_now(self) -> Route:
        """The route a typical call would take now, from load, queue, bench and pressure only.

        Nothing is loaded; the prompt-dependent checks (context, deadline) are skipped.
        """
        return self._plan(None, 0, None, "text", dry=True).route

    def _cooldown_route(self, now: float) -> Route | None:
        """The fallback while the primary is benched after failures (hold the health lock)."""
        health = self._health
        if health.benched_for(now) <= 0:
            return None
        return Route(
            self._fallback_name,
            "cooldown",
            f"primary benched for {health.benched_for(now):.1f}s after {health.failures}"
            f" failures: {health.last_error}",
        )

    def _signals_route(self, now: float) -> Route | None:
        """Cooldown, pressure and queue checks; None when they leave the primary eligible.

        On None, one ``active`` slot is reserved on the primary (release it if routed away).
        """
        cfg, health = self._config, self._health
        if self._remote:
            with health.lock:
                if (benched := self._cooldown_route(now)) is not None:
                    return benched
                if health.active >= cfg.max_in_flight + cfg.max_queue:
                    return Route(
                        self._fallback_name,
                        "queue",
                        f"{health.active} requests on the primary"
                        f" (max {cfg.max_in_flight} in flight + {cfg.max_queue} queued)",
                    )
                health.active += 1
            return None
        llm = self._primary.llm  # type: ignore[union-attr]
        load = self._probe.sample()
        fit_detail = ""
        if not llm.loaded:
            need = ram_needed_mb(llm.spec)
            if need is not None and need + cfg.min_available_mb > load.available_mb:
                fit_detail = (
                    f"{llm.display} needs {need:.0f} MB (file + KV cache) + {cfg.min_available_mb} MB"
                    f" reserve, {load.available_mb:.0f} MB available"
                )
        with health.lock:
            if (benched := self._cooldown_route(now)) is not None:
                return benched
            if fit_detail:
                return Route(self._fallback_name, "pressure", fit_detail)
            limit_load = cfg.max_load_per_core * ((1 - cfg.hysteresis) if health.in_pressure else 1.0)
            limit_mem = cfg.min_available_mb * ((1 + cfg.hysteresis) if health.in_pressure else 1.0)
            health.in_pressure = load.load_per_core_now > limit_load or load.available_mb < limit_mem
            if health.in_pressure:
                return Route(
                    self._fallback_name,
                    "pressure",
                    f"load {load.load_per_core_now:.2f}/core (limit {limit_load:.2f}),"
                    f" {load.available_mb:.0f} MB available (min {limit_mem:.0f})",
                )
            busy = max(health.active, llm.in_flight + llm.waiting)
            if busy >= cfg.max_in_flight + cfg.max_queue:
                return Route(
                    self._fallback_name,
                    "queue",
                    f"{busy} requests on the primary"
                    f" (max {cfg.max_in_flight} in flight + {cfg.max_queue} queued)",
                )
            health.active += 1
        return None

    @property
    def _fallback_name(self) -> str:
        return self._fallback.spec.display_name if self._fallback else ""

    @property
    def _primary_name(self) -> str:
        if isinstance(self._primary, EndpointChatCompletionClient):
            return self._primary.config.model
        return self._primary.spec.display_name

    def _plan(
        self,
        chat: list[dict[str, str]] | None,
        max_tokens: int,
        deadline: float | None,
        kind: str,
        *,
        dry: bool = False,
    ) -> _Plan:
        """Choose the model for one call (runs in a worker thread: it may tokenize and load)."""
        cfg = self._config
        primary = Route(self._primary_name, "primary")
        if self._fallback is None or not cfg.may_fall_back:
            if self._fallback is not None:
                primary = Route(self._primary_name, "primary", f"role {cfg.role or '?'} may not fall back")
            return _Plan(primary, True, deadline)
        away = self._signals_route(self._clock())
        if away is not None:
            return _Plan(away, False)
        if dry or chat is None:
            with self._health.lock:
                self._health.active -= 1
            return _Plan(primary, True)
        try:
            plan = self._plan_prompt(chat, max_tokens, deadline, kind)
        except BaseException as exc:
            with self._health.lock:
                self._health.active -= 1
            if not _is_failure(exc):
                raise
            self._record_failure(exc)
            return _Plan(Route(self._fallback_name, "error", _one_line(exc)), False)
        if not plan.use_primary:
            with self._health.lock:
                self._health.active -= 1
        return plan

    def _plan_prompt(
        self, chat: list[dict[str, str]], max_tokens: int, deadline: float | None, kind: str
    ) -> _Plan:
        """Context and deadline checks for a primary that passed the load checks.

        With a deadline, the primary is chosen when its estimate fits the time left after the
        fallback's reserve, and is cut at that point if it runs late. Before the primary has
        answered a call of this kind there is no honest estimate, so it is tried: the cut-off
        and the reserve still guarantee the deadline, and the call measures what comes next.
        """
        if isinstance(self._primary, EndpointChatCompletionClient):
            return self._plan_remote(chat, deadline, kind)
        llm = self._primary.llm
        tokens = llm.tokenize(llm.render(chat)[0])  # loads the primary: ModelLoadError counts as a failure
        if len(tokens) + max_tokens > llm.n_ctx:
            assert self._fallback is not None
            fb = self._fallback.llm
            fb_tokens = len(fb.tokenize(fb.render(chat)[0]))
            fb_max = min(max_tokens, _max_tokens(self._fallback))
            if fb_tokens + fb_max > fb.n_ctx:
                raise ContextOverflowError(
                    f"the prompt ({len(tokens)} tokens) plus {max_tokens} reply tokens fits neither"
                    f" {llm.display} (context {llm.n_ctx}) nor {fb.display} (context {fb.n_ctx});"
                    " shorten the prompt or raise llm.n_ctx"
                )
            return _Plan(
                Route(
                    self._fallback_name,
                    "context",
                    f"{len(tokens)} prompt + {max_tokens} reply tokens exceed"
                    f" {llm.display}'s context {llm.n_ctx}",
                ),
                False,
            )
        if deadline is None:
            return _Plan(Route(self._primary_name, "primary"), True)
        now = time.monotonic()
        left = deadline - now
        reserve = self._fallback_reserve(len(tokens), left, kind)
        expected = self._health.expected_reply_tokens(kind, max_tokens)
        estimate = self._primary_estimate(llm, tokens, expected) if expected is not None else None
        return self._deadline_plan(now, left, reserve, estimate, "not yet measured for this reply")

    def _plan_remote(self, chat: list[dict[str, str]], deadline: float | None, kind: str) -> _Plan:
        """The deadline check for a primary behind an endpoint: its mean measured latency
        against the time left after the fallback's reserve; cut at that point if it runs late."""
        if deadline is None:
            return _Plan(Route(self._primary_name, "primary"), True)
        now = time.monotonic()
        left = deadline - now
        prompt_tokens = sum(len(m["content"]) for m in chat) // 4 + 1  # no tokenizer for the remote model
        reserve = self._fallback_reserve(prompt_tokens, left, kind)
        estimate = self._health.mean_latency() or None
        return self._deadline_plan(now, left, reserve, estimate, "not yet measured")

    def _deadline_plan(
        self, now: float, left: float, reserve: float, estimate: float | None, unmeasured: str
    ) -> _Plan:
        """The primary, cut ``reserve`` seconds before the deadline (``left`` seconds from
        ``now``), when its ``estimate`` fits that budget or there is none yet (the detail then
        starts with ``unmeasured``); else the fallback, for the deadline."""
        budget = left - reserve
        if budget <= 0 or (estimate is not None and estimate > budget):
            shown = f"{estimate:.2f}s" if estimate is not None else "unknown"
            return _Plan(
                Route(
                    self._fallback_name,
                    "deadline",
                    f"primary estimate {shown} > {budget:.2f}s left"
                    f" after reserving {reserve:.2f}s for the fallback",
                ),
                False,
            )
        detail = "" if estimate is not None else f"{unmeasured}; cut at {budget:.2f}s"
        return _Plan(Route(self._primary_name, "primary", detail), True, now + budget)

    def _primary_estimate(self, llm: LocalLLM, tokens: list[int], reply_tokens: int) -> float | None:
        """Seconds until the primary would finish this call, or None before any measurement."""
        p_rate, g_rate = llm.rates()
        health = self._health
        if g_rate <= 0:
            return None
        uncached = len(tokens) - llm.cached_prefix(tokens)
        prompt_s = uncached / p_rate if p_rate > 0 else 0.0
        reply_s = reply_tokens / g_rate
        per_call = health.mean_latency() or (prompt_s + reply_s)
        running = max(0.0, per_call - (time.monotonic() - llm.busy_since)) if llm.in_flight else 0.0
        return running + llm.waiting * per_call + prompt_s + reply_s

    def _fallback_reserve(self, prompt_tokens: int, left: float, kind: str) -> float:
        """Seconds kept for the fallback after the primary's cut-off.

        Before the fallback has answered, its rates are the primary's measured ones scaled by
        the ratio of the two files' sizes (CPU inference reads every weight per token, so its
        speed goes with the file size), and its reply as long as the primary's of that kind;
        with neither measured, the primary gets ``UNMEASURED_PRIMARY_SHARE`` of the time left.
        Reserving half the time for an unmeasured small fallback cut a primary that would have
        met the deadline on the first calls of every session.
        """
        assert self._fallback is not None
        fb = self._fallback.llm
        p_rate, g_rate = fb.rates()
        stats = _fallback_stats(fb.spec)
        if g_rate <= 0 or p_rate <= 0:
            p_rate, g_rate = self._scaled_primary_rates(fb.spec)
        if g_rate <= 0 or p_rate <= 0:
            return left * (1 - UNMEASURED_PRIMARY_SHARE)
        cap = _max_tokens(self._fallback)
        with stats.lock:
            recent = stats.longest_reply(kind)
            mean = stats.mean_latency()
        # a reply of this kind is about as long on either model: until the fallback has given
        # one, plan with the primary's, not with the fallback's max_tokens
        recent = recent or self._health.expected_reply_tokens(kind, cap) or cap
        own = prompt_tokens / p_rate + recent / g_rate
        wait = (fb.in_flight + fb.waiting) * (mean or own)
        return min(left, max(RESERVE_FLOOR_SHARE * left, FALLBACK_MARGIN * (own + wait)))

    def _scaled_primary_rates(self, fallback: LLMSpec) -> tuple[float, float]:
        """The primary's measured (prompt, reply) rates times primary size / fallback size;
        (0, 0) when the primary is unmeasured, behind an endpoint, or a file cannot be read."""
        if isinstance(self._primary, EndpointChatCompletionClient):
            return 0.0, 0.0
        primary = self._primary.llm
        p_rate, g_rate = primary.rates()
        try:
            ratio = primary.spec.path.stat().st_size / max(1, fallback.path.stat().st_size)
        except OSError:
            return 0.0, 0.0
        return p_rate * ratio, g_rate * ratio

    def _record_failure(self, exc: BaseException) -> None:
        cfg, health = self._config, self._health
        with health.lock:
            health.failures += 1
            health.last_error = _one_line(exc)
            if health.failures >= cfg.failure_threshold:
                health.benched_until = self._clock() + cfg.cooldown_s

    def _record_success(
        self, metrics: CallMetrics | None, stats: PrimaryHealth, primary: bool, kind: str
    ) -> None:
        with stats.lock:
            if primary:
                stats.failures = 0
                stats.benched_until = 0.0
                stats.last_error = ""
            if metrics is not None and not metrics.from_response_cache:
                stats.latencies.append(metrics.latency_s)
                stats.replies.setdefault(kind, deque(maxlen=_HISTORY)).append(metrics.completion_tokens)

    # -- calls ------------------------------------------------------------------------------------

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
        """Stream from the chosen model. If the primary is cut or fails mid-way, the fallback's
        stream follows the primary's partial text; the final :class:`CreateResult` is authoritative.
        """
        chat = to_chat_messages(messages)
        args = dict(extra_create_args)
        deadline_s = args.pop("deadline_s", self._config.deadline_s)
        deadline = time.monotonic() + float(deadline_s) if deadline_s is not None else None
        max_tokens = int(args.get("max_tokens", _max_tokens(self._primary)))
        kind = reply_kind(json_output)
        plan = await asyncio.to_thread(self._plan, chat, max_tokens, deadline, kind)
        route = plan.route
        call = {
            "tools": tools,
            "tool_choice": tool_choice,
            "json_output": json_output,
            "cancellation_token": cancellation_token,
        }
        if plan.use_primary:
            p_args = dict(args)
            if plan.primary_deadline is not None:
                p_args["deadline_s"] = max(0.001, plan.primary_deadline - time.monotonic())
            failure: BaseException | None = None
            try:
                async for item in self._primary.create_stream(messages, extra_create_args=p_args, **call):
                    if isinstance(item, CreateResult):
                        self._record_success(self._primary.last_metrics, self._health, True, kind)
                        self._served(route, self._primary, item)
                    yield item
                return
            except BaseException as exc:
                if not _is_failure(exc) or self._fallback is None or not self._config.may_fall_back:
                    if _is_failure(exc):
                        self._record_failure(exc)
                    self._failed(route)
                    if isinstance(exc, MemoryError):
                        raise LLMError(
                            f"{self._primary_name} ran out of memory; no fallback for this role"
                        ) from exc
                    raise
                failure = exc
            finally:
                if self._fallback is not None and self._config.may_fall_back:
                    with self._health.lock:
                        self._health.active -= 1
            self._record_failure(failure)
            reason = "deadline" if isinstance(failure, DeadlineExceededError) else "error"
            route = Route(self._fallback_name, reason, f"primary: {_one_line(failure)}")
        assert self._fallback is not None
        f_args = dict(args)
        if deadline is not None:
            f_args["deadline_s"] = max(0.001, deadline - time.monotonic())
        try:
            async for item in self._fallback.create_stream(messages, extra_create_args=f_args, **call):
                if isinstance(item, CreateResult):
                    self._record_success(
                        self._fallback.last_metrics, _fallback_stats(self._fallback.spec), False, kind
                    )
                    self._served(route, self._fallback, item)
                yield item
        except BaseException:
            self._failed(route)
            raise

    def _served(self, route: Route, client: BaseChatClient, result: CreateResult) -> None:
        self.last_route = route
        self._counts[route.reason] += 1
        self.last_metrics = client.last_metrics
        self.last_prompt = client.last_prompt
        self._add_usage(result.usage)

    def _failed(self, route: Route) -> None:
        self.last_route = route
        self.last_metrics = None

    async def close(self) -> None:
        await self._primary.close()
        if self._fallback is not None:
            await self._fallback.close()


# --------------------------------------------------------------------------- helpers


def _max_tokens(client: LocalLlamaChatCompletionClient | EndpointChatCompletionClient) -> int:
    return client.config.max_tokens


def _model_identity(client: LocalLlamaChatCompletionClient | EndpointChatCompletionClient) -> dict[str, Any]:
    if isinstance(client, EndpointChatCompletionClient):
        return {
            "identity": client.identity,
            "config": client.config.model_dump(mode="json", exclude={"api_key"}),
        }
    path = client.spec.path
    sha = file_sha256(path) if path.is_file() else f"missing:{path}"
    return {"sha256": sha, "config": client.config.model_dump(mode="json")}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
