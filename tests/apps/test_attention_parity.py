"""Attention weights from lmforge's written-out path equal transformers' `output_attentions=True` (within 1e-5) on
tiny random GPT-2, BERT and Llama (grouped-query) checkpoints loaded through lmforge's converter, on a right-padded
batch; the hidden states are unchanged by recording them."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lmforge  # noqa: E402
from lmforge.model import record_attention  # noqa: E402

from _hf_fixtures import batch, hf_tokenizer, randomize, save_hf  # noqa: E402

T = transformers
CASES = {
    "gpt2": (T.GPT2LMHeadModel, T.GPT2Config, dict(vocab_size=512, n_embd=48, n_layer=2, n_head=4, n_positions=64,
                                                    bos_token_id=0, eos_token_id=0), "gpt2"),
    "bert": (T.BertModel, T.BertConfig, dict(vocab_size=512, hidden_size=48, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=96,
                                             max_position_embeddings=64, pad_token_id=0), "bert"),
    "llama-gqa": (T.LlamaForCausalLM, T.LlamaConfig, dict(vocab_size=512, hidden_size=64, intermediate_size=96,
                                                          num_hidden_layers=2, num_attention_heads=4,
                                                          num_key_value_heads=2, max_position_embeddings=128,
                                                          bos_token_id=1, eos_token_id=2, pad_token_id=2), "llama"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_attention_weights_equal_transformers(name, tmp_path):
    model_cls, config_cls, kwargs, family = CASES[name]
    torch.manual_seed(0)
    hf = randomize(model_cls(config_cls(**kwargs, attn_implementation="eager")))
    tok = hf_tokenizer(family)
    folder = save_hf(hf, tok, tmp_path / name)
    inputs = batch(tok, ["Hello world! The quick brown fox.", "x y", "the cat sits on the mat"])
    with torch.no_grad():
        ref = hf(**inputs, output_attentions=True).attentions
        ours = lmforge.load(str(folder), dtype="fp32").eval()
        plain = ours.encode(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))
        with record_attention(ours) as rec:
            hidden = ours.encode(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))
    got = rec["encoder"] or rec["decoder"]
    assert len(got) == len(ref) == 2
    mask = inputs["attention_mask"].bool()
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        real = mask[:, None, :, None] & mask[:, None, None, :]  # padding rows/columns differ by convention only
        diff = (a - b.float()).abs().masked_fill(~real, 0)
        assert float(diff.max()) < 1e-5, float(diff.max())
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))
    torch.testing.assert_close(hidden, plain, atol=1e-5, rtol=1e-5)
