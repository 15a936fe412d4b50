"""Where each tensor of a GGUF file lives in the Hugging Face checkpoint it stands for, per llama.cpp architecture.

A GGUF file is read and written as the Hugging Face checkpoint it was (or would be) converted from: GGUF names are
renamed to Hugging Face names here, and the Hugging Face family tables of `lmforge.convert` do the rest, so GGUF and
Hugging Face go through the same config translation and renaming rules. The tables are the inverse of llama.cpp's
own (`gguf.get_tensor_name_map`, which convert_hf_to_gguf.py uses; `tests/convert/test_gguf_export.py` checks
them against it) and are read in both directions.

Two layouts differ from Hugging Face beyond the names:

- `llama`: llama.cpp rotates interleaved pairs (x[2i], x[2i+1]) where Hugging Face and lmforge rotate halves
  (x[i], x[i + d/2]), so convert_hf_to_gguf.py permutes the rows of q and k (weight and bias) per head:
  Hugging Face row h*d + s*d/2 + i (s = which half) is GGUF row h*d + 2i + s. `permute_rotary` does that,
  `unpermute_rotary` undoes it; both are pure index permutations (no rounding). H is the number of query heads
  for q and of key/value heads for k. `qwen2` files are not permuted (llama.cpp runs qwen2 with rotate-half).
- `gpt2`: Hugging Face stores GPT-2's projections as Conv1D, (in, out); GGUF stores them as nn.Linear, (out, in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

LLAMA_BLOCK = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
GPT2_BLOCK = {
    "attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2",
    "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj",
}
BERT_BLOCK = {
    "attn_q": "attention.self.query", "attn_k": "attention.self.key", "attn_v": "attention.self.value",
    "attn_output": "attention.output.dense", "attn_output_norm": "attention.output.LayerNorm",
    "ffn_up": "intermediate.dense", "ffn_down": "output.dense", "layer_output_norm": "output.LayerNorm",
}


@dataclass(frozen=True)
class Layout:
    """One llama.cpp architecture as a Hugging Face model_type: names, and how the tensors are laid out."""

    arch: str  # general.architecture
    model_type: str  # the Hugging Face model_type it reads as
    base: dict[str, str]  # GGUF name -> Hugging Face name under the base-model prefix
    head: dict[str, str]  # GGUF name -> Hugging Face name outside it (the LM head)
    layer: str  # a layer's Hugging Face prefix under the base-model prefix
    block: dict[str, str]  # GGUF name inside blk.N -> Hugging Face name inside the layer
    prefix: str  # the base-model prefix of the checkpoint an import describes
    conv1d: frozenset[str] = frozenset()  # block tensors Hugging Face stores transposed
    rotary_permuted: bool = False

    def names(self, n_layer: int, prefix: str | None = None) -> dict[str, str]:
        """GGUF tensor name -> Hugging Face tensor name, for every tensor this layout can hold."""
        p = self.prefix if prefix is None else prefix
        out = {}
        for kind in ("weight", "bias"):
            out.update({f"{g}.{kind}": f"{p}{h}.{kind}" for g, h in self.base.items()})
            out.update({f"{g}.{kind}": f"{h}.{kind}" for g, h in self.head.items()})
            for i in range(n_layer):
                layer = p + self.layer.format(i)
                out.update({f"blk.{i}.{g}.{kind}": f"{layer}{h}.{kind}" for g, h in self.block.items()})
        return out

    def transposed(self, gguf_name: str) -> bool:
        """True for a weight stored (out, in) in GGUF and (in, out) in Hugging Face."""
        return gguf_name.endswith(".weight") and block_part(gguf_name) in self.conv1d

    def rotary_heads(self, gguf_name: str, n_head: int, n_kv_head: int) -> int | None:
        """The head count to (un)permute this tensor's rows by, or None when it is stored as Hugging Face does."""
        if not self.rotary_permuted:
            return None
        return {"attn_q": n_head, "attn_k": n_kv_head}.get(block_part(gguf_name))


LAYOUTS: dict[str, Layout] = {
    "llama": Layout("llama", "llama", {"token_embd": "embed_tokens", "output_norm": "norm"}, {"output": "lm_head"},
                    "layers.{}.", LLAMA_BLOCK, "model.", rotary_permuted=True),
    "qwen2": Layout("qwen2", "qwen2", {"token_embd": "embed_tokens", "output_norm": "norm"}, {"output": "lm_head"},
                    "layers.{}.", LLAMA_BLOCK, "model."),
    "gpt2": Layout("gpt2", "gpt2", {"token_embd": "wte", "position_embd": "wpe", "output_norm": "ln_f"},
                   {"output": "lm_head"}, "h.{}.", GPT2_BLOCK, "transformer.",
                   conv1d=frozenset({"attn_qkv", "attn_output", "ffn_up", "ffn_down"})),
    "bert": Layout("bert", "bert", {"token_embd": "embeddings.word_embeddings",
                                    "position_embd": "embeddings.position_embeddings",
                                    "token_types": "embeddings.token_type_embeddings",
                                    "token_embd_norm": "embeddings.LayerNorm"}, {},
                   "encoder.layer.{}.", BERT_BLOCK, ""),
}
# Hugging Face model_type (as lmforge's export chooses it) -> llama.cpp architecture
ARCH_OF_MODEL_TYPE = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gpt2": "gpt2", "bert": "bert"}


def block_part(gguf_name: str) -> str:
    """'blk.3.attn_q.weight' -> 'attn_q'; 'token_embd.weight' -> 'token_embd'."""
    m = re.fullmatch(r"blk\.\d+\.(\w+)\.(weight|bias)", gguf_name)
    return m.group(1) if m else gguf_name.rsplit(".", 1)[0]


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face (rotate-half) rows -> llama.cpp (interleaved pairs) rows, as convert_hf_to_gguf.py does."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp (interleaved pairs) rows -> Hugging Face (rotate-half) rows: the exact inverse of permute_rotary."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


__all__ = ["Layout", "LAYOUTS", "ARCH_OF_MODEL_TYPE", "block_part", "permute_rotary", "unpermute_rotary"]
