"""GGUF export and import with tiny models: an f32 export loaded by `transformers` (gguf_file=) gives lmforge's
logits (<= 1e-4) for a Llama-style (GQA, untied) and a GPT-2-style model and its tokenizer gives lmforge's ids on
1,000 strings; loaded back by lmforge it is the original, bit for bit; every type loads back within its stated KL
bound; a SentencePiece-style vocabulary, a tied Llama, Qwen2 biases, rope scaling and a BERT encoder survive."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

import lmforge  # noqa: E402
from lmforge.convert.gguf import GGUFFile, from_gguf, to_gguf  # noqa: E402
from lmforge.convert.gguf.names import LAYOUTS, permute_rotary, unpermute_rotary  # noqa: E402
from lmforge.convert.gguf.quants import TYPES  # noqa: E402

from _gguf_fixtures import PROMPTS, byte_bpe, compare, perturbed, sentencepiece_bpe, varied_strings  # noqa: E402

TOL = 1e-4
# KL(original || type) bound per type, nats/token, for these tiny random models (measured: q8_0 1-2e-4)
KL_BOUND = {"f32": 0.0, "f16": 1e-5, "bf16": 2e-4, "q8_0": 1e-3, "q6_k": 1e-2, "q5_1": 0.05, "q5_0": 0.05,
            "q4_k": 0.1, "q4_1": 0.2, "q4_0": 0.2}


def logits(model, tok, prompts=PROMPTS) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(torch.tensor([tok.encode(p, add_special_tokens=True)]))[0] for p in prompts]


def hf_logits(folder, name, tok, prompts=PROMPTS) -> list[torch.Tensor]:
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32).eval()
    with torch.no_grad():
        return [hf(torch.tensor([tok.encode(p, add_special_tokens=True)])).logits[0] for p in prompts]


def same_shape(a: lmforge.ModelConfig, b: lmforge.ModelConfig) -> bool:
    """The same model, up to the name, the token ids GGUF takes from the tokenizer, and None-means-default fields."""
    resolved = ("qkv_bias", "attn_out_bias", "mlp_bias", "lm_head_bias", "attn_dropout")
    ignore = {"name", "pad_token_id", "bos_token_id", "eos_token_id", *resolved}
    da, db = a.to_dict(), b.to_dict()
    return {k: v for k, v in da.items() if k not in ignore} == {k: v for k, v in db.items() if k not in ignore} and \
        all(a.resolved(k) == b.resolved(k) for k in resolved)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A Llama-style model (GQA 8/4 heads, untied, SwiGLU) with lmforge's byte-level BPE and ChatML, exported f32."""
    tok = byte_bpe()
    config = lmforge.ModelConfig.from_name("llama-tiny", n_layer=2, vocab_size=tok.vocab_size, d_ff=512)
    model = perturbed(config, tok)
    folder = tmp_path_factory.mktemp("gguf-llama")
    to_gguf(model, folder / "llama.f32.gguf")
    return model, folder


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A GPT-2-style model: learned positions (1024, what transformers' GGUF loader assumes), LayerNorm, tanh GELU."""
    tok = byte_bpe()
    config = lmforge.ModelConfig.from_name("gpt2-124m", n_layer=2, d_model=128, n_head=4, vocab_size=tok.vocab_size,
                                           bos_token_id=None, eos_token_id=None)
    model = perturbed(config, tok)
    folder = tmp_path_factory.mktemp("gguf-gpt2")
    to_gguf(model, folder / "gpt2.f32.gguf")
    return model, folder


# ---- names and layouts -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", sorted(LAYOUTS))
def test_name_tables_are_llama_cpps(arch):
    """Our GGUF <-> Hugging Face tables are the inverse of gguf.get_tensor_name_map (what convert_hf_to_gguf uses)."""
    layout = LAYOUTS[arch]
    mapping = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], 3)
    for gguf_name, hf_name in layout.names(3, layout.prefix).items():
        base, kind = hf_name.rsplit(".", 1)
        assert mapping.get_name(base) + "." + kind == gguf_name, (gguf_name, hf_name)


def test_rotary_permutation_is_an_exact_inverse():
    w = torch.randn(3 * 64, 40).numpy()
    assert np.array_equal(unpermute_rotary(permute_rotary(w, 3), 3), w)
    row = permute_rotary(np.arange(2 * 8, dtype=np.float32)[:, None], 2)[:, 0]  # 2 heads of 8: halves interleaved
    assert row.tolist() == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


# ---- parity with transformers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["llama", "gpt2"])
def test_f32_export_loads_in_transformers_with_our_logits(case, request):
    model, folder = request.getfixturevalue(case)
    name = f"{case}.f32.gguf"
    ours, theirs = logits(model, model.tokenizer), hf_logits(folder, name, model.tokenizer)
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) <= TOL


