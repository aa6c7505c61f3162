"""GPU offload through llama.cpp: what the build can do, the GPUs it sees, where layers go.

llama.cpp keeps the input embeddings on the CPU and puts the *last* ``n_gpu_layers`` of a
model's repeating layers on the GPUs; a value above their count also moves the output layer,
and -1 moves everything. A model of 32 blocks therefore has 33 layers to offload ("offloaded
33/33 layers" in llama.cpp's log). The KV cache of an offloaded layer lives on its GPU too.

With several GPUs the offloaded layers are split over all of them in proportion to their free
memory (llama.cpp's default), or to ``tensor_split``; ``main_gpu`` puts the whole offload on
one GPU instead (llama.cpp's ``LLAMA_SPLIT_MODE_NONE``).

Nothing here loads a model: the placement is computed from the GGUF header's tensor
directory (:class:`~utils.llm_integration.gguf_header.GGUFInfo.tensors`), so the RAM and VRAM
each side needs can be checked before a 26 GB file is touched.

Example::

    plan = offload_plan(read_gguf_info(path), n_gpu_layers=-1, n_ctx=4096, gpus=gpu_devices())
    print(plan.offloaded_layers, plan.total_layers, plan.cpu_bytes, plan.gpu_bytes)
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from utils.llm_integration.errors import ModelLoadError
from utils.llm_integration.gguf_header import GGUFHeaderError, GGUFInfo, read_gguf_info

log = logging.getLogger(__name__)

# What each GPU needs beyond weights and KV cache: compute buffers, cuBLAS workspace, graphs.
VRAM_RESERVE_BYTES = 512 << 20

# Datasheet memory bandwidth (GB/s) by device name, for the roofline figure of `bench llm`:
# llama.cpp does not report it, and none of these cards can be asked.
NOMINAL_BANDWIDTH_GB_S: dict[str, float] = {
    "H200": 4800.0,
    "H100 NVL": 3900.0,
    "H100 PCIe": 2000.0,
    "H100": 3350.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100": 1555.0,
    "L40S": 864.0,
    "A10G": 600.0,
    "L4": 300.0,
    "T4": 320.0,
}

# ggml_backend_dev_type: CPU, GPU, IGPU (integrated, host memory), ACCEL (BLAS, AMX)
_DEV_GPU, _DEV_IGPU = 1, 2


class OffloadError(ModelLoadError):
    """An offload setting this llama.cpp build or machine cannot honour."""


@dataclass(frozen=True)
class GPUDevice:
    """A GPU: its index as llama.cpp numbers them (``main_gpu``, ``tensor_split``) and memory.

    ``source`` says who saw it: ``llama.cpp`` (usable for offload) or ``nvidia-smi`` (seen on
    the machine while this llama.cpp build has no GPU backend: not usable until rebuilt).
    """

    index: int
    name: str
    description: str
    memory_total_bytes: int
    memory_free_bytes: int
    source: Literal["llama.cpp", "nvidia-smi"] = "llama.cpp"

    @property
    def usable(self) -> bool:
        return self.source == "llama.cpp"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "usable": self.usable}


def _ggml() -> Any:
    """llama.cpp's shared library, with ggml's backend-device functions typed (None if absent)."""
    from llama_cpp import llama_cpp as lib_module

    lib = lib_module._lib
    try:
        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.restype = ctypes.c_void_p
        lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
            fn.restype = ctypes.c_char_p
            fn.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_type.restype = ctypes.c_int
        lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_memory.restype = None
        lib.ggml_backend_dev_memory.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.POINTER(ctypes.c_size_t),
        ]
        lib.ggml_backend_reg_count.restype = ctypes.c_size_t
        lib.ggml_backend_reg_get.restype = ctypes.c_void_p
        lib.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
        lib.ggml_backend_reg_name.restype = ctypes.c_char_p
        lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    except AttributeError:  # an older llama.cpp without the device API
        return None
    return lib


@cache
def backend_info() -> dict[str, Any]:
    """How the installed llama.cpp was built: ``backend`` (``CUDA``, ``Metal``, ... or ``CPU``),
    whether it can offload at all, and its backend registries."""
    import llama_cpp

    offload = bool(llama_cpp.llama_supports_gpu_offload())
    lib = _ggml()
    registries: list[str] = []
    if lib is not None:
        registries = [
            (lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)) or b"?").decode()
            for i in range(lib.ggml_backend_reg_count())
        ]
    accelerated = [r for r in registries if r not in ("CPU", "BLAS", "RPC")]
    return {
        "backend": "+".join(accelerated) if accelerated else "CPU",
        "gpu_offload": offload,
        "registries": registries,
        "llama_cpp_python": llama_cpp.__version__,
    }


def gpu_devices() -> list[GPUDevice]:
    """The GPUs llama.cpp sees, with total and free memory; on a build without a GPU backend,
    the NVIDIA GPUs ``nvidia-smi`` lists (marked unusable); an empty list when there are none."""
    lib = _ggml()
    found: list[GPUDevice] = []
    if lib is not None:
        for i in range(lib.ggml_backend_dev_count()):
            dev = lib.ggml_backend_dev_get(i)
            if lib.ggml_backend_dev_type(dev) not in (_DEV_GPU, _DEV_IGPU):
                continue
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            found.append(
                GPUDevice(
                    index=len(found),
                    name=(lib.ggml_backend_dev_name(dev) or b"").decode(),
                    description=(lib.ggml_backend_dev_description(dev) or b"").decode(),
                    memory_total_bytes=int(total.value),
                    memory_free_bytes=int(free.value),
                )
            )
    if found or backend_info()["gpu_offload"]:
        return found
    return _nvidia_smi()


def _nvidia_smi() -> list[GPUDevice]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    query = "--query-gpu=index,name,memory.total,memory.free"
    try:
        out = subprocess.run(
            [exe, query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        parts = [p.strip() for p in line.split(",")]
        with contextlib.suppress(ValueError, IndexError):
            gpus.append(
                GPUDevice(
                    index=int(parts[0]),
                    name=f"CUDA{parts[0]}",
                    description=parts[1],
                    memory_total_bytes=int(float(parts[2])) << 20,
                    memory_free_bytes=int(float(parts[3])) << 20,
                    source="nvidia-smi",
                )
            )
    return gpus


def nominal_bandwidth_gb_s(gpu: GPUDevice) -> float | None:
    """The datasheet memory bandwidth of ``gpu`` (longest matching name), or None if unknown."""
    for key in sorted(NOMINAL_BANDWIDTH_GB_S, key=len, reverse=True):
        if key in gpu.description:
            return NOMINAL_BANDWIDTH_GB_S[key]
    return None


# --------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class OffloadPlan:
    """Where a model's weights and KV cache would live for one ``n_gpu_layers`` setting."""

    n_gpu_layers: int
    offloaded_layers: int
    total_layers: int
    cpu_weight_bytes: int
    gpu_weight_bytes: int
    cpu_kv_bytes: int
    gpu_kv_bytes: int
    per_gpu_bytes: tuple[int, ...] = field(default=())  # weights + KV on each GPU, by index

    @property
    def cpu_bytes(self) -> int:
        return self.cpu_weight_bytes + self.cpu_kv_bytes

    @property
    def gpu_bytes(self) -> int:
        return self.gpu_weight_bytes + self.gpu_kv_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "per_gpu_bytes": list(self.per_gpu_bytes),
            "cpu_bytes": self.cpu_bytes,
            "gpu_bytes": self.gpu_bytes,
        }


