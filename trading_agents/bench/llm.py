"""``bench llm``: prompt and generation speed of the embedded model, with and without grammar,
against this machine's measured memory read bandwidth.

``gen_tokens_per_s`` is llama.cpp's own eval rate (forward passes only);
``reply_tokens_per_s_wall`` is what a caller sees between the first and the last token, with
sampling included. Grammar-constrained generation is measured with the layer's rejection
sampler (``with_grammar``) and with llama-cpp-python's own chain, which checks the grammar
against the whole vocabulary at every step (``with_grammar_stock_sampler``), in the same run.

Generation is bound by memory bandwidth: every generated token reads all weights once (of a
mixture of experts, the dense tensors and the experts it routes to), so ``weight bytes read per
token x generation tokens/s`` is the bandwidth the model achieves. The ratio to the measured
read bandwidth says how close to the hardware's roofline llama.cpp runs on the CPU (a small
model partly served from CPU caches can exceed 1); with layers offloaded (``llm.n_gpu_layers``)
the ratio is taken over the GPU's datasheet bandwidth.

The model is the embedded one unless ``--model PATH`` names another GGUF file; threads and
offload come from the ``llm`` settings (``TRADING_AGENTS_LLM__N_GPU_LAYERS=-1``, say).
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from trading_agents.agents.schemas import AnalystReport
from trading_agents.config.settings import load_settings
from trading_agents.model_files.gguf_info import read_gguf_info
from trading_agents.model_files.registry import embedded_model_path
from utils.llm_integration.errors import OutputTruncatedError
from utils.llm_integration.gpu import (
    active_weight_bytes_per_token,
    backend_info,
    gpu_devices,
    nominal_bandwidth_gb_s,
    offload_plan,
)
from utils.llm_integration.loaded_model import LocalLLM, physical_cores
from utils.llm_integration.spec import LLMSpec, SamplingParams

PROMPT = (
    "You are an equity analyst. GOOG closed at 798.20, up 0.4% on the day and 3.1% over five days. "
    "It trades above its 20-day (780.5) and 50-day (745.1) averages; RSI 14 is 64; MACD is above its "
    "signal line; 20-day volatility is 21% annualized. Give your view of the next two weeks."
)


def measure_read_bandwidth(
    size_mb: int = 512, repeats: int = 5, threads: int | None = None
) -> dict[str, float]:
    """Read bandwidth in GB/s: summing a ``size_mb`` array, one thread and ``threads`` threads."""
    threads = threads or physical_cores()
    data = np.ones(size_mb * (1 << 20) // 8, dtype=np.float64)
    data.sum()  # fault the pages in

    def one_thread() -> float:
        best = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            data.sum()
            best = max(best, data.nbytes / (time.perf_counter() - t))
        return best

    def many_threads() -> float:
        parts = np.array_split(data, threads)
        best = 0.0
        for _ in range(repeats):
            workers = [threading.Thread(target=p.sum) for p in parts]  # numpy releases the GIL here
            t = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            best = max(best, data.nbytes / (time.perf_counter() - t))
        return best

    return {
        "single_thread_gb_s": round(one_thread() / 1e9, 2),
        "all_threads_gb_s": round(many_threads() / 1e9, 2),
        "threads": threads,
        "array_mb": size_mb,
    }


def _speeds(
    llm: LocalLLM, grammar: bool, repeats: int, max_tokens: int, fixed_text: bool = False
) -> dict[str, Any]:
    """Rates over ``repeats`` replies. ``fixed_text``: the schema's fixed text is evaluated in
    batches (the desk's default); off, every reply token is sampled under the grammar, which
    is what the sampler's rate is measured on."""
    prompt_rates, gen_rates, wall_rates, ttfts = [], [], [], []
    truncated = 0
    for i in range(repeats):
        # a fresh prefix each time so the prompt is really evaluated
        messages = [{"role": "user", "content": f"Run {i} at {time.time_ns()}. {PROMPT}"}]
        try:
            out = llm.complete(
                messages,
                schema=AnalystReport if grammar else None,
                sampling=SamplingParams(max_tokens=max_tokens, fixed_text=fixed_text),
            )
        except OutputTruncatedError:  # a generated (random-weight) model rambles to max_tokens
            truncated += 1
            prompt_rate, gen_rate = _last_call_rates(llm)
            prompt_rates.append(prompt_rate)
            gen_rates.append(gen_rate)
            continue
        prompt_rates.append(out.metrics.prompt_tokens_per_s)
        gen_rates.append(out.metrics.gen_tokens_per_s)
        m = out.metrics
        if m.completion_tokens > 1 and m.latency_s > m.ttft_s:
            wall_rates.append((m.completion_tokens - 1) / (m.latency_s - m.ttft_s))
        ttfts.append(out.metrics.ttft_s)
    return {
        "prompt_tokens_per_s": round(statistics.median(prompt_rates), 1),
        "gen_tokens_per_s": round(statistics.median(gen_rates), 1),
        "reply_tokens_per_s_wall": round(statistics.median(wall_rates), 1) if wall_rates else None,
        "ttft_s": round(statistics.median(ttfts), 3) if ttfts else None,
        "repeats": repeats,
        "truncated_at_max_tokens": truncated,
    }


def _last_call_rates(llm: LocalLLM) -> tuple[float, float]:
    """llama.cpp's prompt and eval rates of the call that just ended (kept until the next one)."""
    from llama_cpp import llama_cpp

    perf = llama_cpp.llama_perf_context(llm.llama._ctx.ctx)
    p_rate = perf.n_p_eval / (perf.t_p_eval_ms / 1e3) if perf.t_p_eval_ms > 0 else 0.0
    g_rate = perf.n_eval / (perf.t_eval_ms / 1e3) if perf.t_eval_ms > 0 else 0.0
    return round(p_rate, 1), round(g_rate, 1)


def run(out_dir: Path, quick: bool = False, model: Path | None = None) -> dict[str, Any]:
    """Measure and return the figures (the CLI writes them to ``<out_dir>/llm.json``)."""
    cfg = load_settings().llm
    path = Path(model) if model is not None else embedded_model_path()
    name = path.stem if model is not None else "smollm2-135m-instruct"
    info = read_gguf_info(path)
    threads = cfg.n_threads or physical_cores()
    tensor_split = tuple(cfg.tensor_split) if cfg.tensor_split else None
    spec = LLMSpec(
        path=path,
        name=name,
        n_ctx=2048,
        n_threads=threads,
        ram_cache_mb=0,
        n_gpu_layers=cfg.n_gpu_layers,
        main_gpu=cfg.main_gpu,
        tensor_split=tensor_split,
    )
    gpus = gpu_devices() if cfg.n_gpu_layers else []
    plan = offload_plan(
        info, cfg.n_gpu_layers, spec.n_ctx, gpus=gpus, main_gpu=cfg.main_gpu, tensor_split=tensor_split
    )
    llm = LocalLLM(spec)
    _ = llm.llama
    repeats = 2 if quick else 5
    plain = _speeds(llm, grammar=False, repeats=repeats, max_tokens=64 if quick else 128)
    constrained = _speeds(llm, grammar=True, repeats=repeats, max_tokens=400)
    llm.llama.grammar_first = True  # llama-cpp-python's own grammar sampling, the baseline
    stock = _speeds(llm, grammar=True, repeats=repeats, max_tokens=400)
    llm.llama.grammar_first = False
    pieces = _speeds(llm, grammar=True, repeats=repeats, max_tokens=400, fixed_text=True)
    plain_after = _speeds(llm, grammar=False, repeats=repeats, max_tokens=64 if quick else 128)
    plain_wall = statistics.mean(
        r for r in (plain["reply_tokens_per_s_wall"], plain_after["reply_tokens_per_s_wall"]) if r
    )
    threads = llm.n_threads
    llm.close()
    bandwidth = measure_read_bandwidth(256 if quick else 1024)
    model_bytes = path.stat().st_size
    read_per_token = active_weight_bytes_per_token(info)
    measured = bandwidth["all_threads_gb_s"] * 1e9
    achieved = read_per_token * plain["gen_tokens_per_s"]
    wall_plain, wall_grammar = plain["reply_tokens_per_s_wall"], constrained["reply_tokens_per_s_wall"]
    on_gpu = plan.offloaded_layers == plan.total_layers and bool(gpus)
    gpu_peak = nominal_bandwidth_gb_s(gpus[cfg.main_gpu or 0]) if on_gpu else None
    return {
        "model": name,
        "model_bytes": model_bytes,
        "architecture": info.architecture,
        "experts": f"{info.expert_used_count} of {info.expert_count}" if info.is_moe else None,
        "quantization": info.quantization,
        "weight_bytes_read_per_token": read_per_token,
        "threads": threads,
        "backend": backend_info()["backend"],
        "n_gpu_layers": cfg.n_gpu_layers,
        "offloaded_layers": plan.offloaded_layers,
        "total_layers": plan.total_layers,
        "gpus": [g.to_dict() for g in gpus],
        "without_grammar": plain,
        "without_grammar_after": plain_after,
        "with_grammar": constrained,
        "with_grammar_stock_sampler": stock,
        "with_grammar_fixed_text": pieces,
        # reply tokens per second when the fixed text is evaluated, over sampling them all
        "fixed_text_reply_rate_ratio": round(
            (pieces["reply_tokens_per_s_wall"] or 0) / (constrained["reply_tokens_per_s_wall"] or 1), 3
        ),
        # the target: constrained generation at >= 0.9 of the unconstrained rate, wall clock
        # (unconstrained measured before and after the constrained runs, averaged)
        "grammar_wall_rate_ratio": round((constrained["reply_tokens_per_s_wall"] or 0) / plain_wall, 3),
        "grammar_wall_rate_ratio_stock_sampler": round(
            (stock["reply_tokens_per_s_wall"] or 0) / plain_wall, 3
        ),
        "grammar_wall_rate_ratio_target": 0.9,
        "grammar_generation_slowdown": round(
            plain["gen_tokens_per_s"] / max(constrained["gen_tokens_per_s"], 1e-9), 2
        ),
        # llama.cpp's eval rate leaves sampling out; under a grammar sampling is the larger cost
        "grammar_wall_slowdown": round(wall_plain / wall_grammar, 2) if wall_plain and wall_grammar else None,
        "memory_read_bandwidth": bandwidth,
        "achieved_bytes_per_s": round(achieved),
        "achieved_over_measured_bandwidth": None if on_gpu or not measured else round(achieved / measured, 3),
        "gpu_nominal_bandwidth_gb_s": gpu_peak,
        "achieved_over_gpu_bandwidth": round(achieved / (gpu_peak * 1e9), 4) if gpu_peak else None,
    }