@pytest.mark.parametrize("case", ["llama", "gpt2"])
def test_f32_export_loads_back_as_the_original(case, request):
    model, folder = request.getfixturevalue(case)
    back = lmforge.load(folder / f"{case}.f32.gguf")
    assert same_shape(back.config, model.config)
    mine, theirs = model.state_dict(), back.state_dict()
    assert sorted(mine) == sorted(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert back.gguf_source["architecture"] == case and back.gguf_source["tensor_types"] == {"F32": len(
        GGUFFile(folder / f"{case}.f32.gguf").tensors)}


def test_tokenizer_round_trips_through_gguf(llama):
    """lmforge's byte-level BPE: our re-import and transformers' GGUF tokenizer give the original ids on 1,000
    strings (with and without BOS); roles and chat template survive. transformers' byte-level GGUF tokenizer adds its
    own <|endoftext|> when the vocabulary lacks it (an extra id past the embedding), so strings spelling it differ
    there for that reason alone (docs/export.md)."""
    model, folder = llama
    tok = model.tokenizer
    back = lmforge.load(folder / "llama.f32.gguf").tokenizer
    hf = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file="llama.f32.gguf")
    texts = varied_strings()
    assert [back.encode(s) for s in texts] == [tok.encode(s) for s in texts]
    assert [back.encode(s, True) for s in texts] == [tok.encode(s, True) for s in texts]
    assert [back.decode(tok.encode(s)) for s in texts] == [tok.decode(tok.encode(s)) for s in texts]
    plain = [s for s in texts if "<|endoftext|>" not in s]
    assert len(plain) > 950
    assert [hf(s)["input_ids"] for s in plain] == [tok.encode(s, True) for s in plain]
    assert back.special == tok.special and back.chat_template == tok.chat_template == hf.chat_template


@pytest.mark.parametrize("qtype", list(TYPES))
def test_every_type_loads_back_within_its_kl_bound(qtype, llama, tmp_path):
    model, _ = llama
    done = to_gguf(model, tmp_path / f"llama.{qtype}.gguf", type=qtype)
    wanted = TYPES[qtype][0]
    assert done.tensor_types.get(wanted, 0) >= 14 or wanted == "F32"  # 2 layers x 7 matrices (+ embedding, head)
    assert done.fallbacks == {}
    back = from_gguf(done.path)
    stats = [compare(a, b) for a, b in zip(logits(model, model.tokenizer), logits(back, back.tokenizer))]
    assert max(s["kl_mean"] for s in stats) <= KL_BOUND[qtype], stats
    if qtype != "f32":
        assert GGUFFile(done.path).type_name("blk.0.attn_q.weight") == wanted
        assert GGUFFile(done.path).type_name("blk.0.attn_norm.weight") == "F32"


def test_q8_0_kl_bound_and_size(llama, tmp_path):
    """q8_0: KL(original || q8_0) <= 1e-3 nats/token, top-1 agreement >= 0.85 (a random model's logits
    are nearly flat), about 3.4x smaller than f32 here."""
    model, folder = llama
    done = to_gguf(model, tmp_path / "q8.gguf", type="q8_0")
    back = from_gguf(done.path)
    stats = [compare(a, b) for a, b in zip(logits(model, model.tokenizer), logits(back, back.tokenizer))]
    assert max(s["kl_mean"] for s in stats) <= 1e-3
    assert sum(s["top1"] for s in stats) / len(stats) >= 0.85
    assert done.bytes < (folder / "llama.f32.gguf").stat().st_size / 3


def test_kquant_rows_fall_back_as_llama_quantize(tmp_path):
    """Rows of 96 values (not a multiple of 256): q4_k -> q5_0, q6_k -> q8_0; rows of 80 (not of 32) -> f16."""
    tok = byte_bpe()
    model = perturbed(lmforge.ModelConfig.from_name("llama-tiny", n_layer=1, d_model=96, n_head=4, n_kv_head=2,
                                                    d_ff=80, vocab_size=tok.vocab_size), tok)
    done = to_gguf(model, tmp_path / "m.gguf", type="q4_k")
    assert done.tensor_types == {"Q5_0": 8, "F32": 3, "F16": 1}  # ffn_down has rows of d_ff = 80
    assert sum(done.fallbacks.values()) == 9 and any("multiple of 256" in k for k in done.fallbacks)
    assert to_gguf(model, tmp_path / "m6.gguf", type="q6_k").tensor_types["Q8_0"] == 8
    with pytest.raises(lmforge.LmforgeError, match=r"cannot be Q4_K.*would write them as Q5_0"):
        to_gguf(model, tmp_path / "strict.gguf", type="q4_k", fallback=False)
    assert not (tmp_path / "strict.gguf").exists()


