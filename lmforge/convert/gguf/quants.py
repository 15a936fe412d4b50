"""The tensor types `to_gguf` writes, which tensor gets which, and the quantizers.

One type names the file (`--type`); each tensor then gets it, or what llama.cpp's own tools give it instead:

- 1-D tensors (norms, biases), position and token-type embeddings and rope_freqs stay F32 (convert_hf_to_gguf.py);
- a K-quant needs rows that split into 256-value super-blocks; otherwise q4_k falls back to q5_0 and q6_k to q8_0
  (llama-quantize's table, llama-quant.cpp);
- a legacy type (q8_0, q5_*, q4_*) needs rows of whole 32-value blocks; otherwise F16 (convert_hf_to_gguf.py).

F16/BF16/Q8_0/Q5_*/Q4_* are quantized by the `gguf` package, Q4_K/Q6_K by `kquants.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# --type -> (ggml type name, llama.cpp's general.file_type (LlamaFileType))
TYPES: dict[str, tuple[str, int]] = {
    "f32": ("F32", 0), "f16": ("F16", 1), "bf16": ("BF16", 32), "q8_0": ("Q8_0", 7), "q6_k": ("Q6_K", 18),
    "q5_1": ("Q5_1", 9), "q5_0": ("Q5_0", 8), "q4_k": ("Q4_K", 15), "q4_1": ("Q4_1", 3), "q4_0": ("Q4_0", 2),
}
K_FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}  # llama-quantize, rows not a multiple of 256
KEEP_F32 = ("position_embd", "token_types", "rope_freqs")
ROWS_PER_CHUNK_BYTES = 1 << 24  # quantize about 16 MB of float32 at a time


@dataclass(frozen=True)
class Choice:
    """The ggml type one tensor is written in, and why when it is not the file's."""

    ggml_type: str
    reason: str | None = None  # e.g. "rows of 576 values are not a multiple of 256"


def block_size(ggml_type: str) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]][0]


def nbytes(shape: tuple[int, ...], ggml_type: str) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]]
    return math.prod(shape) // block * size


def choose(base_name: str, shape: tuple[int, ...], file_type: str) -> Choice:
    """The type of a tensor named `base_name` ('attn_q', 'token_embd', ...) of `shape` in a `file_type` file."""
    wanted = TYPES[file_type][0]
    if len(shape) < 2 or base_name in KEEP_F32 or wanted == "F32":
        return Choice("F32")
    if wanted in ("F16", "BF16"):
        return Choice(wanted)
    row = shape[-1]
    if row % block_size(wanted) == 0:
        return Choice(wanted)
    if wanted in K_FALLBACK:
        fallback = K_FALLBACK[wanted]
        reason = f"rows of {row} values are not a multiple of 256 (llama-quantize's fallback)"
        if row % block_size(fallback) == 0:
            return Choice(fallback, reason)
    return Choice("F16", f"rows of {row} values are not a multiple of {block_size(wanted)}")


def quantize(x: np.ndarray, ggml_type: str) -> np.ndarray:
    """A float32 array (rows, n) in `ggml_type`: float32/float16 values, or the bytes of the quantized blocks."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize as gguf_quantize

    from .kquants import quantize_q4_k, quantize_q6_k

    x = np.ascontiguousarray(x, dtype=np.float32)
    if ggml_type == "F32":
        return x
    if ggml_type == "F16":
        return x.astype(np.float16)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    kquant = {"Q4_K": quantize_q4_k, "Q6_K": quantize_q6_k}.get(ggml_type)
    qtype = GGMLQuantizationType[ggml_type]
    rows = max(1, ROWS_PER_CHUNK_BYTES // (4 * x.shape[-1]))  # bounded temporaries: one chunk of rows at a time
    flat = x.reshape(-1, x.shape[-1])
    parts = [kquant(flat[i:i + rows]) if kquant else gguf_quantize(flat[i:i + rows], qtype)
             for i in range(0, flat.shape[0], rows)]
    return np.concatenate(parts, axis=0).reshape(*x.shape[:-1], -1)


__all__ = ["TYPES", "Choice", "choose", "quantize", "nbytes", "block_size"]
