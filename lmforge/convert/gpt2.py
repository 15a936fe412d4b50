"""GPT-2 (`model_type: gpt2`): GPT2LMHeadModel and GPT2Model checkpoints.

GPT-2 stores its projections as Conv1D, whose weight is (in, out): the transpose of `nn.Linear`'s. The fused
`c_attn` holds q, k and v side by side on the last axis; each is loaded as a slice of it.
"""

from __future__ import annotations

import re
from typing import Any

from ..config import ModelConfig
from .base import LM_ACTIVATIONS, Family, HFConfig, Rule, activation_from_hf, cannot_export, require


class GPT2(Family):
    name = "gpt2"
    model_types = ("gpt2",)
    architectures_read = "GPT2LMHeadModel, GPT2Model"

    def prefixes(self, hf: HFConfig) -> tuple[str, ...]:
        return ("transformer.", "")

    def embedding_key(self, hf: HFConfig) -> str:
        return "wte.weight"

    def to_lmforge(self, hf: HFConfig, keys: set[str], prefix: str) -> ModelConfig:
        if hf.get("scale_attn_weights", True) is not True:
            raise hf.unsupported("scale_attn_weights", hf.get("scale_attn_weights"), "scale_attn_weights=true")
        if hf.get("scale_attn_by_inverse_layer_idx", False):
            raise hf.unsupported("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx=false")
        if hf.get("add_cross_attention", False):
            raise hf.unsupported("add_cross_attention", True, "add_cross_attention=false (decoder-only GPT-2)")
        tied = bool(hf.get("tie_word_embeddings", True)) or "lm_head.weight" not in keys
        d = hf.require("n_embd", "hidden_size")
        return ModelConfig(
            arch="decoder", vocab_size=hf.require("vocab_size"), context_length=hf.require("n_positions", "n_ctx"),
            d_model=d, n_layer=hf.require("n_layer"), n_head=hf.require("n_head"),
            d_ff=hf.get("n_inner") or 4 * d, norm="layernorm", norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            norm_position="pre", activation=activation_from_hf(hf, "activation_function", "gelu_new"),
            pos="learned", bias=True, tie_embeddings=tied, lm_head_bias=False,
            dropout=float(hf.get("resid_pdrop", 0.0)), attn_dropout=float(hf.get("attn_pdrop", 0.0)),
            init_std=float(hf.get("initializer_range", 0.02)),
            bos_token_id=hf.first_id("bos_token_id"), eos_token_id=hf.first_id("eos_token_id"),
            pad_token_id=hf.first_id("pad_token_id"),
        )

    def rules(self, config: ModelConfig, prefix: str, model_type: str, keys: set[str] | None = None) -> dict[str, Rule]:
        p = prefix
        rules = {"tok_embed.weight": Rule(p + "wte.weight"), "decoder.pos_embed.weight": Rule(p + "wpe.weight"),
                 "decoder.final_norm.weight": Rule(p + "ln_f.weight"), "decoder.final_norm.bias": Rule(p + "ln_f.bias")}
        for i in range(config.n_layer):
            h, lm = f"{p}h.{i}.", f"decoder.layers.{i}."
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                rules[f"{lm}attn.{name}.weight"] = Rule(h + "attn.c_attn.weight", transpose=True, part=(j, 3))
                rules[f"{lm}attn.{name}.bias"] = Rule(h + "attn.c_attn.bias", part=(j, 3))
            rules[f"{lm}attn.o_proj.weight"] = Rule(h + "attn.c_proj.weight", transpose=True)
            rules[f"{lm}attn.o_proj.bias"] = Rule(h + "attn.c_proj.bias")
            rules[f"{lm}mlp.up_proj.weight"] = Rule(h + "mlp.c_fc.weight", transpose=True)
            rules[f"{lm}mlp.up_proj.bias"] = Rule(h + "mlp.c_fc.bias")
            rules[f"{lm}mlp.down_proj.weight"] = Rule(h + "mlp.c_proj.weight", transpose=True)
            rules[f"{lm}mlp.down_proj.bias"] = Rule(h + "mlp.c_proj.bias")
            for norm, hf_norm in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                for kind in ("weight", "bias"):
                    rules[f"{lm}{norm}.{kind}"] = Rule(f"{h}{hf_norm}.{kind}")
        if not config.tie_embeddings:
            rules["lm_head.weight"] = Rule("lm_head.weight")
        return rules

    def ignorable(self, key: str, config: ModelConfig) -> bool:
        # old checkpoints store the causal mask buffers; tied checkpoints may repeat the embedding as lm_head
        return bool(re.search(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$", key)) or (
            key == "lm_head.weight" and config.tie_embeddings)

    # ---- export -------------------------------------------------------------------------------------------
    def export_prefix(self, config: ModelConfig, model_type: str) -> str:
        return "transformer."

    def export_config(self, config: ModelConfig) -> ModelConfig:
        return config.replace(bias=True, qkv_bias=None, attn_out_bias=None, mlp_bias=None)

    def to_hf_config(self, config: ModelConfig, model_type: str) -> dict[str, Any]:
        why = "GPT-2 is a pre-norm decoder with LayerNorm, learned positions and biases everywhere"
        require(model_type, config, "arch", ("decoder",), why)
        require(model_type, config, "norm", ("layernorm",), why)
        require(model_type, config, "norm_position", ("pre",), why)
        require(model_type, config, "pos", ("learned",), why)
        require(model_type, config, "pos_offset", (0,), why)
        require(model_type, config, "activation", tuple(LM_ACTIVATIONS),
                f"GPT2Config.activation_function has no gated MLP; use one of {', '.join(LM_ACTIVATIONS)}")
        require(model_type, config, "lm_head_bias", (False,), "GPT-2's LM head has no bias")
        require(model_type, config, "final_norm", (None, True), "GPT-2 always has ln_f")
        for option, allowed in (("embed_scale", (False,)), ("embed_norm", (False,)), ("type_vocab_size", (0,)),
                                ("sliding_window", (None,)), ("unique_layers", (None,)), ("head", ("lm",))):
            require(model_type, config, option, allowed, why)
        if config.n_kv_head != config.n_head:
            raise cannot_export(model_type, "n_kv_head", config.n_kv_head, "GPT-2 has one key/value head per head")
        if config.head_dim * config.n_head != config.d_model:
            raise cannot_export(model_type, "head_dim", config.head_dim, "GPT-2's head size is n_embd / n_head")
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.context_length, "n_embd": config.d_model, "n_layer": config.n_layer,
            "n_head": config.n_head, "n_inner": config.d_ff, "activation_function": LM_ACTIVATIONS[config.activation],
            "layer_norm_epsilon": config.norm_eps, "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
            "attn_pdrop": config.resolved("attn_dropout"), "initializer_range": config.init_std,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "tie_word_embeddings": config.tie_embeddings, "use_cache": True,
            "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id,
        }


FAMILY = GPT2()
