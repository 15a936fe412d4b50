"""Export of models lmforge built and tokenizers lmforge trained: transformers' Auto classes load the export with
the same outputs as lmforge (max abs <= 1e-4, fp32, padded batch) and AutoTokenizer gives lmforge's ids; biases an
lmforge model lacks (bias=false) are written as zeros, which compute the same thing."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lmforge  # noqa: E402
from lmforge import ModelConfig, train_tokenizer  # noqa: E402
from lmforge.convert import to_hf  # noqa: E402

from _hf_fixtures import CORPUS, TEXTS, max_diff, randomize  # noqa: E402

T = transformers

NATIVE = {
    # name: (config, tokenizer kind, expected HF architecture)
    "gpt-bias-free": (ModelConfig(arch="decoder", vocab_size=400, context_length=64, d_model=48, n_layer=2, n_head=4,
                                  norm="layernorm", activation="gelu", pos="learned", bias=False,
                                  tie_embeddings=True), "bpe", "GPT2LMHeadModel"),
    "llama-tiny": (ModelConfig.from_name("llama-tiny", vocab_size=400, d_model=64, n_layer=2, n_head=4,
                                         n_kv_head=2, context_length=128), "bpe", "LlamaForCausalLM"),
    "bert-mini": (ModelConfig.from_name("bert-mini", vocab_size=800, d_model=48, n_layer=2, n_head=4,
                                        context_length=64), "wordpiece", "BertForMaskedLM"),
    "bart-shaped": (ModelConfig(arch="encoder_decoder", vocab_size=400, context_length=64, d_model=48, n_layer=2,
                                n_decoder_layer=1, n_head=4, norm="layernorm", norm_position="post",
                                activation="gelu", pos="learned", pos_offset=2, embed_norm=True, bias=False,
                                embed_scale=True, tie_embeddings=True), "unigram", "BartForConditionalGeneration"),
}


def _pad(ids: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, ids))
    return (torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
            torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]))


@pytest.mark.parametrize("name", list(NATIVE))
def test_native_export(name, tmp_path):
    config, kind, arch = NATIVE[name]
    tok = train_tokenizer(CORPUS, kind=kind, vocab_size=config.vocab_size, arch=config.arch, progress=False)
    config = config.replace(pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    torch.manual_seed(0)
    model = randomize(lmforge.build_model(config))
    model.tokenizer = tok
    lmforge.save(model, tmp_path / "lm")  # an lmforge checkpoint, as training writes it
    out = to_hf(tmp_path / "lm", tmp_path / "hf")

    hf_cls = getattr(transformers, arch)
    assert transformers.AutoConfig.from_pretrained(out).architectures == [arch]
    hf, info = hf_cls.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hf.eval()

    ids, src_mask = _pad([tok(t) for t in TEXTS], tok.pad_id)
    mask = src_mask
    with torch.no_grad():
        if config.arch == "encoder_decoder":
            dec_ids, dec_mask = _pad([[tok.bos_id] + tok.encode(t) for t in reversed(TEXTS)], tok.pad_id)
            ours = model(ids, mask, decoder_input_ids=dec_ids, decoder_attention_mask=dec_mask)
            theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_ids,
                        decoder_attention_mask=dec_mask).logits
            mask = dec_mask
        else:
            ours = model(ids, mask)
            theirs = hf(input_ids=ids, attention_mask=mask).logits
    assert max_diff(ours, theirs, mask) <= 1e-4

    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert [hf_tok(t)["input_ids"] for t in TEXTS] == [tok(t) for t in TEXTS]
    assert hf_tok.pad_token_id == tok.pad_id

    again = lmforge.load(out)  # and back: the zero biases change nothing
    with torch.no_grad():
        if config.arch == "encoder_decoder":
            back = again(ids, src_mask, decoder_input_ids=dec_ids, decoder_attention_mask=dec_mask)
        else:
            back = again(ids, mask)
    assert max_diff(ours, back, mask) <= 1e-5


def test_bias_free_gpt_generates_the_same_tokens(tmp_path):
    """transformers' greedy generation from the export continues exactly as the lmforge model does."""
    config, kind, _ = NATIVE["gpt-bias-free"]
    tok = train_tokenizer(CORPUS, kind=kind, vocab_size=config.vocab_size, progress=False)
    torch.manual_seed(1)
    model = randomize(lmforge.build_model(config), seed=1)
    model.tokenizer = tok
    out = to_hf(model, tmp_path / "hf")
    hf = T.AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = torch.tensor([tok("The quick brown")])
    ids = prompt
    with torch.no_grad():
        for _ in range(12):
            ids = torch.cat([ids, model(ids)[:, -1:].argmax(-1)], dim=1)
        theirs = hf.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_id)
    assert theirs.tolist() == ids.tolist()
