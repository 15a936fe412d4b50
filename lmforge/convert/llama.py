"""The Llama family (`model_type: llama | mistral | qwen2`): checkpoints that differ from Llama only in options.

- llama: grouped-query attention, `head_dim`, `rope_theta`, `rope_scaling` / `rope_parameters` (default, linear,
  dynamic, llama3, yarn), `attention_bias` (q, k, v, o), `mlp_bias`, `tie_word_embeddings`, hidden_act silu
  (SwiGLU) or gelu (GeGLU).
- mistral: Llama without biases, plus `sliding_window` on every layer.
- qwen2: biases on q, k, v only; sliding window only when it covers every layer.

Rotary embeddings use the rotate-half layout in both transformers and lmforge, so q/k need no permutation.
"""

from __future__ import annotations

import re
from typing import Any

from ..config import ModelConfig
from ..errors import choices
from .base import Family, HFConfig, Rule, cannot_export, require

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
GATED = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu"}
GATED_BACK = {"swiglu": "silu", "geglu": "gelu"}


def _rope(hf: HFConfig) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from transformers 5's `rope_parameters` or 4.x's `rope_theta` + `rope_scaling`."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = dict(hf.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = {**legacy, **params}
    key = "rope_parameters" if params else "rope_scaling"
    kind = scaling.pop("rope_type", scaling.pop("type", "default"))
    if kind not in ROPE_TYPES:
        raise hf.unsupported(f"{key}.rope_type", kind, f"rope types {choices(ROPE_TYPES)}")
    factor = scaling.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if factor != 1.0:
        raise hf.unsupported("partial_rotary_factor", factor, "full rotary embeddings (partial_rotary_factor=1)")
    scaling.pop("partial_rotary_factor", None)
    if kind == "default":
        return theta, None
    if kind in ("llama3", "yarn") and "original_max_position_embeddings" not in scaling:
        scaling["original_max_position_embeddings"] = hf.get("original_max_position_embeddings",
                                                             hf.require("max_position_embeddings"))
    return theta, {"rope_type": kind, **scaling}


