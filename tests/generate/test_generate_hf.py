"""Parity with `transformers.generate` on the same weights: tiny GPT-2 and Llama models built by transformers
(random weights, a tokenizer trained here), saved with `save_pretrained` and loaded with `lmforge.load(folder)`.
Greedy and beam search (num_beams=4, length_penalty=0.8, repetition_penalty=1.3, no_repeat_ngram_size=3) must
give the same tokens, for single prompts and left-padded batches."""

from __future__ import annotations

import warnings

import pytest
import torch

import lmforge
from lmforge.generate import generate

from _generate_models import hf_folder

transformers = pytest.importorskip("transformers")

TEXTS = ["Once upon a time", "The cat sat on", "To be or not to be, that is the question. The quick brown fox",
         "你好，世界！ emoji 🙂"]
SETTINGS = {
    "greedy": dict(),
    "greedy-penalties": dict(repetition_penalty=1.3, no_repeat_ngram_size=3),
    "beam": dict(num_beams=4, length_penalty=0.8, repetition_penalty=1.3, no_repeat_ngram_size=3),
    "beam-n3-early": dict(num_beams=4, num_return_sequences=3, early_stopping=True),
    "beam-never": dict(num_beams=3, length_penalty=1.5, early_stopping="never"),
}



@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request, tmp_path_factory):
    folder = hf_folder(request.param, tmp_path_factory.mktemp(request.param))
    hf_model = (transformers.GPT2LMHeadModel if request.param == "gpt2" else
                transformers.LlamaForCausalLM).from_pretrained(folder).eval()
    model = lmforge.load(folder)
    return request.param, hf_model, model


def _trim(rows: list[list[int]], eos: int) -> list[list[int]]:
    """Cut each row after its first EOS (transformers pads finished rows with pad or EOS)."""
    out = []
    for r in rows:
        out.append(r[: r.index(eos) + 1] if eos in r else r)
    return out


def _hf(hf_model, ids, mask, new, options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = hf_model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                pad_token_id=hf_model.config.pad_token_id or 0, **options)
    return out[:, ids.shape[1]:].tolist()


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), pad)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r)
        mask[i, T - len(r):] = 1
    return ids, mask


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_single_prompt_parity(setting, pair):
    kind, hf_model, model = pair
    options = SETTINGS[setting]
    eos = hf_model.config.eos_token_id
    for text in TEXTS:
        ids = model.tokenizer.encode(text, add_special_tokens=True)
        x = torch.tensor([ids])
        expected = _trim(_hf(hf_model, x, torch.ones_like(x), 30, options), eos)
        got = generate(model, ids, max_new_tokens=30, **options)
        got = [got] if options.get("num_return_sequences", 1) == 1 else got
        assert got == expected, f"{kind} {setting} {text!r}"


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_batched_left_padded_parity(setting, pair):
    kind, hf_model, model = pair
    options = SETTINGS[setting]
    eos = hf_model.config.eos_token_id
    rows = [model.tokenizer.encode(t, add_special_tokens=True) for t in TEXTS]
    assert len({len(r) for r in rows}) == len(rows)  # really padded
    ids, mask = _left_pad(rows, 0)
    expected = _trim(_hf(hf_model, ids, mask, 30, options), eos)
    n = options.get("num_return_sequences", 1)
    # lmforge's tensor interface, as transformers': left-padded ids + attention_mask, prompt + new tokens out
    out = generate(model, ids, attention_mask=mask, max_new_tokens=30, pad_token_id=0, **options)
    assert out.shape[0] == len(rows) * n and torch.equal(out[:, : ids.shape[1]], ids.repeat_interleave(n, 0))
    assert _trim(out[:, ids.shape[1]:].tolist(), eos) == expected, f"{kind} {setting}"
    # the list interface pads internally; every row is what it is alone
    lists = generate(model, rows, max_new_tokens=30, **options)
    flat = [r for group in lists for r in group] if n > 1 else lists
    assert flat == expected


def test_text_parity_and_cached_equals_full(pair):
    kind, hf_model, model = pair
    tok = model.tokenizer
    for text in TEXTS[:2]:
        ids = tok.encode(text, add_special_tokens=True)
        x = torch.tensor([ids])
        hf_ids = _hf(hf_model, x, torch.ones_like(x), 20, {})[0]
        hf_text = tok.decode(ids + hf_ids, skip_special_tokens=True)[len(tok.decode(ids, skip_special_tokens=True)):]
        assert generate(model, text, max_new_tokens=20) == hf_text
        assert generate(model, text, max_new_tokens=20, use_cache=False) == hf_text


def test_logprobs_match_transformers_scores(pair):
    kind, hf_model, model = pair
    ids = model.tokenizer.encode(TEXTS[0], add_special_tokens=True)
    x = torch.tensor([ids])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_out = hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=10, do_sample=False,
                                   output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    hf_logp = [torch.log_softmax(step[0].float(), -1)[t].item()
               for step, t in zip(hf_out.logits, hf_out.sequences[0, len(ids):].tolist())]
    out = generate(model, ids, max_new_tokens=10, return_dict=True)
    assert out.token_ids == hf_out.sequences[0, len(ids):].tolist()[: len(out.token_ids)]
    assert out.logprobs == pytest.approx(hf_logp[: len(out.token_ids)], abs=1e-4)


@pytest.mark.parametrize("setting", ["greedy", "beam", "beam-n3-early", "beam-never"])
def test_parity_when_sequences_end_early(setting, pair):
    """EOS set to a token these models emit often, so hypotheses finish at different lengths: exercises the
    finished-hypothesis bookkeeping, the length penalty and the early-stopping rules."""
    kind, hf_model, model = pair
    options = SETTINGS[setting]
    rows = [model.tokenizer.encode(t, add_special_tokens=True) for t in TEXTS]
    counts: dict[int, int] = {}
    for out in generate(model, rows, max_new_tokens=30, ignore_eos=True):
        for t in out:
            counts[t] = counts.get(t, 0) + 1
    eos = max(counts, key=counts.get)
    ids, mask = _left_pad(rows, 0)
    expected = _trim(_hf(hf_model, ids, mask, 30, dict(options, eos_token_id=eos)), eos)
    got = generate(model, rows, max_new_tokens=30, eos_token_id=eos, **options)
    flat = [r for group in got for r in group] if options.get("num_return_sequences", 1) > 1 else got
    assert flat == expected, f"{kind} {setting} eos={eos}"
    if setting != "beam-never":  # (length_penalty=1.5 favours full-length hypotheses)
        assert any(r[-1] == eos for r in flat)  # some sequences did end early


def test_parity_on_the_onednn_path(pair, monkeypatch):
    """These tiny layers stay on F.linear; lmforge's decoding of full-size models goes through oneDNN."""
    from lmforge.model import fast

    monkeypatch.setattr(fast, "MIN_WEIGHT", 0)
    test_batched_left_padded_parity("greedy-penalties", pair)
    test_batched_left_padded_parity("beam", pair)
    test_single_prompt_parity("beam", pair)