def _block_of(name: str) -> int | None:
    if not name.startswith("blk."):
        return None
    with contextlib.suppress(ValueError, IndexError):
        return int(name.split(".")[1])
    return None


def offload_plan(
    info: GGUFInfo,
    n_gpu_layers: int,
    n_ctx: int,
    *,
    gpus: Sequence[GPUDevice] = (),
    main_gpu: int | None = None,
    tensor_split: Sequence[float] | None = None,
) -> OffloadPlan:
    """Place ``info``'s layers as llama.cpp would with ``n_gpu_layers`` over the usable ``gpus``
    (none: everything on the CPU, whatever ``n_gpu_layers`` says)."""
    usable = [g for g in gpus if g.usable]
    blocks = info.block_count or 0
    total_layers = blocks + 1
    wanted = total_layers if n_gpu_layers < 0 else n_gpu_layers
    offloaded = min(wanted, total_layers) if usable else 0
    gpu_blocks = min(offloaded, blocks)
    first_gpu_block = blocks - gpu_blocks
    output_on_gpu = offloaded > blocks
    names = {name for name, _ in info.tensors}
    tied = "output.weight" not in names  # the output reuses token_embd: llama.cpp copies it
    all_bytes = sum(n for _, n in info.tensors)
    gpu_weights = 0
    per_block: dict[int, int] = {}
    for name, nbytes in info.tensors:
        block = _block_of(name)
        if block is not None:
            per_block[block] = per_block.get(block, 0) + nbytes
            if block >= first_gpu_block:
                gpu_weights += nbytes
        elif name != "token_embd.weight" and output_on_gpu:
            gpu_weights += nbytes  # output, output_norm (and the like)
    duplicate = 0
    if output_on_gpu and tied:
        duplicate = next((n for name, n in info.tensors if name == "token_embd.weight"), 0)
    kv_layer = (info.kv_bytes_per_token or 0) * n_ctx // blocks if blocks else 0
    gpu_kv = kv_layer * gpu_blocks
    cpu_kv = kv_layer * (blocks - gpu_blocks)
    gpu_layer_bytes = [per_block.get(b, 0) + kv_layer for b in range(first_gpu_block, blocks)]
    per_gpu = _split(usable, gpu_layer_bytes, main_gpu, tensor_split)
    if per_gpu and output_on_gpu:  # the output layer goes with the last block
        last = max(i for i, n in enumerate(per_gpu) if n) if any(per_gpu) else 0
        extra = gpu_weights + duplicate - sum(per_block.get(b, 0) for b in range(first_gpu_block, blocks))
        per_gpu[last] += extra
    return OffloadPlan(
        n_gpu_layers=n_gpu_layers,
        offloaded_layers=offloaded,
        total_layers=total_layers,
        cpu_weight_bytes=all_bytes - gpu_weights,
        gpu_weight_bytes=gpu_weights + duplicate,
        cpu_kv_bytes=cpu_kv,
        gpu_kv_bytes=gpu_kv,
        per_gpu_bytes=tuple(per_gpu),
    )