class Llama(Family):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2")
    architectures_read = "LlamaForCausalLM, LlamaModel, MistralForCausalLM, Qwen2ForCausalLM and their base models"

    def prefixes(self, hf: HFConfig) -> tuple[str, ...]:
        return ("model.", "")

    def embedding_key(self, hf: HFConfig) -> str:
        return "embed_tokens.weight"

    def to_lmforge(self, hf: HFConfig, keys: set[str], prefix: str) -> ModelConfig:
        mt = hf.model_type
        act = hf.get("hidden_act", "silu")
        if act not in GATED:
            raise hf.unsupported("hidden_act", act, f"hidden_act in ({choices(GATED)}) (SwiGLU or GeGLU MLP)")
        n_layer = hf.require("num_hidden_layers")
        if mt == "qwen2":
            qkv_bias, out_bias, mlp_bias = True, False, False
            window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
            layer_types = hf.get("layer_types") or [
                "sliding_attention" if window is not None and i >= hf.get("max_window_layers", 28)
                else "full_attention" for i in range(n_layer)]
            kinds = set(layer_types)
            if kinds == {"full_attention"}:
                window = None
            elif kinds != {"sliding_attention"} or window is None:
                raise hf.unsupported("layer_types", sorted(kinds), "one attention kind for all layers (set "
                                     "use_sliding_window=false, or max_window_layers=0 for sliding everywhere)")
        elif mt == "mistral":
            qkv_bias = out_bias = mlp_bias = False
            window = hf.get("sliding_window")
        else:
            qkv_bias = out_bias = bool(hf.get("attention_bias", False))
            mlp_bias = bool(hf.get("mlp_bias", False))
            window = None
        d, heads = hf.require("hidden_size"), hf.require("num_attention_heads")
        head_dim = hf.get("head_dim") or d // heads
        theta, scaling = _rope(hf)
        tied = bool(hf.get("tie_word_embeddings", False)) or "lm_head.weight" not in keys
        return ModelConfig(
            arch="decoder", vocab_size=hf.require("vocab_size"), context_length=hf.require("max_position_embeddings"),
            d_model=d, n_layer=n_layer, n_head=heads, n_kv_head=hf.get("num_key_value_heads") or heads,
            head_dim=None if head_dim * heads == d else head_dim, d_ff=hf.require("intermediate_size"),
            norm="rmsnorm", norm_eps=float(hf.get("rms_norm_eps", 1e-6)), norm_position="pre",
            activation=GATED[act], pos="rope", rope_theta=theta, rope_scaling=scaling,
            bias=False, qkv_bias=qkv_bias, attn_out_bias=out_bias, mlp_bias=mlp_bias, lm_head_bias=False,
            tie_embeddings=tied, sliding_window=window, dropout=0.0,
            attn_dropout=float(hf.get("attention_dropout", 0.0)), init_std=float(hf.get("initializer_range", 0.02)),
            bos_token_id=hf.first_id("bos_token_id"), eos_token_id=hf.first_id("eos_token_id"),
            pad_token_id=hf.first_id("pad_token_id"),
        )

    def rules(self, config: ModelConfig, prefix: str, model_type: str, keys: set[str] | None = None) -> dict[str, Rule]:
        p = prefix
        rules = {"tok_embed.weight": Rule(p + "embed_tokens.weight"),
                 "decoder.final_norm.weight": Rule(p + "norm.weight")}
        biases = {"q_proj": config.resolved("qkv_bias"), "k_proj": config.resolved("qkv_bias"),
                  "v_proj": config.resolved("qkv_bias"), "o_proj": config.resolved("attn_out_bias")}
        for i in range(config.n_layer):
            h, lm = f"{p}layers.{i}.", f"decoder.layers.{i}."
            rules[f"{lm}attn_norm.weight"] = Rule(h + "input_layernorm.weight")
            rules[f"{lm}mlp_norm.weight"] = Rule(h + "post_attention_layernorm.weight")
            for name, bias in biases.items():
                rules[f"{lm}attn.{name}.weight"] = Rule(f"{h}self_attn.{name}.weight")
                if bias:
                    rules[f"{lm}attn.{name}.bias"] = Rule(f"{h}self_attn.{name}.bias")
            for name in ("gate_proj", "up_proj", "down_proj"):
                rules[f"{lm}mlp.{name}.weight"] = Rule(f"{h}mlp.{name}.weight")
                if config.resolved("mlp_bias"):
                    rules[f"{lm}mlp.{name}.bias"] = Rule(f"{h}mlp.{name}.bias")
        if not config.tie_embeddings:
            rules["lm_head.weight"] = Rule("lm_head.weight")
        return rules

    def ignorable(self, key: str, config: ModelConfig) -> bool:
        return bool(re.search(r"rotary_emb\.inv_freq$", key)) or (key == "lm_head.weight" and config.tie_embeddings)

    # ---- export -------------------------------------------------------------------------------------------
    def export_model_type(self, config: ModelConfig, wanted: str | None) -> str:
        if wanted:
            return wanted
        qkv, out, mlp = (config.resolved(k) for k in ("qkv_bias", "attn_out_bias", "mlp_bias"))
        if qkv and not out and not mlp:
            return "qwen2"
        if config.sliding_window is not None:
            return "mistral"
        return "llama"

    def export_prefix(self, config: ModelConfig, model_type: str) -> str:
        return "model."

    def to_hf_config(self, config: ModelConfig, model_type: str) -> dict[str, Any]:
        why = "the Llama family is a pre-norm decoder with RMSNorm, rotary positions and a gated MLP"
        require(model_type, config, "arch", ("decoder",), why)
        require(model_type, config, "norm", ("rmsnorm",), why)
        require(model_type, config, "norm_position", ("pre",), why)
        require(model_type, config, "pos", ("rope",), why)
        require(model_type, config, "activation", tuple(GATED_BACK),
                "Llama's MLP is gated: down(act(gate(x)) * up(x)); use swiglu or geglu")
        require(model_type, config, "final_norm", (None, True), "Llama always ends with a norm")
        require(model_type, config, "lm_head_bias", (False,), "the LM head has no bias")
        for option, allowed in (("embed_scale", (False,)), ("embed_norm", (False,)), ("type_vocab_size", (0,)),
                                ("unique_layers", (None,)), ("head", ("lm",)), ("pos_offset", (0,))):
            require(model_type, config, option, allowed, why)
        if config.rotary_dim != config.head_dim:
            raise cannot_export(model_type, "rotary_dim", config.rotary_dim, "Llama rotates the whole head")
        if config.d_model % config.n_head:
            raise cannot_export(model_type, "n_head", config.n_head,
                                "transformers requires hidden_size divisible by num_attention_heads")
        qkv, out, mlp = (config.resolved(k) for k in ("qkv_bias", "attn_out_bias", "mlp_bias"))
        hf: dict[str, Any] = {
            "vocab_size": config.vocab_size, "hidden_size": config.d_model, "intermediate_size": config.d_ff,
            "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
            "num_key_value_heads": config.n_kv_head, "head_dim": config.head_dim,
            "hidden_act": GATED_BACK[config.activation], "max_position_embeddings": config.context_length,
            "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
            "attention_dropout": config.resolved("attn_dropout"), "initializer_range": config.init_std,
            "tie_word_embeddings": config.tie_embeddings, "use_cache": True,
            "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id,
        }
        scaling = dict(config.rope_scaling or {})
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        # both spellings: transformers 5 reads rope_parameters, 4.x and other tools (vLLM, llama.cpp) rope_scaling
        hf["rope_parameters"] = {**{k: v for k, v in scaling.items() if k != "type"}, "rope_type": kind,
                                 "rope_theta": config.rope_theta}
        if kind != "default":
            hf["rope_scaling"] = {**{k: v for k, v in scaling.items() if k != "type"}, "rope_type": kind}
        if model_type == "llama":
            if qkv != out:
                raise cannot_export(model_type, "qkv_bias" if qkv else "attn_out_bias", qkv if qkv else out,
                                    "LlamaConfig.attention_bias sets q, k, v and o biases together; "
                                    "export as qwen2 for q/k/v-only biases")
            if config.sliding_window is not None:
                raise cannot_export(model_type, "sliding_window", config.sliding_window,
                                    "Llama attends to the whole context; export as mistral")
            hf.update(attention_bias=qkv, mlp_bias=mlp, architectures=["LlamaForCausalLM"], model_type="llama")
        elif model_type == "mistral":
            for option, value in (("qkv_bias", qkv), ("attn_out_bias", out), ("mlp_bias", mlp)):
                if value:
                    raise cannot_export(model_type, option, value, "Mistral has no biases")
            hf.update(sliding_window=config.sliding_window, architectures=["MistralForCausalLM"],
                      model_type="mistral")
        elif model_type == "qwen2":
            for option, value, want in (("qkv_bias", qkv, True), ("attn_out_bias", out, False),
                                        ("mlp_bias", mlp, False)):
                if value != want:
                    raise cannot_export(model_type, option, value, "Qwen2 has biases on q, k and v only")
            window = config.sliding_window
            hf.update(use_sliding_window=window is not None, sliding_window=window, max_window_layers=0 if window
                      else config.n_layer, architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                      layer_types=["sliding_attention" if window else "full_attention"] * config.n_layer)
        else:
            raise cannot_export(model_type, "model_type", model_type, "the Llama family exports as llama, "
                                "mistral or qwen2")
        return hf


FAMILY = Llama()
