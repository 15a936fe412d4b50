"""GGUF file -> lmforge `Transformer`: `from_gguf` (also what `lmforge.load("model.gguf")` calls).

The file's metadata is read as the Hugging Face config.json it stands for and its tensors under their Hugging Face
names (`names.py`); lmforge's Hugging Face family tables then give the `ModelConfig` and the place of every tensor,
exactly as for `from_hf`. Every tensor is checked against the metadata before any is dequantized; then each is
dequantized (float32), un-permuted or transposed where llama.cpp lays it out differently, and assigned into a model
built on the meta device, one at a time.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import ModelConfig
from ...device import parse_dtype, resolve_device
from ...errors import CheckpointError, ConfigError, choices
from ...model import Transformer
from ...model.meta import build_empty, load_weights
from ..base import HFConfig, Rule
from ..registry import family_for
from .names import LAYOUTS, Layout, unpermute_rotary
from .reader import GGUFFile
from .vocab import TokenizerMode, tokenizer_from_gguf

POOLING = {1: "mean", 2: "cls", 3: "last"}  # llama.cpp's pooling_type -> lmforge's `pooling`
ROPE_SCALING = ("none", "linear", "yarn")


def _decimal(value: Any) -> float:
    """A float32 metadata value as the shortest decimal that reads back as it (1e-05, not 9.999999747378752e-06),
    the number the model was configured with."""
    return float(str(np.float32(value)))


def _layout(file: GGUFFile) -> Layout:
    if file.architecture not in LAYOUTS:
        raise CheckpointError(f"{file.path}: general.architecture={file.architecture!r} is not supported; lmforge "
                              f"reads GGUF files of the llama.cpp architectures {choices(LAYOUTS)}")
    if file.get("expert_count", 0):
        raise CheckpointError(f"{file.path}: a mixture-of-experts model ({file.architecture}.expert_count="
                              f"{file.get('expert_count')}); lmforge has no expert layers")
    return LAYOUTS[file.architecture]


def _common(file: GGUFFile) -> dict[str, Any]:
    """Sizes every architecture has; the vocabulary size is the embedding's row count."""
    if "token_embd.weight" not in file.tensors:
        raise CheckpointError(f"{file.path} has no token_embd.weight; it is not a complete {file.architecture} model")
    tied = "output.weight" not in file.tensors
    ids = {k: file.metadata.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")}
    return {"vocab_size": file.shape("token_embd.weight")[0], "tie_word_embeddings": tied,
            "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["padding"]}


def _llama3_scaling(file: GGUFFile, head_dim: int, theta: float) -> dict[str, Any]:
    """Llama 3's rope scaling, recovered from `rope_freqs.weight` (the divisor of each rotary frequency, which is
    how llama.cpp stores it): factor = the largest divisor; low/high frequency factors from the smooth band between;
    checked by recomputing every divisor."""
    divisors = file.array("rope_freqs.weight").astype(np.float64).reshape(-1)
    if divisors.shape[0] != head_dim // 2:
        raise CheckpointError(f"{file.path}: rope_freqs.weight has {divisors.shape[0]} values, the head size "
                              f"{head_dim} needs {head_dim // 2}; the file is damaged")
    factor = float(divisors.max())
    original = float(file.get("rope.scaling.original_context_length") or 8192)
    wavelen = 2 * math.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
    band = (divisors > 1 + 1e-6) & (divisors < factor - 1e-6)
    if factor <= 1 + 1e-6:
        return {}
    if band.sum() >= 2:  # 1/divisor = (1 - s)/factor + s, with s = (original/wavelen - low) / (high - low)
        s = (1 / divisors[band] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(1 / wavelen[band], s, 1)
        low = round(float(-intercept * original / slope), 4)
        high = round(float(low + original / slope), 4)
    else:
        low, high = 1.0, 4.0
    scaling = {"rope_type": "llama3", "factor": round(factor, 6), "low_freq_factor": low, "high_freq_factor": high,
               "original_max_position_embeddings": int(original)}
    expected = np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, np.nan))
    smooth = (original / wavelen - low) / (high - low)
    expected = np.where(np.isnan(expected), 1 / ((1 - smooth) / factor + smooth), expected)
    if not np.allclose(expected, divisors, rtol=1e-4):
        raise CheckpointError(f"{file.path}: rope_freqs.weight does not follow Llama 3's rope scaling, the only "
                              "per-frequency scaling lmforge has")
    return scaling


def _rope(file: GGUFFile, head_dim: int) -> dict[str, Any]:
    theta = _decimal(file.get("rope.freq_base", 10000.0))
    out: dict[str, Any] = {"rope_theta": theta}
    kind = file.get("rope.scaling.type", "none")
    if kind not in ROPE_SCALING:
        raise CheckpointError(f"{file.path}: {file.architecture}.rope.scaling.type={kind!r} is not supported; lmforge "
                              f"reads {choices(ROPE_SCALING)} (and Llama 3's rope_freqs.weight)")
    if "rope_freqs.weight" in file.tensors:
        if kind != "none":
            raise CheckpointError(f"{file.path}: rope_freqs.weight together with rope.scaling.type={kind!r} is not "
                                  "supported")
        scaling = _llama3_scaling(file, head_dim, theta)
        if scaling:
            out["rope_scaling"] = scaling
    elif kind != "none":
        scaling = {"rope_type": kind, "factor": _decimal(file.require("rope.scaling.factor"))}
        if kind == "yarn":
            scaling["original_max_position_embeddings"] = int(file.require("rope.scaling.original_context_length"))
            for key, name in (("rope.scaling.yarn_beta_fast", "beta_fast"), ("rope.scaling.yarn_beta_slow",
                                                                             "beta_slow")):
                if file.get(key) is not None:
                    scaling[name] = _decimal(file.get(key))
        out["rope_scaling"] = scaling
    return out


def hf_config(file: GGUFFile) -> dict[str, Any]:
    """The Hugging Face config.json content a GGUF file's metadata describes."""
    layout = _layout(file)
    cfg = {"model_type": layout.model_type, **_common(file), "max_position_embeddings": file.require("context_length")}
    n_layer, d = file.require("block_count"), file.require("embedding_length")
    if layout.model_type in ("llama", "qwen2"):
        heads = file.require("attention.head_count")
        head_dim = file.get("attention.key_length") or d // heads
        rotary = file.get("rope.dimension_count", head_dim)
        if rotary != head_dim:
            raise CheckpointError(f"{file.path}: {file.architecture}.rope.dimension_count={rotary} is smaller than "
                                  f"the head size {head_dim} (partial rotary), which the Llama family does not have")
        cfg.update(hidden_size=d, num_hidden_layers=n_layer, intermediate_size=file.require("feed_forward_length"),
                   num_attention_heads=heads, num_key_value_heads=file.get("attention.head_count_kv") or heads,
                   head_dim=head_dim, rms_norm_eps=_decimal(file.require("attention.layer_norm_rms_epsilon")),
                   hidden_act="silu", **_rope(file, head_dim))
        if layout.model_type == "llama":
            cfg.update(attention_bias="blk.0.attn_q.bias" in file.tensors, mlp_bias="blk.0.ffn_up.bias" in file.tensors)
        return cfg
    if layout.model_type == "gpt2":
        cfg.update(n_embd=d, n_layer=n_layer, n_head=file.require("attention.head_count"),
                   n_positions=cfg.pop("max_position_embeddings"), n_inner=file.get("feed_forward_length"),
                   layer_norm_epsilon=_decimal(file.require("attention.layer_norm_epsilon")),
                   activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return cfg
    if file.get("attention.causal", False):
        raise CheckpointError(f"{file.path}: bert.attention.causal=true; a BERT encoder attends both ways")
    types = file.shape("token_types.weight")[0] if "token_types.weight" in file.tensors else 0
    cfg.update(hidden_size=d, num_hidden_layers=n_layer, num_attention_heads=file.require("attention.head_count"),
               intermediate_size=file.require("feed_forward_length"), type_vocab_size=types, hidden_act="gelu",
               layer_norm_eps=_decimal(file.require("attention.layer_norm_epsilon")), hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0)
    cfg.pop("bos_token_id"), cfg.pop("eos_token_id")  # llama.cpp writes [CLS]/[SEP] there; BertConfig has neither
    return cfg


class _Plan:
    """lmforge tensor name -> (Rule, GGUF name) for a file, checked against the metadata."""

    def __init__(self, file: GGUFFile, layout: Layout, hf: HFConfig) -> None:
        n_layer = int(hf.data.get("num_hidden_layers") or hf.data.get("n_layer"))
        to_hf = layout.names(n_layer)
        stray = [n for n in file.tensors if n not in to_hf and n != "rope_freqs.weight"]
        if stray:
            raise CheckpointError(f"{file.path} has {len(stray)} tensor(s) with no place in a {layout.arch} model as "
                                  f"lmforge reads it: {', '.join(stray[:5])}{' ...' if len(stray) > 5 else ''} "
                                  f"(another variant of the architecture, or a task head)")
        self.gguf_of = {to_hf[n]: n for n in file.tensors if n in to_hf}
        self.family = family_for(layout.model_type, hf.source)
        keys = set(self.gguf_of)
        prefix = self.family.prefix(hf, keys)
        try:
            self.config = self.family.to_lmforge(hf, keys, prefix)
        except ConfigError as e:
            raise ConfigError(f"{file.path}: {e}") from None
        self.rules = self.family.rules(self.config, prefix, layout.model_type, keys)
        self.file, self.layout = file, layout

    def check(self, model: Transformer) -> dict[str, tuple[int, ...]]:
        """lmforge name -> shape, after checking that every tensor is in the file with the shape the metadata implies."""
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in model.tied_keys()}
        missing = [self.rules[n].hf for n in shapes if self.rules[n].hf not in self.gguf_of]
        if missing:
            names = {v: k for k, v in self.layout.names(self.config.n_layer).items()}
            shown = [names.get(m, m) for m in missing]
            raise CheckpointError(f"{self.file.path} is missing {len(missing)} tensor(s) a {self.layout.arch} model "
                                  f"with this metadata needs: {', '.join(shown[:5])}{' ...' if len(shown) > 5 else ''}")
        for name, shape in shapes.items():
            rule = self.rules[name]
            gguf_name = self.gguf_of[rule.hf]
            stored = self.file.shape(gguf_name)
            stored = tuple(reversed(stored)) if self.layout.transposed(gguf_name) else stored
            want = rule.expected_hf_shape(shape)
            if tuple(stored) != tuple(want):
                raise CheckpointError(f"{self.file.path}: tensor {gguf_name} has shape {list(self.file.shape(gguf_name))} "
                                      f"(torch order), but the metadata implies {list(want)}; the metadata and the "
                                      "tensors disagree")
        return shapes


class _Dequantized(Mapping):
    """lmforge name -> tensor, dequantized from the file when asked (a fused tensor once for all its parts)."""

    def __init__(self, plan: _Plan, shapes: dict[str, tuple[int, ...]], device: torch.device,
                 dtype: torch.dtype) -> None:
        self.plan, self.shapes, self.device, self.dtype = plan, shapes, device, dtype
        self.uses = collections.Counter(plan.rules[n].hf for n in shapes)
        self.cache: dict[str, torch.Tensor] = {}

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def _hf_tensor(self, hf_name: str) -> torch.Tensor:
        if hf_name not in self.cache:
            plan = self.plan
            gguf_name = plan.gguf_of[hf_name]
            w = plan.file.array(gguf_name)
            heads = plan.layout.rotary_heads(gguf_name, plan.config.n_head, plan.config.n_kv_head)
            if heads is not None:
                w = unpermute_rotary(w, heads)
            if plan.layout.transposed(gguf_name):
                w = w.T
            self.cache[hf_name] = torch.from_numpy(np.ascontiguousarray(w))
        return self.cache[hf_name]

    def __getitem__(self, name: str) -> torch.Tensor:
        rule: Rule = self.plan.rules[name]
        t = rule.to_lmforge(self._hf_tensor(rule.hf), self.shapes[name])
        out = t.to(device=self.device, dtype=self.dtype, copy=not rule.is_view).contiguous()
        self.uses[rule.hf] -= 1
        if self.uses[rule.hf] == 0:
            self.cache.pop(rule.hf, None)
        return out


def _describe(path: str | os.PathLike) -> tuple[GGUFFile, Layout, _Plan]:
    file = GGUFFile(path)
    layout = _layout(file)
    hf = HFConfig(hf_config(file), f"{file.path} (GGUF metadata)")
    plan = _Plan(file, layout, hf)
    config = plan.config
    if layout.model_type == "bert":
        pooling = POOLING.get(int(file.get("pooling_type", 2) or 0), "cls")
        config = config.replace(pooling=pooling)
    plan.config = config.replace(name=str(file.metadata.get("general.name") or file.path.stem))
    return file, layout, plan


def gguf_model_config(path: str | os.PathLike) -> ModelConfig:
    """The lmforge `ModelConfig` of a GGUF file, from its metadata alone (no tensor is dequantized)."""
    return _describe(path)[2].config


def from_gguf(
    path: str | os.PathLike,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
    *,
    tokenizer: bool = True,
    tokenizer_mode: TokenizerMode = "llama.cpp",
) -> Transformer:
    """Load a GGUF file (llama.cpp's format) as an lmforge `Transformer` in eval mode: weights dequantized,
    tokenizer rebuilt from the metadata (`tokenizer_mode`: "llama.cpp" tokenizes as llama.cpp does, "transformers"
    as transformers' GGUF tokenizer does; docs/export.md), chat template kept.

    `dtype` is the compute dtype (fp32 | bf16 | fp16; None: fp32, what dequantization gives). The model has
    `.tokenizer` and `.gguf_source` (file, architecture, name, tensor types, tokenizer mode).
    """
    file, layout, plan = _describe(path)
    config = plan.config
    model = build_empty(config)
    shapes = plan.check(model)
    tok = tokenizer_from_gguf(file.metadata, tokenizer_mode, str(file.path)) if tokenizer else None
    if tok is not None and tok.vocab_size > config.vocab_size:
        raise CheckpointError(f"{file.path}: the vocabulary has {tok.vocab_size} tokens but token_embd.weight only "
                              f"{config.vocab_size} rows; the file is damaged")
    target = resolve_device(device)
    want = parse_dtype(dtype) or torch.float32
    load_weights(model, _Dequantized(plan, shapes, target, want), device=target, dtype=want, source=str(file.path))
    model.tokenizer = tok
    model.gguf_source = {"file": str(Path(file.path).resolve()), "architecture": layout.arch,
                         "model_type": layout.model_type, "name": file.metadata.get("general.name"),
                         "tensor_types": file.type_counts(), "tokenizer_mode": tokenizer_mode if tok else None}
    return model.eval()


__all__ = ["from_gguf", "gguf_model_config", "hf_config"]
