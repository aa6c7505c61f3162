"""Write a Mixtral-8x7B-shaped GGUF with random weights, fast, for GPU throughput benchmarks.

Needs only ``numpy`` and the pure-Python ``gguf`` package (runs on a bare GPU machine).
The tensors are written as Q8_0 blocks built directly from random int8 values (one shared
scale, weights of standard deviation ~0.02), so no float copy of the model is ever made;
llama.cpp's own ``llama-quantize --allow-requantize SRC DST Q4_K_M`` then makes the Q4_K_M
file that is benchmarked. Mixtral's dimensions (n_embd 4096, n_ff 14336, 32 heads, 8 KV
heads, 8 experts, 2 used), ``--layers`` of its 32 layers. The tokenizer (vocabulary, merges,
chat template) is copied from a JSON dump of another GGUF's ``tokenizer.*`` keys, so that
prompts tokenize to realistic lengths (SmolLM2's 49,152-token BPE vocabulary here, where
Mixtral has 32,000).

To save time, every expert of every layer holds the same random block data (the router is
random per layer, and llama.cpp computes each expert separately, so the work per token is
that of distinct weights); the outputs are gibberish either way.

    python3 scripts/gpu_mixtral_gguf.py --tokenizer smollm2_tokenizer.json --layers 8 \\
        --out /tmp/mixtral-8L.Q8_0.gguf
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

N_EMBD, N_FF, N_HEAD, N_HEAD_KV, N_EXPERT, N_EXPERT_USED = 4096, 14336, 32, 8, 8, 2
QK8_0 = 32
Q8_0_BYTES = 34


def q8_0_blocks(rng: np.random.Generator, n_values: int, std: float = 0.02) -> np.ndarray:
    """Random Q8_0 data for ``n_values`` weights as a flat uint8 array (34 bytes per 32)."""
    blocks = rng.integers(-127, 128, size=(n_values // QK8_0, Q8_0_BYTES), dtype=np.int8).view(np.uint8)
    scale = np.float16(std / np.sqrt((255**2 - 1) / 12))  # std of uniform ints in [-127, 127]
    blocks[:, :2] = np.frombuffer(scale.tobytes(), dtype=np.uint8)
    return blocks.reshape(-1)


def q8_0(data: np.ndarray, *shape: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """``data`` viewed as the byte rows of a Q8_0 tensor of numpy ``shape`` (ne reversed)."""
    rows = shape[:-1]
    return data.reshape(*rows, shape[-1] // QK8_0 * Q8_0_BYTES), shape


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", type=Path, required=True, help="JSON of a GGUF's tokenizer.* keys")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    tok = json.loads(args.tokenizer.read_text())
    n_vocab = len(tok["tokenizer.ggml.tokens"])
    n_embd_kv = N_EMBD // N_HEAD * N_HEAD_KV

    w = GGUFWriter(str(args.out), "llama")
    w.add_name(f"mixtral-shaped-{args.layers}L-random")
    w.add_context_length(32768)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(args.layers)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(LlamaFileType.MOSTLY_Q8_0)
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(N_EXPERT_USED)
    w.add_tokenizer_model(tok["tokenizer.ggml.model"])
    w.add_tokenizer_pre(tok["tokenizer.ggml.pre"])
    w.add_token_list(tok["tokenizer.ggml.tokens"])
    w.add_token_types(tok["tokenizer.ggml.token_type"])
    w.add_token_merges(tok["tokenizer.ggml.merges"])
    w.add_bos_token_id(tok["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(tok["tokenizer.ggml.eos_token_id"])
    w.add_unk_token_id(tok["tokenizer.ggml.unknown_token_id"])
    w.add_pad_token_id(tok["tokenizer.ggml.padding_token_id"])
    w.add_add_bos_token(tok["tokenizer.ggml.add_bos_token"])
    w.add_add_space_prefix(tok["tokenizer.ggml.add_space_prefix"])
    w.add_chat_template(tok["tokenizer.chat_template"])

    q8 = GGMLQuantizationType.Q8_0
    experts = q8_0_blocks(rng, N_EXPERT * N_FF * N_EMBD)  # shared by gate, up and down of every layer
    attn_q = q8_0_blocks(rng, N_EMBD * N_EMBD)
    attn_kv = q8_0_blocks(rng, n_embd_kv * N_EMBD)
    norm = np.ones(N_EMBD, dtype=np.float32)

    def add(name: str, data: np.ndarray, *shape: int) -> None:
        raw, _logical = q8_0(data, *shape)
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=q8)

    add("token_embd.weight", q8_0_blocks(rng, n_vocab * N_EMBD), n_vocab, N_EMBD)
    w.add_tensor("output_norm.weight", norm)
    add("output.weight", q8_0_blocks(rng, n_vocab * N_EMBD), n_vocab, N_EMBD)
    for i in range(args.layers):
        b = f"blk.{i}"
        w.add_tensor(f"{b}.attn_norm.weight", norm)
        add(f"{b}.attn_q.weight", attn_q, N_EMBD, N_EMBD)
        add(f"{b}.attn_k.weight", attn_kv, n_embd_kv, N_EMBD)
        add(f"{b}.attn_v.weight", attn_kv, n_embd_kv, N_EMBD)
        add(f"{b}.attn_output.weight", attn_q, N_EMBD, N_EMBD)
        w.add_tensor(f"{b}.ffn_norm.weight", norm)
        gate = (rng.standard_normal((N_EXPERT, N_EMBD)) * 0.02).astype(np.float32)
        w.add_tensor(f"{b}.ffn_gate_inp.weight", gate)
        add(f"{b}.ffn_gate_exps.weight", experts, N_EXPERT, N_FF, N_EMBD)
        add(f"{b}.ffn_up_exps.weight", experts, N_EXPERT, N_FF, N_EMBD)
        add(f"{b}.ffn_down_exps.weight", experts, N_EXPERT, N_EMBD, N_FF)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e9:.2f} GB, {args.layers} layers, vocab {n_vocab})")


if __name__ == "__main__":
    main()
