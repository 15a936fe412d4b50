"""Parity of every supported Hugging Face family: a tiny random model built by `transformers` and saved with
`save_pretrained` loads in lmforge with the same outputs (max abs <= 1e-4, fp32, right-padded batch, non-pad
positions), exports back to a folder that transformers loads with no missing or unexpected weights and the same
outputs, and loads again in lmforge unchanged (lmforge -> HF -> lmforge)."""

from __future__ import annotations

import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lmforge  # noqa: E402
from lmforge.convert import to_hf  # noqa: E402
from lmforge.convert.weights import SAFETENSORS_INDEX  # noqa: E402

from _hf_fixtures import TEXTS, batch, hf_tokenizer, max_diff, randomize, save_hf  # noqa: E402

TOL = 1e-4
T = transformers


def _llama(**kw):
    base = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                pad_token_id=2)
    base.update(kw)
    return base


CASES = {
    # name: (model class, config class, config kwargs, tokenizer family)
    "gpt2": (T.GPT2LMHeadModel, T.GPT2Config, dict(vocab_size=512, n_embd=48, n_layer=2, n_head=4, n_positions=64,
                                                    bos_token_id=0, eos_token_id=0), "gpt2"),
    "gpt2-untied-relu": (T.GPT2LMHeadModel, T.GPT2Config,
                         dict(vocab_size=512, n_embd=48, n_layer=2, n_head=4, n_positions=64, n_inner=80,
                              activation_function="relu", tie_word_embeddings=False, bos_token_id=0,
                              eos_token_id=0), "gpt2"),
    "llama-gqa-headdim-biases": (T.LlamaForCausalLM, T.LlamaConfig,
                                 _llama(head_dim=32, attention_bias=True, mlp_bias=True, rope_theta=5000.0,
                                        tie_word_embeddings=False), "llama"),
    "llama-mqa-tied-geglu": (T.LlamaForCausalLM, T.LlamaConfig,
                             _llama(num_key_value_heads=1, tie_word_embeddings=True, hidden_act="gelu"), "llama"),
    "mistral-sliding-window": (T.MistralForCausalLM, T.MistralConfig, _llama(sliding_window=4, head_dim=8), "llama"),
    "qwen2": (T.Qwen2ForCausalLM, T.Qwen2Config, _llama(tie_word_embeddings=True, bos_token_id=None, eos_token_id=0,
                                                       pad_token_id=0), "qwen2"),
    "bert-mlm": (T.BertForMaskedLM, T.BertConfig,
                 dict(vocab_size=512, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=96, max_position_embeddings=64, pad_token_id=0), "bert"),
    "bert-pretraining-nsp": (T.BertForPreTraining, T.BertConfig,
                             dict(vocab_size=512, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=96, max_position_embeddings=64, pad_token_id=0,
                                  hidden_act="gelu_new"), "bert"),
    "bert-base-pooler": (T.BertModel, T.BertConfig,
                         dict(vocab_size=512, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=96, max_position_embeddings=64, pad_token_id=0), "bert"),
    "roberta-mlm": (T.RobertaForMaskedLM, T.RobertaConfig,
                    dict(vocab_size=512, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=96, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                         eos_token_id=2, type_vocab_size=1), "roberta"),
    "bart": (T.BartForConditionalGeneration, T.BartConfig,
             dict(vocab_size=512, d_model=48, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, max_position_embeddings=64,
                  scale_embedding=True, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                  decoder_start_token_id=2), "bart"),
}
ROPE = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 3.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    "yarn-mscale-untruncated": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                                "mscale": 0.8, "mscale_all_dim": 1.2, "beta_fast": 16.0, "truncate": False},
}
for _name, _params in ROPE.items():
    CASES[f"llama-rope-{_name}"] = (T.LlamaForCausalLM, T.LlamaConfig,
                                    _llama(rope_parameters={**_params, "rope_theta": 10000.0}), "llama")


def hf_outputs(model, enc: dict, arch: str, dec: dict | None = None) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        if arch == "bart":
            out = model(**enc, decoder_input_ids=dec["input_ids"], decoder_attention_mask=dec["attention_mask"])
            return {"logits": out.logits}
        out = model(**enc)
    if isinstance(model, (T.BertModel, T.RobertaModel)):
        return {"hidden": out.last_hidden_state, "pooled": out.pooler_output}
    if isinstance(model, T.BertForPreTraining):
        return {"logits": out.prediction_logits, "nsp": out.seq_relationship_logits}
    return {"logits": out.logits}


