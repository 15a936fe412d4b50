"""BART (`model_type: bart`): BartForConditionalGeneration and BartModel, for summarisation and translation.

Why BART as the encoder-decoder family: it is exactly lmforge's post-norm encoder-decoder with learned positions
offset by 2, a LayerNorm after the embeddings, optional sqrt(d) embedding scale, shared input/output embeddings
and `final_logits_bias` (lmforge's LM-head bias), so it converts by renaming alone. T5 needs relative position
buckets, which lmforge does not have; Marian needs separate static sinusoids per stack and an unshared vocabulary
in many checkpoints.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from .base import LM_ACTIVATIONS, Family, HFConfig, Rule, activation_from_hf, cannot_export, require

BART_EPS = 1e-5  # transformers' BART uses nn.LayerNorm's default epsilon everywhere


class Bart(Family):
    name = "bart"
    model_types = ("bart",)
    architectures_read = "BartForConditionalGeneration, BartModel"

    def prefixes(self, hf: HFConfig) -> tuple[str, ...]:
        return ("model.", "")

    def embedding_key(self, hf: HFConfig) -> str:
        return "shared.weight"

    def prefix(self, hf: HFConfig, keys: set[str]) -> str:
        for p in self.prefixes(hf):  # some checkpoints store only the per-stack copies of the shared embedding
            if p + "shared.weight" in keys or p + "encoder.embed_tokens.weight" in keys:
                return p
        return super().prefix(hf, keys)

    def to_lmforge(self, hf: HFConfig, keys: set[str], prefix: str) -> ModelConfig:
        for key in ("normalize_before", "add_final_layer_norm", "normalize_embedding_false"):
            if hf.get(key, False):
                raise hf.unsupported(key, hf.get(key), f"{key}=false (BART is post-norm)")
        for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
            if hf.require(a) != hf.require(b):
                raise hf.unsupported(b, hf.require(b), f"{b} equal to {a}={hf.require(a)} (lmforge uses one size "
                                     "for both stacks)")
        tied = bool(hf.get("tie_word_embeddings", True)) or "lm_head.weight" not in keys
        return ModelConfig(
            arch="encoder_decoder", vocab_size=hf.require("vocab_size"),
            context_length=hf.require("max_position_embeddings"), d_model=hf.require("d_model"),
            n_layer=hf.require("encoder_layers"), n_decoder_layer=hf.require("decoder_layers"),
            n_head=hf.require("encoder_attention_heads"), d_ff=hf.require("encoder_ffn_dim"), norm="layernorm",
            norm_eps=BART_EPS, norm_position="post", activation=activation_from_hf(hf, "activation_function"),
            pos="learned", pos_offset=2, bias=True, embed_scale=bool(hf.get("scale_embedding", False)),
            embed_norm=True, final_norm=False, tie_embeddings=tied, lm_head_bias=True,
            dropout=float(hf.get("dropout", 0.1)), attn_dropout=float(hf.get("attention_dropout", 0.0)),
            init_std=float(hf.get("init_std", 0.02)), pad_token_id=hf.first_id("pad_token_id"),
            bos_token_id=hf.first_id("bos_token_id"), eos_token_id=hf.first_id("eos_token_id"),
            decoder_start_token_id=hf.first_id("decoder_start_token_id"),
        )

    def rules(self, config: ModelConfig, prefix: str, model_type: str, keys: set[str] | None = None) -> dict[str, Rule]:
        p = prefix
        shared = "shared.weight" if keys is None or p + "shared.weight" in keys else "encoder.embed_tokens.weight"
        rules = {"tok_embed.weight": Rule(p + shared)}
        names = {"attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj",
                 "attn.v_proj": "self_attn.v_proj", "attn.o_proj": "self_attn.out_proj",
                 "attn_norm": "self_attn_layer_norm", "mlp.up_proj": "fc1", "mlp.down_proj": "fc2",
                 "mlp_norm": "final_layer_norm"}
        cross = {"cross_attn.q_proj": "encoder_attn.q_proj", "cross_attn.k_proj": "encoder_attn.k_proj",
                 "cross_attn.v_proj": "encoder_attn.v_proj", "cross_attn.o_proj": "encoder_attn.out_proj",
                 "cross_norm": "encoder_attn_layer_norm"}
        for stack, n in (("encoder", config.n_layer), ("decoder", config.decoder_layers)):
            rules[f"{stack}.pos_embed.weight"] = Rule(f"{p}{stack}.embed_positions.weight")
            for kind in ("weight", "bias"):
                rules[f"{stack}.embed_norm.{kind}"] = Rule(f"{p}{stack}.layernorm_embedding.{kind}")
            for i in range(n):
                for lm, hf in {**names, **(cross if stack == "decoder" else {})}.items():
                    for kind in ("weight", "bias"):
                        rules[f"{stack}.layers.{i}.{lm}.{kind}"] = Rule(f"{p}{stack}.layers.{i}.{hf}.{kind}")
        rules["lm_head.bias"] = Rule("final_logits_bias", hf_shape=(1, config.vocab_size), zeros_if_missing=True)
        if not config.tie_embeddings:
            rules["lm_head.weight"] = Rule("lm_head.weight")
        return rules

    def ignorable(self, key: str, config: ModelConfig) -> bool:
        return key.endswith(("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")) or (
            key == "lm_head.weight" and config.tie_embeddings)

    # ---- export -------------------------------------------------------------------------------------------
    def export_prefix(self, config: ModelConfig, model_type: str) -> str:
        return "model."

    def export_config(self, config: ModelConfig) -> ModelConfig:
        return config.replace(bias=True, qkv_bias=None, attn_out_bias=None, mlp_bias=None, lm_head_bias=True)

    def to_hf_config(self, config: ModelConfig, model_type: str) -> dict[str, Any]:
        why = ("BART is a post-norm encoder-decoder with learned positions offset by 2 and a LayerNorm after "
               "the embeddings")
        require(model_type, config, "arch", ("encoder_decoder",), why)
        require(model_type, config, "norm", ("layernorm",), why)
        require(model_type, config, "norm_position", ("post",), why)
        require(model_type, config, "pos", ("learned",), why)
        require(model_type, config, "pos_offset", (2,), why)
        require(model_type, config, "embed_norm", (True,), why)
        require(model_type, config, "final_norm", (None, False), "BART has no norm after the last layer")
        require(model_type, config, "norm_eps", (BART_EPS,), "BART's LayerNorms use eps=1e-5")
        require(model_type, config, "activation", tuple(LM_ACTIVATIONS),
                f"BartConfig.activation_function has no gated MLP; use one of {', '.join(LM_ACTIVATIONS)}")
        for option, allowed in (("type_vocab_size", (0,)), ("sliding_window", (None,)), ("unique_layers", (None,)),
                                ("head", ("lm",))):
            require(model_type, config, option, allowed, why)
        if config.n_kv_head != config.n_head:
            raise cannot_export(model_type, "n_kv_head", config.n_kv_head, "BART has one key/value head per head")
        if config.head_dim * config.n_head != config.d_model:
            raise cannot_export(model_type, "head_dim", config.head_dim, "BART's head size is d_model / heads")
        start = config.decoder_start_token_id if config.decoder_start_token_id is not None else (
            config.bos_token_id if config.bos_token_id is not None else config.eos_token_id)
        return {
            "architectures": ["BartForConditionalGeneration"], "model_type": "bart", "vocab_size": config.vocab_size,
            "d_model": config.d_model, "encoder_layers": config.n_layer, "decoder_layers": config.decoder_layers,
            "encoder_attention_heads": config.n_head, "decoder_attention_heads": config.n_head,
            "encoder_ffn_dim": config.d_ff, "decoder_ffn_dim": config.d_ff,
            "activation_function": LM_ACTIVATIONS[config.activation],
            "max_position_embeddings": config.context_length, "scale_embedding": config.embed_scale,
            "dropout": config.dropout, "attention_dropout": config.resolved("attn_dropout"),
            "activation_dropout": 0.0, "init_std": config.init_std, "encoder_layerdrop": 0.0,
            "decoder_layerdrop": 0.0, "is_encoder_decoder": True, "tie_word_embeddings": config.tie_embeddings,
            "pad_token_id": config.pad_token_id, "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_id, "decoder_start_token_id": start,
            "forced_eos_token_id": config.eos_token_id, "use_cache": True,
        }


FAMILY = Bart()
