"""Tiny, real GGUF models for tests: a Mixtral-shaped mixture of experts and a plain llama.

The files are written with the ``gguf`` package and quantized by llama.cpp itself
(``llama_cpp.llama_model_quantize``), so llama.cpp loads them and generates tokens
(gibberish: the weights are seeded random numbers). A quantized tiny Mixtral is
about 1 MB and takes well under a second to make.

Usage::

    from tests.gguf_factory import make_tiny_mixtral
    path = make_tiny_mixtral(tmp_path / "mixtral-tiny.Q4_K_M.gguf")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType, TokenType

N_EMBD = 256  # K-quants need rows that are a multiple of 256
N_FF = 256
N_HEAD = 4
N_HEAD_KV = 4
N_LAYERS = 2
CONTEXT_LENGTH = 512

QUANT_FILE_TYPES: dict[str, int] = {
    "F32": LlamaFileType.ALL_F32,
    "F16": LlamaFileType.MOSTLY_F16,
    "Q4_0": LlamaFileType.MOSTLY_Q4_0,
    "Q4_1": LlamaFileType.MOSTLY_Q4_1,
    "Q8_0": LlamaFileType.MOSTLY_Q8_0,
    "Q5_0": LlamaFileType.MOSTLY_Q5_0,
    "Q5_1": LlamaFileType.MOSTLY_Q5_1,
    "Q2_K": LlamaFileType.MOSTLY_Q2_K,
    "Q3_K_M": LlamaFileType.MOSTLY_Q3_K_M,
    "Q4_K_S": LlamaFileType.MOSTLY_Q4_K_S,
    "Q4_K_M": LlamaFileType.MOSTLY_Q4_K_M,
    "Q5_K_M": LlamaFileType.MOSTLY_Q5_K_M,
    "Q6_K": LlamaFileType.MOSTLY_Q6_K,
}

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)

_PIECES = ["▁", "▁a", "▁the", "▁buy", "▁sell", "▁hold", "a", "b", "c", "e", "s", "t", "▁to", "ing"]


def make_tiny_mixtral(
    path: Path,
    quantization: str = "Q4_K_M",
    n_experts: int = 8,
    n_experts_used: int = 2,
    *,
    architecture: str = "llama",
    seed: int = 0,
    shape: Shape | None = None,
    nthread: int = 1,
) -> Path:
    """Write a Mixtral-shaped GGUF (``llama`` architecture with experts) quantized to ``quantization``.

    ``quantization`` is ``"F32"``, ``"F16"`` or a llama.cpp quantization name such as ``"Q4_K_M"``
    or ``"Q8_0"``. ``n_experts=0`` gives a dense llama (no expert tensors).
    ``architecture`` only changes the ``general.architecture`` key and the key prefix: any value
    other than ``llama`` makes a file llama.cpp may refuse to load (useful for negative tests).
    ``shape`` makes a larger model (benchmarks: :meth:`Shape.for_size`); ``nthread`` quantizes
    with that many threads.
    """
    shape = shape or Shape()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    quantization = quantization.upper()
    if quantization not in QUANT_FILE_TYPES:
        raise ValueError(f"unknown quantization {quantization}; one of {', '.join(QUANT_FILE_TYPES)}")
    if quantization in ("F32", "F16"):
        _write_float_model(path, quantization, n_experts, n_experts_used, architecture, seed, shape)
        return path
    source = path.with_name(path.name + ".f32.tmp")
    try:
        _write_float_model(source, "F32", n_experts, n_experts_used, architecture, seed, shape)
        _quantize(source, path, QUANT_FILE_TYPES[quantization], nthread)
    finally:
        source.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class Shape:
    """Model dimensions; the defaults make the ~1 MB test model."""

    n_embd: int = N_EMBD
    n_ff: int = N_FF
    n_head: int = N_HEAD
    n_head_kv: int = N_HEAD_KV
    n_layers: int = N_LAYERS
    context_length: int = CONTEXT_LENGTH

    @classmethod
    def for_size(cls, megabytes: float, n_experts: int = 8, context_length: int = 2048) -> Shape:
        """A Mixtral-proportioned shape (n_ff = 3.5 x n_embd, 8 KV heads of 128) whose Q4_K_M
        file is about ``megabytes`` MB: n_embd 1024 and as many layers as that takes."""
        n_embd, n_ff = 1024, 3584
        per_layer = n_experts * 3 * n_embd * n_ff + 2 * n_embd * n_embd + 2 * n_embd * 1024
        layers = max(1, round(megabytes * 1e6 / (per_layer * 4.85 / 8)))
        return cls(n_embd, n_ff, n_embd // 128, 8, layers, context_length)


def make_tiny_llama(path: Path, quantization: str = "Q8_0", *, seed: int = 0) -> Path:
    """Write a dense (no experts) tiny llama GGUF, quantized to ``quantization``."""
    return make_tiny_mixtral(path, quantization, n_experts=0, n_experts_used=0, seed=seed)


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    # llama.cpp's SPM tokenizer looks up byte tokens for unknown characters and aborts the
    # process (unordered_map::at) when they are missing, so all 256 are required.
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    tokens += _PIECES
    types += [TokenType.NORMAL] * len(_PIECES)
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(_PIECES))]
    return tokens, scores, [int(t) for t in types]


def _write_float_model(
    path: Path, ftype: str, n_experts: int, n_experts_used: int, architecture: str, seed: int, shape: Shape
) -> None:
    rng = np.random.default_rng(seed)
    dtype = np.float32 if ftype == "F32" else np.float16
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)
    N_EMBD, N_FF, N_HEAD, N_HEAD_KV, N_LAYERS = (
        shape.n_embd,
        shape.n_ff,
        shape.n_head,
        shape.n_head_kv,
        shape.n_layers,
    )
    head_dim = N_EMBD // N_HEAD
    n_embd_kv = head_dim * N_HEAD_KV

    def weights(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) * 0.02).astype(dtype)

    def norm() -> np.ndarray:
        return np.ones(N_EMBD, dtype=np.float32)  # 1-D tensors stay F32

    writer = GGUFWriter(str(path), architecture)
    writer.add_name("tiny-mixtral" if n_experts else "tiny-llama")
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(QUANT_FILE_TYPES[ftype])
    if n_experts:
        writer.add_expert_count(n_experts)
        writer.add_expert_used_count(n_experts_used)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(MISTRAL_TEMPLATE)

    # numpy shapes are GGUF's ne reversed: a matrix mapping n_in -> n_out is (n_out, n_in).
    writer.add_tensor("token_embd.weight", weights(n_vocab, N_EMBD))
    writer.add_tensor("output_norm.weight", norm())
    writer.add_tensor("output.weight", weights(n_vocab, N_EMBD))
    for i in range(N_LAYERS):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", norm())
        writer.add_tensor(f"{blk}.attn_q.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"{blk}.attn_k.weight", weights(n_embd_kv, N_EMBD))
        writer.add_tensor(f"{blk}.attn_v.weight", weights(n_embd_kv, N_EMBD))
        writer.add_tensor(f"{blk}.attn_output.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"{blk}.ffn_norm.weight", norm())
        if n_experts:
            writer.add_tensor(f"{blk}.ffn_gate_inp.weight", weights(n_experts, N_EMBD).astype(np.float32))
            writer.add_tensor(f"{blk}.ffn_gate_exps.weight", weights(n_experts, N_FF, N_EMBD))
            writer.add_tensor(f"{blk}.ffn_up_exps.weight", weights(n_experts, N_FF, N_EMBD))
            writer.add_tensor(f"{blk}.ffn_down_exps.weight", weights(n_experts, N_EMBD, N_FF))
        else:
            writer.add_tensor(f"{blk}.ffn_gate.weight", weights(N_FF, N_EMBD))
            writer.add_tensor(f"{blk}.ffn_up.weight", weights(N_FF, N_EMBD))
            writer.add_tensor(f"{blk}.ffn_down.weight", weights(N_EMBD, N_FF))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _quantize(source: Path, dest: Path, ftype: int, nthread: int = 1) -> None:
    import ctypes

    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread
    with suppress_stdout_stderr(disable=False):  # llama.cpp's loader log would pollute CLI output checks
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed with {rc} for {dest}")