# ---- other layouts -------------------------------------------------------------------------------------------------

def test_sentencepiece_vocabulary_and_tied_llama(tmp_path):
    """A Llama-2-style tokenizer (Metaspace, byte fallback, scores) and tied embeddings: transformers' GGUF tokenizer
    and our re-import in transformers mode give the original ids; in llama.cpp mode the ids differ only where
    llama.cpp prepends "▁" and transformers does not (text opening with whitespace, text after a special token)."""
    tok = sentencepiece_bpe()
    model = perturbed(lmforge.ModelConfig.from_name("llama-tiny", n_layer=2, vocab_size=tok.vocab_size, d_ff=512,
                                                    tie_embeddings=True), tok)
    to_gguf(model, tmp_path / "spm.gguf")
    assert "output.weight" not in GGUFFile(tmp_path / "spm.gguf").tensors
    texts = varied_strings()
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="spm.gguf")
    assert [hf(s)["input_ids"] for s in texts] == [tok.encode(s, True) for s in texts]
    as_hf = from_gguf(tmp_path / "spm.gguf", tokenizer_mode="transformers").tokenizer
    assert [as_hf.encode(s, True) for s in texts] == [tok.encode(s, True) for s in texts]
    as_cpp = lmforge.load(tmp_path / "spm.gguf")
    differ = [s for s in texts if as_cpp.tokenizer.encode(s) != tok.encode(s)]
    assert differ and all(s[:1].isspace() or s[:1] == "\ufeff" or any(t in s for t in ("<s>", "</s>", "<unk>"))
                          for s in differ)
    ours, theirs = logits(model, tok), hf_logits(tmp_path, "spm.gguf", tok)
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) <= TOL
    assert as_cpp.config.tie_embeddings and torch.equal(as_cpp.lm_head.weight, model.lm_head.weight)


def test_qwen2_biases_and_llama_rope_scaling(tmp_path):
    """q/k/v biases only -> llama.cpp's qwen2 (rotate-half, not permuted): transformers' logits; Llama 3 rope
    scaling -> rope_freqs.weight, and linear scaling -> rope.scaling.*: both load back as the original."""
    tok = byte_bpe()
    base = lmforge.ModelConfig.from_name("llama-tiny", n_layer=2, vocab_size=tok.vocab_size, d_ff=512)
    qwen = perturbed(base.replace(qkv_bias=True), tok)
    done = to_gguf(qwen, tmp_path / "qwen.gguf")
    assert done.architecture == "qwen2"
    ours, theirs = logits(qwen, tok), hf_logits(tmp_path, "qwen.gguf", tok)
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) <= TOL
    for scaling in ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 64},
                    {"rope_type": "linear", "factor": 4.0}):
        model = perturbed(base.replace(rope_scaling=scaling), tok)
        path = to_gguf(model, tmp_path / f"{scaling['rope_type']}.gguf").path
        back = from_gguf(path)
        assert back.config.rope_scaling == scaling and same_shape(back.config, model.config)
        assert all(torch.equal(a, b) for a, b in zip(logits(model, tok), logits(back, tok)))
    assert "rope_freqs.weight" in GGUFFile(tmp_path / "llama3.gguf").tensors


def test_bert_encoder_round_trip(tmp_path):
    """An encoder goes out as llama.cpp's bert ([CLS] as BOS, [SEP] as EOS, token types, pooling) and back with
    the same hidden states and tokenizer; its MLM head has no place in llama.cpp's BERT and is listed as dropped."""
    tok = byte_bpe(kind="encoder")
    config = lmforge.ModelConfig.from_name("bert-mini", n_layer=2, vocab_size=tok.vocab_size, dropout=0.0,
                                           pooling="mean")
    model = perturbed(config, tok)
    done = to_gguf(model, tmp_path / "bert.gguf", type="f32")
    assert done.architecture == "bert" and any("cls.predictions" in d for d in done.dropped)
    back = lmforge.load(done.path)
    assert back.config.pooling == "mean" and not back.config.mlm_transform
    for text in PROMPTS:
        ids = torch.tensor([tok.encode(text, add_special_tokens=True)])
        assert back.tokenizer.encode(text, add_special_tokens=True) == ids[0].tolist()
        with torch.no_grad():
            assert torch.equal(back.encode(ids), model.encode(ids))
    assert back.tokenizer.encode_pair("a b", "c") == tok.encode_pair("a b", "c")
    texts = varied_strings()
    assert [back.tokenizer.encode(s, True) for s in texts] == [tok.encode(s, True) for s in texts]
