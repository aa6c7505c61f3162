"""``n_threads: auto``: the llama.cpp thread count chosen by measuring, once per model and CPU.

More threads are not always faster, and the two halves of a decision's cost do not agree on
the count: on two cores a small model evaluates a prompt (a batch, compute-bound) almost twice
as fast on two threads, but decodes one token at a time faster on one (the threads'
synchronisation costs more than the split saves); a large model is memory-bound and stops
gaining at some count. :func:`choose_threads` times a prompt evaluation and a run of
single-token decodes at each candidate count on the loaded model and keeps the fastest count
for each: llama.cpp's ``n_threads_batch`` (prompts) and ``n_threads`` (decoding). The choice is
remembered in ``<cache_dir>/threads.json`` under the model's sha256 and the CPU (model name,
logical and physical core counts), so the next load on this machine reuses it without
measuring.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.llm_integration.files import atomic_write_text

THREADS_FILE = "threads.json"
PROBE_PROMPT_TOKENS = 96
PROBE_DECODES = 12
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ThreadChoice:
    """The thread counts a model runs with (decoding, prompt batches) and where they came from."""

    n_threads: int
    source: str  # "explicit" | "measured" | "cached" | "default"
    # per candidate count, when measured: seconds for the probe prompt and for the probe decodes
    timings_s: dict[int, dict[str, float]] | None = None
    n_threads_batch: int = 0  # 0: as n_threads

    def __post_init__(self) -> None:
        if not self.n_threads_batch:
            object.__setattr__(self, "n_threads_batch", self.n_threads)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_threads": self.n_threads,
            "n_threads_batch": self.n_threads_batch,
            "source": self.source,
            **({"timings_s": {str(k): v for k, v in self.timings_s.items()}} if self.timings_s else {}),
        }


def physical_cores() -> int:
    """Physical cores (psutil; the logical count when it cannot tell)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or unsupported platform
        n = None
    return max(1, n or os.cpu_count() or 1)


def cpu_signature() -> str:
    """What identifies this machine's CPU for the cache: model name and core counts."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}|{os.cpu_count()}|{physical_cores()}"


def candidates(cores: int | None = None) -> list[int]:
    """1, 2, 4, ... up to the physical core count, which is always tried."""
    cores = cores or physical_cores()
    out, n = [], 1
    while n < cores:
        out.append(n)
        n *= 2
    out.append(cores)
    return out


def _cache_key(sha256: str) -> str:
    return f"{sha256}|{cpu_signature()}"


def cached_threads(cache_dir: Path | None, sha256: str) -> tuple[int, int] | None:
    """The remembered (decode, batch) thread counts for this model and CPU, or None (also for
    an entry from before batch threads were measured: it is measured again)."""
    if cache_dir is None:
        return None
    path = cache_dir / THREADS_FILE
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        value = json.loads(path.read_text()).get(_cache_key(sha256))
        if isinstance(value, dict) and min(int(value["n_threads"]), int(value["n_threads_batch"])) >= 1:
            return int(value["n_threads"]), int(value["n_threads_batch"])
    return None


def remember_threads(cache_dir: Path, sha256: str, choice: ThreadChoice) -> None:
    path = cache_dir / THREADS_FILE
    with _LOCK:
        saved: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(path.read_text())
        saved[_cache_key(sha256)] = {
            **{k: v for k, v in choice.to_dict().items() if k != "source"},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with contextlib.suppress(OSError):
            cache_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(saved, indent=1, sort_keys=True))


def measure_threads(llama: Any, counts: list[int], repeats: int = 2) -> dict[int, dict[str, float]]:
    """Seconds for a prompt evaluation (``prompt``) and for a run of single-token decodes
    (``decode``) at each thread count (best of ``repeats`` each) on a loaded
    ``llama_cpp.Llama``; leaves its KV cache empty."""
    from llama_cpp import llama_cpp as lib

    bos = llama.token_bos()
    vocab = llama.n_vocab()
    # any fixed tokens do: the cost of a forward pass does not depend on which tokens they are
    prompt = [bos if bos >= 0 else 1] + [(97 + 31 * i) % vocab for i in range(PROBE_PROMPT_TOKENS - 1)]
    timings: dict[int, dict[str, float]] = {}
    try:
        for n in counts:
            lib.llama_set_n_threads(llama._ctx.ctx, n, n)
            best = {"prompt": float("inf"), "decode": float("inf")}
            for _ in range(repeats + 1):  # the first pass at a count warms it up
                llama.reset()
                t = time.perf_counter()
                llama.eval(prompt)
                t_prompt = time.perf_counter() - t
                t = time.perf_counter()
                for i in range(PROBE_DECODES):
                    llama.eval([prompt[1 + i % (len(prompt) - 1)]])
                t_decode = time.perf_counter() - t
                best = {"prompt": min(best["prompt"], t_prompt), "decode": min(best["decode"], t_decode)}
            timings[n] = {k: round(v, 4) for k, v in best.items()}
    finally:
        llama.reset()
    return timings


def choose_threads(
    llama: Any,
    requested: int | str | None,
    sha256: str | None,
    cache_dir: Path | None,
) -> ThreadChoice:
    """The thread counts for ``llama`` (loaded with the physical core count), set on it.

    An explicit number wins (for decoding and prompts alike); ``None`` means the physical core
    count; ``"auto"`` uses the cached choice for this model and CPU or measures the candidates
    and caches the fastest count for decoding and the fastest for prompt batches.
    """
    from llama_cpp import llama_cpp as lib

    if isinstance(requested, int):
        choice = ThreadChoice(requested, "explicit")
    elif requested is None:
        choice = ThreadChoice(physical_cores(), "default")
    else:
        hit = cached_threads(cache_dir, sha256) if sha256 else None
        if hit is not None:
            choice = ThreadChoice(hit[0], "cached", n_threads_batch=hit[1])
        else:
            counts = candidates()
            if len(counts) > 1:
                timings = measure_threads(llama, counts)
            else:
                timings = {counts[0]: {"prompt": 0.0, "decode": 0.0}}
            decode = min(timings, key=lambda n: (timings[n]["decode"], n))
            batch = min(timings, key=lambda n: (timings[n]["prompt"], n))
            choice = ThreadChoice(decode, "measured", timings, n_threads_batch=batch)
            if cache_dir is not None and sha256:
                remember_threads(cache_dir, sha256, choice)
    lib.llama_set_n_threads(llama._ctx.ctx, choice.n_threads, choice.n_threads_batch)
    llama.n_threads = llama.context_params.n_threads = choice.n_threads
    llama.n_threads_batch = llama.context_params.n_threads_batch = choice.n_threads_batch
    return choice