def _split(
    gpus: Sequence[GPUDevice],
    layer_bytes: list[int],
    main_gpu: int | None,
    tensor_split: Sequence[float] | None,
) -> list[int]:
    """Bytes per GPU when consecutive layers are dealt out in proportion to the shares."""
    if not gpus:
        return []
    if main_gpu is not None:
        shares = [1.0 if g.index == main_gpu else 0.0 for g in gpus]
    elif tensor_split:
        shares = [float(tensor_split[i]) if i < len(tensor_split) else 0.0 for i in range(len(gpus))]
    else:
        shares = [float(g.memory_free_bytes) for g in gpus]
    total = sum(shares) or 1.0
    bounds, acc = [], 0.0
    for share in shares:
        acc += share / total
        bounds.append(acc)
    per_gpu = [0] * len(gpus)
    n = len(layer_bytes)
    for i, nbytes in enumerate(layer_bytes):
        where = next((g for g, b in enumerate(bounds) if i / max(n, 1) < b - 1e-9), len(gpus) - 1)
        per_gpu[where] += nbytes
    return per_gpu


def active_weight_bytes_per_token(info: GGUFInfo) -> int:
    """Weight bytes one generated token reads: every dense tensor, the used share of the experts
    (``expert_used_count`` of ``expert_count``), and the token embeddings only when the output
    layer reuses them (otherwise one row is gathered)."""
    names = {name for name, _ in info.tensors}
    used = (info.expert_used_count or 0) / info.expert_count if info.is_moe and info.expert_count else 1.0
    total = 0.0
    for name, nbytes in info.tensors:
        if name == "token_embd.weight" and "output.weight" in names:
            continue
        total += nbytes * used if "_exps." in name else nbytes
    return int(total)


