"""BERT and RoBERTa (`model_type: bert | roberta`): the base models and their masked-LM / pretraining heads.

Read: BertModel (with or without its pooler), BertForMaskedLM, BertForPreTraining (MLM + next-sentence
prediction), RobertaModel, RobertaForMaskedLM. RoBERTa differs from BERT in options only: its learned
positions start at pad_token_id + 1 (lmforge's `pos_offset`, 2 for RoBERTa), and its MLM head always uses exact
GELU. A base model without an MLM head becomes an lmforge encoder whose LM head is the tied embedding with no
bias and no transform (no extra tensors), and exports back as BertModel / RobertaModel. A masked-LM checkpoint that
also stores the pooler (the original roberta-base does) keeps it and exports it the same way. LayerNorm
parameters named gamma/beta (checkpoints converted from TensorFlow) read as weight/bias.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import ModelConfig
from .base import LM_ACTIVATIONS, Family, HFConfig, Rule, activation_from_hf, cannot_export, require


class Bert(Family):
    name = "bert"
    model_types = ("bert", "roberta")
    architectures_read = "BertModel, BertForMaskedLM, BertForPreTraining, RobertaModel, RobertaForMaskedLM"

    def prefixes(self, hf: HFConfig) -> tuple[str, ...]:
        return (f"{hf.model_type}.", "")

    def embedding_key(self, hf: HFConfig) -> str:
        return "embeddings.word_embeddings.weight"

    @staticmethod
    def _head_keys(model_type: str) -> dict[str, str]:
        if model_type == "roberta":
            return {"dense": "lm_head.dense", "norm": "lm_head.layer_norm", "bias": "lm_head.bias",
                    "decoder": "lm_head.decoder"}
        return {"dense": "cls.predictions.transform.dense", "norm": "cls.predictions.transform.LayerNorm",
                "bias": "cls.predictions.bias", "decoder": "cls.predictions.decoder"}

    def to_lmforge(self, hf: HFConfig, keys: set[str], prefix: str) -> ModelConfig:
        mt = hf.model_type
        hf.expect("position_embedding_type", ("absolute",), "absolute", "absolute position embeddings")
        for key in ("is_decoder", "add_cross_attention"):
            if hf.get(key, False):
                raise hf.unsupported(key, True, f"{key}=false (a bidirectional encoder)")
        head = self._head_keys(mt)
        mlm = head["bias"] in keys
        nsp = "cls.seq_relationship.weight" in keys
        pooler = f"{prefix}pooler.dense.weight" in keys
        activation = activation_from_hf(hf, "hidden_act")
        if mt == "roberta" and mlm and activation != "gelu":
            raise hf.unsupported("hidden_act", hf.get("hidden_act"), "hidden_act=gelu for RobertaForMaskedLM "
                                 "(its LM head always applies exact GELU)")
        pad = hf.first_id("pad_token_id")
        offset = 0
        if mt == "roberta":
            if pad is None:
                raise hf.unsupported("pad_token_id", None, "a pad_token_id (RoBERTa's positions start after it)")
            offset = pad + 1
        max_pos = hf.require("max_position_embeddings")
        tied = bool(hf.get("tie_word_embeddings", True)) or f"{head['decoder']}.weight" not in keys
        return ModelConfig(
            arch="encoder", vocab_size=hf.require("vocab_size"), context_length=max_pos - offset,
            d_model=hf.require("hidden_size"), n_layer=hf.require("num_hidden_layers"),
            n_head=hf.require("num_attention_heads"), d_ff=hf.require("intermediate_size"), norm="layernorm",
            norm_eps=float(hf.get("layer_norm_eps", 1e-12)), norm_position="post", activation=activation,
            pos="learned", pos_offset=offset, bias=True, type_vocab_size=hf.get("type_vocab_size", 2),
            embed_norm=True, final_norm=False, mlm_transform=mlm, lm_head_bias=mlm, tie_embeddings=tied or not mlm,
            nsp_head=nsp, pooler=pooler and not nsp, dropout=float(hf.get("hidden_dropout_prob", 0.1)),
            attn_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
            init_std=float(hf.get("initializer_range", 0.02)), pad_token_id=pad,
            bos_token_id=hf.first_id("bos_token_id"), eos_token_id=hf.first_id("eos_token_id"),
        )

    def rules(self, config: ModelConfig, prefix: str, model_type: str, keys: set[str] | None = None) -> dict[str, Rule]:
        p, e = prefix, prefix + "embeddings."
        rules = {"tok_embed.weight": Rule(e + "word_embeddings.weight"),
                 "encoder.pos_embed.weight": Rule(e + "position_embeddings.weight"),
                 "encoder.embed_norm.weight": Rule(e + "LayerNorm.weight"),
                 "encoder.embed_norm.bias": Rule(e + "LayerNorm.bias")}
        if config.type_vocab_size:
            rules["encoder.type_embed.weight"] = Rule(e + "token_type_embeddings.weight")
        names = {"attn.q_proj": "attention.self.query", "attn.k_proj": "attention.self.key",
                 "attn.v_proj": "attention.self.value", "attn.o_proj": "attention.output.dense",
                 "attn_norm": "attention.output.LayerNorm", "mlp.up_proj": "intermediate.dense",
                 "mlp.down_proj": "output.dense", "mlp_norm": "output.LayerNorm"}
        for i in range(config.n_layer):
            for lm, hf in names.items():
                for kind in ("weight", "bias"):
                    rules[f"encoder.layers.{i}.{lm}.{kind}"] = Rule(f"{p}encoder.layer.{i}.{hf}.{kind}")
        head = self._head_keys(model_type)
        if config.mlm_transform:
            for lm, hf in (("mlm_dense", head["dense"]), ("mlm_norm", head["norm"])):
                for kind in ("weight", "bias"):
                    rules[f"{lm}.{kind}"] = Rule(f"{hf}.{kind}")
        if config.resolved("lm_head_bias"):
            rules["lm_head.bias"] = Rule(head["bias"])
        if not config.tie_embeddings:
            rules["lm_head.weight"] = Rule(f"{head['decoder']}.weight")
        if config.nsp_head or config.pooler:
            rules["pooler.weight"] = Rule(f"{p}pooler.dense.weight")
            rules["pooler.bias"] = Rule(f"{p}pooler.dense.bias")
        if config.nsp_head:
            rules["nsp.weight"] = Rule("cls.seq_relationship.weight")
            rules["nsp.bias"] = Rule("cls.seq_relationship.bias")
        return rules

    def ignorable(self, key: str, config: ModelConfig) -> bool:
        if key.endswith(("embeddings.position_ids", "embeddings.token_type_ids")):
            return True
        if key in ("cls.predictions.decoder.bias", "lm_head.decoder.bias"):  # the same tensor as the head's bias
            return True
        return key in ("cls.predictions.decoder.weight", "lm_head.decoder.weight") and config.tie_embeddings

    # ---- export -------------------------------------------------------------------------------------------
    def export_model_type(self, config: ModelConfig, wanted: str | None) -> str:
        if wanted:
            return wanted
        return "roberta" if config.pos_offset else "bert"

    def _is_base(self, config: ModelConfig) -> bool:
        return not config.mlm_transform and not config.resolved("lm_head_bias") and config.tie_embeddings

    def export_prefix(self, config: ModelConfig, model_type: str) -> str:
        return "" if self._is_base(config) else f"{model_type}."

    def export_config(self, config: ModelConfig) -> ModelConfig:
        return config.replace(bias=True, qkv_bias=None, attn_out_bias=None, mlp_bias=None, lm_head_bias=config.mlm_transform)

    def to_hf_config(self, config: ModelConfig, model_type: str) -> dict[str, Any]:
        why = "BERT is a post-norm encoder with LayerNorm after the embeddings and learned positions"
        require(model_type, config, "arch", ("encoder",), why)
        require(model_type, config, "norm", ("layernorm",), why)
        require(model_type, config, "norm_position", ("post",), why)
        require(model_type, config, "pos", ("learned",), why)
        require(model_type, config, "embed_norm", (True,), why)
        require(model_type, config, "final_norm", (None, False), "BERT has no norm after the last layer")
        require(model_type, config, "activation", tuple(LM_ACTIVATIONS),
                f"BertConfig.hidden_act has no gated MLP; use one of {', '.join(LM_ACTIVATIONS)}")
        for option, allowed in (("embed_scale", (False,)), ("sliding_window", (None,)), ("unique_layers", (None,)),
                                ("head", ("lm",))):
            require(model_type, config, option, allowed, why)
        if config.n_kv_head != config.n_head:
            raise cannot_export(model_type, "n_kv_head", config.n_kv_head, "BERT has one key/value head per head")
        if config.head_dim * config.n_head != config.d_model:
            raise cannot_export(model_type, "head_dim", config.head_dim, "BERT's head size is hidden / heads")
        base = self._is_base(config)
        if not base and not config.mlm_transform:
            raise cannot_export(model_type, "mlm_transform", config.mlm_transform, "BertForMaskedLM's head always "
                                "has the dense + activation + norm transform (without it and with no LM-head bias "
                                "and tied embeddings the model exports as the base model)")
        if model_type == "roberta":
            if config.pad_token_id is None or config.pos_offset != config.pad_token_id + 1:
                raise cannot_export(model_type, "pos_offset", config.pos_offset,
                                    f"RoBERTa's positions start at pad_token_id + 1 (pad_token_id="
                                    f"{config.pad_token_id})")
            if not base and config.activation != "gelu":
                raise cannot_export(model_type, "activation", config.activation,
                                    "RobertaForMaskedLM's head always applies exact GELU")
            if config.nsp_head:
                raise cannot_export(model_type, "nsp_head", True, "RoBERTa has no next-sentence head")
            arch = "RobertaModel" if base else "RobertaForMaskedLM"
        else:
            require(model_type, config, "pos_offset", (0,), "BERT's positions start at 0; export as roberta "
                    "when they start at pad_token_id + 1")
            arch = "BertForPreTraining" if config.nsp_head else "BertModel" if base else "BertForMaskedLM"
        return {
            "architectures": [arch], "model_type": model_type, "vocab_size": config.vocab_size,
            "hidden_size": config.d_model, "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head, "intermediate_size": config.d_ff,
            "hidden_act": LM_ACTIVATIONS[config.activation], "hidden_dropout_prob": config.dropout,
            "attention_probs_dropout_prob": config.resolved("attn_dropout"),
            "max_position_embeddings": config.context_length + config.pos_offset,
            "type_vocab_size": config.type_vocab_size or 1, "initializer_range": config.init_std,
            "layer_norm_eps": config.norm_eps, "pad_token_id": config.pad_token_id,
            "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
            "position_embedding_type": "absolute", "tie_word_embeddings": config.tie_embeddings,
            "is_decoder": False, "use_cache": False,
        }

    def extra_export_tensors(self, config: ModelConfig, model_type: str, model) -> dict[str, torch.Tensor]:
        out = {}
        if not config.type_vocab_size:  # HF always adds a token-type embedding: one row of zeros adds nothing
            out[self.export_prefix(config, model_type) + "embeddings.token_type_embeddings.weight"] = torch.zeros(
                1, config.d_model, dtype=model.dtype)
        return out


FAMILY = Bert()