def lm_outputs(lm, enc: dict, arch: str, dec: dict | None = None) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        if arch == "bart":
            return {"logits": lm(enc["input_ids"], enc["attention_mask"], decoder_input_ids=dec["input_ids"],
                                 decoder_attention_mask=dec["attention_mask"])}
        hidden = lm.encode(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
        out = {"logits": lm.head_logits(hidden, enc["attention_mask"]), "hidden": hidden}
        if lm.pooler is not None:
            out["pooled"] = torch.tanh(lm.pooler(hidden[:, 0]))
        if lm.nsp is not None:
            out["nsp"] = lm.nsp_logits(hidden)
    return out


def compare(expected: dict, got: dict, enc: dict, dec: dict | None) -> dict[str, float]:
    diffs = {}
    for key, ref in expected.items():
        if key == "logits":
            mask = (dec or enc)["attention_mask"]
            diffs[key] = max_diff(ref, got[key], mask)
        elif key == "hidden":
            diffs[key] = max_diff(ref, got[key], enc["attention_mask"])
        else:  # per-sequence outputs (pooler, NSP)
            diffs[key] = float((ref - got[key]).abs().max())
    return diffs


def build(case: str, tmp_path, dtype=None, **save_kwargs):
    model_cls, config_cls, kwargs, tok_family = CASES[case]
    torch.manual_seed(0)
    model = randomize(model_cls(config_cls(**kwargs)))
    tok = hf_tokenizer(tok_family)
    assert len(tok) <= kwargs["vocab_size"]
    if dtype is not None:
        model = model.to(dtype)
    folder = save_hf(model, tok, tmp_path / "hf", **save_kwargs)
    arch = "bart" if case == "bart" else "other"
    enc = batch(tok)
    dec = batch(tok, list(reversed(TEXTS))) if arch == "bart" else None
    if case.startswith(("gpt2", "llama", "mistral", "qwen2", "bart")):
        enc.pop("token_type_ids", None)
    return model, tok, folder, arch, enc, dec


@pytest.mark.parametrize("case", list(CASES))
def test_parity_and_round_trip(case, tmp_path):
    hf_model, tok, folder, arch, enc, dec = build(case, tmp_path)
    expected = hf_outputs(hf_model, enc, arch, dec)

    lm = lmforge.load(folder)  # a Hugging Face folder loads directly
    assert lm.tokenizer is not None and lm.hf_source["model_type"] == hf_model.config.model_type
    diffs = compare(expected, lm_outputs(lm, enc, arch, dec), enc, dec)
    assert max(diffs.values()) <= TOL, diffs

    # lmforge -> HF: transformers loads every weight (no missing, no unexpected) with the same outputs
    out = to_hf(lm, tmp_path / "export")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (out / name).exists(), name
    arch_name = transformers.AutoConfig.from_pretrained(out).architectures[0]
    reloaded, info = getattr(transformers, arch_name).from_pretrained(out, output_loading_info=True)
    assert type(reloaded) is type(hf_model)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    diffs = compare(expected, hf_outputs(reloaded.eval(), enc, arch, dec), enc, dec)
    assert max(diffs.values()) <= TOL, diffs

    # -> lmforge again: the same model
    again = lmforge.load(out)
    assert again.config.to_dict() == {**lm.config.to_dict(), "name": again.config.name}
    diffs = compare(lm_outputs(lm, enc, arch, dec), lm_outputs(again, enc, arch, dec), enc, dec)
    assert max(diffs.values()) == 0.0, diffs
    # the tokenizer: lmforge's ids are AutoTokenizer's, before and after export
    ref = [transformers.AutoTokenizer.from_pretrained(folder)(t)["input_ids"] for t in TEXTS]
    assert [lm.tokenizer(t) for t in TEXTS] == ref
    assert [transformers.AutoTokenizer.from_pretrained(out)(t)["input_ids"] for t in TEXTS] == ref


def test_rope_frequencies_match_transformers_exactly():
    """lmforge's rope_parameters equals transformers' ROPE_INIT_FUNCTIONS bit for bit, per type."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from lmforge.model.blocks import rope_parameters

    for name, params in ROPE.items():
        for head_dim, theta in ((16, 10000.0), (64, 500000.0), (128, 1e6)):
            hf_config = T.LlamaConfig(**_llama(head_dim=head_dim, rope_parameters={**params, "rope_theta": theta}))
            ref_freq, ref_scale = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf_config, "cpu")
            lm_config = lmforge.convert.api.family_for("llama", "").to_lmforge(
                lmforge.convert.base.HFConfig(hf_config.to_dict(), "test"), {"lm_head.weight"}, "model.")
            freq, scale = rope_parameters(lm_config)
            assert torch.equal(freq, ref_freq.float()), (name, head_dim, (freq - ref_freq).abs().max())
            assert scale == pytest.approx(ref_scale, abs=0), (name, head_dim)


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16])
def test_half_precision_weights_and_compute_dtype(stored, tmp_path):
    hf_model, tok, folder, arch, enc, dec = build("llama-gqa-headdim-biases", tmp_path, dtype=stored)
    lm = lmforge.load(folder)  # compute dtype: the stored one
    assert lm.dtype == stored and lm.config.head_dim == 32
    lm32 = lmforge.load(folder, dtype="fp32")  # or chosen at load
    assert lm32.dtype == torch.float32
    ref = T.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    expected = hf_outputs(ref, enc, arch)
    assert max(compare(expected, lm_outputs(lm32, enc, arch), enc, None).values()) <= TOL
    # in half precision lmforge's error (vs fp32) is no worse than transformers' own in the same dtype
    half = lm_outputs(lm, enc, arch)["logits"]
    hf_half = hf_outputs(T.LlamaForCausalLM.from_pretrained(folder, dtype=stored).eval(), enc, arch)["logits"]
    assert half.dtype == hf_half.dtype == stored
    err_lm = max_diff(expected["logits"], half, enc["attention_mask"])
    err_hf = max_diff(expected["logits"], hf_half, enc["attention_mask"])
    assert err_lm <= 2 * err_hf + 1e-2, (err_lm, err_hf)
    # export keeps the dtype it is asked for
    out = to_hf(lm32, tmp_path / "out16", dtype="bf16")
    assert lmforge.convert.api.lio.read_json(out / "config.json")["dtype"] == "bfloat16"
    assert lmforge.load(out).dtype == torch.bfloat16


def test_sharded_safetensors_both_ways(tmp_path):
    hf_model, tok, folder, arch, enc, dec = build("gpt2", tmp_path, max_shard_size="40KB")
    assert (folder / SAFETENSORS_INDEX).exists() and len(list(folder.glob("*.safetensors"))) > 2
    lm = lmforge.load(folder)
    expected = hf_outputs(hf_model, enc, arch)
    assert max(compare(expected, lm_outputs(lm, enc, arch), enc, None).values()) <= TOL
    out = to_hf(lm, tmp_path / "sharded", max_shard_size="30KB")
    index = lmforge.convert.api.lio.read_json(out / SAFETENSORS_INDEX)
    assert len(set(index["weight_map"].values())) > 2 and not (out / "model.safetensors").exists()
    reloaded = T.GPT2LMHeadModel.from_pretrained(out).eval()
    assert max(compare(expected, hf_outputs(reloaded, enc, arch), enc, None).values()) <= TOL


def test_pytorch_model_bin_weights_only(tmp_path):
    hf_model, tok, folder, arch, enc, dec = build("bert-mlm", tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save(hf_model.state_dict(), folder / "pytorch_model.bin")
    lm = lmforge.load(folder)
    expected = hf_outputs(hf_model, enc, arch)
    assert max(compare(expected, lm_outputs(lm, enc, arch), enc, None).values()) <= TOL


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc/self/maps")
def test_loaded_weights_are_the_mapped_file(tmp_path):
    """No second copy: a parameter stored as lmforge uses it is a view of the memory-mapped safetensors file,
    and a transformed one (GPT-2's transposed, split c_attn) is a fresh contiguous tensor."""
    hf_model, tok, folder, arch, enc, dec = build("gpt2", tmp_path)
    lm = lmforge.load(folder)
    maps = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5].endswith("model.safetensors"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                maps.append((lo, hi))
    assert maps, "model.safetensors is not memory-mapped"

    def in_file(t):
        return any(lo <= t.data_ptr() < hi for lo, hi in maps)

    assert in_file(lm.tok_embed.weight) and in_file(lm.decoder.pos_embed.weight)
    assert in_file(lm.decoder.layers[0].attn_norm.weight)
    q = lm.decoder.layers[0].attn.q_proj.weight
    assert not in_file(q) and q.is_contiguous()
    assert lm.lm_head.weight is lm.tok_embed.weight
    # the loaded model trains and saves as any lmforge model (copy-on-write: the file is untouched)
    before = (folder / "model.safetensors").read_bytes()
    with torch.no_grad():
        lm.tok_embed.weight.add_(1.0)
    assert (folder / "model.safetensors").read_bytes() == before
    lmforge.save(lm, tmp_path / "lm")
    assert torch.equal(lmforge.load(tmp_path / "lm").tok_embed.weight, lm.tok_embed.weight)


@pytest.mark.parametrize("base_cls, case", [(T.GPT2Model, "gpt2"), (T.LlamaModel, "llama-gqa-headdim-biases"),
                                            (T.Qwen2Model, "qwen2"), (T.RobertaModel, "roberta-mlm")])
def test_base_models_without_prefix_or_head(base_cls, case, tmp_path):
    """GPT2Model / LlamaModel / ... checkpoints (no `transformer.` / `model.` prefix, no head): the same final
    hidden states."""
    _, config_cls, kwargs, tok_family = CASES[case]
    torch.manual_seed(0)
    hf = randomize(base_cls(config_cls(**kwargs)))
    tok = hf_tokenizer(tok_family)
    folder = save_hf(hf, tok, tmp_path / "base")
    enc = batch(tok)
    if base_cls is not T.RobertaModel:
        enc.pop("token_type_ids", None)
    lm = lmforge.load(folder)
    with torch.no_grad():
        ref = hf(**enc).last_hidden_state
        got = lm.encode(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
    assert max_diff(ref, got, enc["attention_mask"]) <= TOL


def test_transformers_4_config_format(tmp_path):
    """Configs written by transformers 4.x (rope_theta + rope_scaling with 'type') load the same."""
    hf_model, tok, folder, arch, enc, dec = build("llama-rope-llama3", tmp_path)
    path = folder / "config.json"
    data = json.loads(path.read_text())
    params = data.pop("rope_parameters")
    data["rope_theta"] = params.pop("rope_theta")
    data["rope_scaling"] = {"type": params.pop("rope_type"), **params}
    data["torch_dtype"] = data.pop("dtype")
    path.write_text(json.dumps(data))
    lm = lmforge.load(folder)
    assert lm.config.rope_scaling["rope_type"] == "llama3" and lm.config.rope_scaling["factor"] == 8.0
    assert max(compare(hf_outputs(hf_model, enc, arch), lm_outputs(lm, enc, arch), enc, None).values()) <= TOL
    # and the export writes both spellings, so 4.x-era tools read it as well
    exported = json.loads((to_hf(lm, tmp_path / "out") / "config.json").read_text())
    assert exported["rope_scaling"]["rope_type"] == "llama3" and exported["rope_theta"] == 10000.0
    assert exported["rope_parameters"]["rope_theta"] == 10000.0


def test_legacy_bert_layout_gamma_beta_and_pooler_with_mlm(tmp_path):
    """Original BERT/RoBERTa checkpoints: LayerNorm gamma/beta names, and an MLM checkpoint that also stores
    the pooler. lmforge reads both as transformers does, and the export keeps the pooler."""
    from safetensors.torch import load_file, save_file

    hf_model, tok, folder, arch, enc, dec = build("bert-mlm", tmp_path)
    torch.manual_seed(1)
    pooler = torch.nn.Linear(48, 48)
    tensors = load_file(folder / "model.safetensors")
    tensors = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in tensors.items()}
    tensors["bert.pooler.dense.weight"] = pooler.weight.detach().clone()
    tensors["bert.pooler.dense.bias"] = pooler.bias.detach().clone()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    lm = lmforge.load(folder)
    assert lm.config.pooler and lm.config.mlm_transform
    assert max(compare(hf_outputs(hf_model, enc, arch), lm_outputs(lm, enc, arch), enc, None).values()) <= TOL
    out = to_hf(lm, tmp_path / "out")
    base = T.BertModel.from_pretrained(out).eval()  # AutoModel on the export gets the stored pooler
    with torch.no_grad():
        pooled = base(**enc).pooler_output
        expected = torch.tanh(pooler(hf_model.bert(**enc).last_hidden_state[:, 0]))
    assert float((pooled - expected).abs().max()) <= TOL