def planned_offload(
    path: Path,
    n_ctx: int,
    n_gpu_layers: int,
    main_gpu: int | None = None,
    tensor_split: Sequence[float] | None = None,
) -> OffloadPlan | None:
    """:func:`offload_plan` for a model file on this machine's GPUs (None if the header is unreadable)."""
    try:
        info = read_gguf_info(path)
    except GGUFHeaderError as exc:
        if exc.info is None:
            return None
        info = exc.info
    gpus = gpu_devices() if n_gpu_layers else []
    return offload_plan(info, n_gpu_layers, n_ctx, gpus=gpus, main_gpu=main_gpu, tensor_split=tensor_split)


# --------------------------------------------------------------------------- settings -> llama.cpp


def check_offload(
    n_gpu_layers: int, main_gpu: int | None = None, tensor_split: Sequence[float] | None = None
) -> list[str]:
    """Check the offload settings against this build and machine.

    Returns warnings (the model still runs: on the CPU, or with fewer layers on the GPU than
    asked). Raises :class:`OffloadError` for a setting that names a GPU that is not there.
    """
    if n_gpu_layers == 0:
        if main_gpu is not None or tensor_split:
            return ["llm.main_gpu/llm.tensor_split are set but llm.n_gpu_layers is 0: nothing is offloaded"]
        return []
    info = backend_info()
    if not info["gpu_offload"] and info["backend"] != "CPU":  # a GPU build that sees no GPU
        return [
            f"llm.n_gpu_layers is {n_gpu_layers} but llama.cpp ({info['backend']} build) sees no usable"
            " GPU: every layer runs on the CPU; check CUDA_VISIBLE_DEVICES and the GPU driver"
        ]
    if not info["gpu_offload"]:
        return [
            f"llm.n_gpu_layers is {n_gpu_layers} but this llama.cpp build ({info['backend']}) cannot"
            " offload to a GPU: every layer runs on the CPU; rebuild it with `make install GPU=cuda`"
        ]
    gpus = gpu_devices()
    if not gpus:
        return [
            f"llm.n_gpu_layers is {n_gpu_layers} but llama.cpp ({info['backend']}) sees no GPU"
            " (check the driver and CUDA_VISIBLE_DEVICES): every layer runs on the CPU"
        ]
    seen = f"llama.cpp sees {len(gpus)} GPU{'s' if len(gpus) > 1 else ''} (0..{len(gpus) - 1})"
    if main_gpu is not None and main_gpu >= len(gpus):
        raise OffloadError(f"llm.main_gpu is {main_gpu} but {seen}; set it to one of them or to null")
    if tensor_split and len(tensor_split) > len(gpus):
        raise OffloadError(
            f"llm.tensor_split has {len(tensor_split)} shares but {seen}; give one share per GPU"
        )
    return []


def offload_kwargs(
    n_gpu_layers: int, main_gpu: int | None = None, tensor_split: Sequence[float] | None = None
) -> dict[str, Any]:
    """The ``llama_cpp.Llama`` arguments for these settings; none at all for ``n_gpu_layers=0``,
    so a CPU configuration loads exactly as it always has."""
    if n_gpu_layers == 0:
        return {}
    import llama_cpp

    kwargs: dict[str, Any] = {"n_gpu_layers": n_gpu_layers}
    if main_gpu is not None:
        kwargs["split_mode"] = llama_cpp.LLAMA_SPLIT_MODE_NONE
        kwargs["main_gpu"] = main_gpu
    elif tensor_split:
        kwargs["tensor_split"] = [float(x) for x in tensor_split]
    return kwargs


def prepare_offload(
    n_gpu_layers: int, main_gpu: int | None = None, tensor_split: Sequence[float] | None = None
) -> dict[str, Any]:
    """:func:`check_offload` (warnings logged) then :func:`offload_kwargs`: what a loader calls."""
    for warning in check_offload(n_gpu_layers, main_gpu, tensor_split):
        log.warning("warning: %s", warning)
    return offload_kwargs(n_gpu_layers, main_gpu, tensor_split)
