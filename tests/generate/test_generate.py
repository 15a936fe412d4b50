"""Decoding: the KV cache against full recomputation, batching against single prompts, the sampling filters,
penalties, stop strings, streaming, outputs and bad input. Real (tiny) models and locally trained tokenizers."""

from __future__ import annotations

import pytest
import torch

import lmforge
from lmforge.errors import ConfigError, LmforgeError
from lmforge.tokenizer import Tokenizer
from lmforge.generate import GenerationOutput, generate
from lmforge.generate import processors as P
from lmforge.generate.text import IncrementalDecoder, StopMatcher
from lmforge.model import kernels

from _generate_models import MEMORIZED, byte_bpe, lmforge_decoder, lmforge_seq2seq, reciting_model

BEAM = dict(num_beams=4, length_penalty=0.8, repetition_penalty=1.3, no_repeat_ngram_size=3)
SAMPLE = dict(do_sample=True, temperature=0.9, top_k=40, top_p=0.95, seed=7)
PROMPTS = ["Once upon a time", "The cat", "To be or not to be, that is"]



@pytest.fixture(scope="module")
def gpt():
    return lmforge_decoder("gpt")


@pytest.fixture(scope="module")
def llama():
    return lmforge_decoder("llama")


@pytest.fixture(scope="module")
def seq2seq():
    return lmforge_seq2seq()


# ---- the KV cache ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gpt", "llama"])
@pytest.mark.parametrize("options", [{}, BEAM, SAMPLE], ids=["greedy", "beam", "sample"])
def test_cached_equals_uncached_decoder(kind, options, gpt, llama):
    model = gpt if kind == "gpt" else llama
    cached = generate(model, PROMPTS, max_new_tokens=24, ignore_eos=True, return_dict=True, **options)
    full = generate(model, PROMPTS, max_new_tokens=24, ignore_eos=True, return_dict=True, use_cache=False, **options)
    assert [c.token_ids for c in cached] == [f.token_ids for f in full]
    for c, f in zip(cached, full):
        assert len(c.token_ids) == 24
        assert c.logprobs == pytest.approx(f.logprobs, abs=1e-4)


@pytest.mark.parametrize("options", [{}, BEAM], ids=["greedy", "beam"])
def test_cached_equals_uncached_encoder_decoder(options, seq2seq):
    sources = ["The quick brown fox jumps over the lazy dog.", "To be or not"]
    cached = generate(seq2seq, sources, max_new_tokens=20, ignore_eos=True, **options)
    full = generate(seq2seq, sources, max_new_tokens=20, ignore_eos=True, use_cache=False, **options)
    assert cached == full
    assert all(isinstance(t, str) for t in cached)


def test_encoder_runs_once_and_prompt_in_one_pass(seq2seq, gpt):
    calls = []
    hook = seq2seq.encoder.register_forward_hook(lambda m, args, out: calls.append(tuple(out.shape)))
    try:
        generate(seq2seq, "The quick brown fox", max_new_tokens=10, ignore_eos=True, num_beams=3)
    finally:
        hook.remove()
    assert len(calls) == 1  # the encoder ran once for ten decoder steps and three beams

    lengths = []  # decoder-only: the prompt in one forward pass, then one token per step
    hook = gpt.decoder.register_forward_hook(lambda m, args, out: lengths.append(out.shape[1]))
    n_prompt = len(gpt.tokenizer.encode("Once upon a time", add_special_tokens=True))
    try:
        with kernels.disabled(), torch.profiler.profile(record_shapes=True) as prof:  # the model's own forward
            generate(gpt, "Once upon a time", max_new_tokens=5, ignore_eos=True)
        assert lengths == [n_prompt, 1, 1, 1, 1]
        lengths.clear()
        if kernels.ops() is not None:  # the fused CPU step: the prompt through the forward, then a call per layer
            with torch.profiler.profile() as fused:
                generate(gpt, "Once upon a time", max_new_tokens=5, ignore_eos=True)
            assert lengths == [n_prompt]
            steps = [e for e in fused.events() if e.name == "lmforge_kernels::decode_layer"]
            assert len(steps) == 4 * gpt.config.n_layer
    finally:
        hook.remove()
    # the output layer (vocab x d_model weight) only ever sees one position
    head = [tuple(map(tuple, e.input_shapes)) for e in prof.events()
            if any(tuple(s) == tuple(gpt.lm_head.weight.shape) for s in e.input_shapes)
            and e.name in ("aten::linear", "mkldnn::_linear_pointwise", "aten::addmm", "aten::mm")]
    assert len(head) >= 5 and all(shapes[0][:-1] in ((1,), (1, 1)) for shapes in head)


# ---- batching -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gpt", "llama"])
@pytest.mark.parametrize("options", [{}, BEAM, SAMPLE, dict(num_beams=3, num_return_sequences=2)],
                         ids=["greedy", "beam", "sample", "beam-n2"])
def test_batched_left_padded_equals_alone(kind, options, gpt, llama):
    model = gpt if kind == "gpt" else llama
    batched = generate(model, PROMPTS, max_new_tokens=20, **options)
    alone = [generate(model, p, max_new_tokens=20, **options) for p in PROMPTS]
    assert batched == alone
    in_twos = generate(model, PROMPTS, max_new_tokens=20, batch_size=2, **options)
    assert in_twos == alone


def test_batched_encoder_decoder_equals_alone(seq2seq):
    sources = ["The quick brown fox jumps over the lazy dog.", "To be", "Once upon a time there was"]
    assert generate(seq2seq, sources, max_new_tokens=15) == [generate(seq2seq, s, max_new_tokens=15) for s in sources]


# ---- sampling -------------------------------------------------------------------------------------------

def test_seed_reproducible_and_batch_independent(gpt):
    a = generate(gpt, "Once upon a time", max_new_tokens=20, do_sample=True, seed=3)
    b = generate(gpt, "Once upon a time", max_new_tokens=20, do_sample=True, seed=3)
    c = generate(gpt, ["The cat", "Once upon a time"], max_new_tokens=20, do_sample=True, seed=3)[1]
    others = {generate(gpt, "Once upon a time", max_new_tokens=20, do_sample=True, seed=s) for s in range(4, 9)}
    assert a == b == c
    assert len(others | {a}) > 1
    torch.manual_seed(11)
    d = generate(gpt, "Once upon a time", max_new_tokens=20, do_sample=True)
    torch.manual_seed(11)
    assert generate(gpt, "Once upon a time", max_new_tokens=20, do_sample=True) == d  # seed=None follows torch
    several = generate(gpt, "Once upon a time", max_new_tokens=20, do_sample=True, seed=3, num_return_sequences=3)
    assert len(several) == 3 and several[0] == a and len(set(several)) > 1


def test_top_k_1_and_temperature_0_equal_greedy(gpt, llama):
    for model in (gpt, llama):
        greedy = generate(model, PROMPTS, max_new_tokens=20)
        assert generate(model, PROMPTS, max_new_tokens=20, do_sample=True, top_k=1, seed=5) == greedy
        assert generate(model, PROMPTS, max_new_tokens=20, do_sample=True, temperature=0.0) == greedy


def _first_step_probs(model, prompt: str, temperature: float = 1.0) -> torch.Tensor:
    ids = torch.tensor([model.tokenizer.encode(prompt, add_special_tokens=True)])
    with torch.no_grad():
        return (model(ids)[0, -1] / temperature).softmax(-1)


@pytest.mark.parametrize("filter_", [dict(top_p=0.5), dict(top_k=3), dict(min_p=0.1)],
                         ids=["top_p", "top_k", "min_p"])
def test_tokens_outside_the_filter_are_never_sampled(filter_, gpt):
    probs = _first_step_probs(gpt, "The cat", 1.5)
    order = probs.argsort(descending=True)
    if "top_p" in filter_:  # the nucleus: the most likely tokens until their mass reaches p
        mass = probs[order].cumsum(0)
        allowed = set(order[: int((mass < 0.5).sum()) + 1].tolist())
    elif "top_k" in filter_:
        allowed = set(order[:3].tolist())
    else:
        allowed = set(torch.nonzero(probs >= 0.1 * probs.max()).view(-1).tolist())
    assert 1 < len(allowed) < 30  # the test means something: a real choice, a real exclusion
    seen = set()
    for seed in range(120):
        ids = generate(gpt, gpt.tokenizer.encode("The cat", add_special_tokens=True), max_new_tokens=1,
                       do_sample=True, temperature=1.5, seed=seed, **{"top_k": 0, **filter_})
        seen.add(ids[0])
    assert seen <= allowed
    assert len(seen) >= 2


def test_filters_match_their_definitions():
    scores = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    keep = lambda s: torch.isfinite(s)[0].tolist()  # noqa: E731
    assert keep(P.top_k_filter(scores, 2)) == [True, True, False, False, False]
    assert keep(P.top_p_filter(scores, 0.7)) == [True, True, False, False, False]  # 0.5 + 0.2 reaches 0.7
    assert keep(P.top_p_filter(scores, 0.71)) == [True, True, True, False, False]
    assert keep(P.top_p_filter(scores, 0.01)) == [True, False, False, False, False]  # always one token
    assert keep(P.min_p_filter(scores, 0.3)) == [True, True, True, False, False]  # p >= 0.3 * 0.5
    assert P.apply_temperature(scores, 2.0).allclose(scores / 2)
    # repetition penalty: positive scores divided, negative multiplied, unseen untouched (CTRL / transformers)
    s = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert P.repetition_penalty(s, seen, 2.0).tolist() == [[1.0, -4.0, 1.0]]
    assert P.banned_ngram_tokens([1, 2, 3, 1, 2], 3) == {3}
    assert P.banned_ngram_tokens([1, 2, 3, 1, 2], 2) == {3}
    assert P.banned_ngram_tokens([5, 6], 3) == set()


def test_no_repeat_ngram_and_repetition_penalty(gpt):
    prompt_ids = gpt.tokenizer.encode("Once upon a time", add_special_tokens=True)
    for n in (2, 3):
        for options in ({}, dict(num_beams=3)):
            out = generate(gpt, prompt_ids, max_new_tokens=40, ignore_eos=True, no_repeat_ngram_size=n, **options)
            seq = prompt_ids + out
            grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
            assert len(grams) == len(set(grams))
    plain = generate(gpt, prompt_ids, max_new_tokens=40, ignore_eos=True)
    penalized = generate(gpt, prompt_ids, max_new_tokens=40, ignore_eos=True, repetition_penalty=10.0)
    assert len(set(penalized)) > len(set(plain))  # the plain greedy text repeats itself
    assert len(set(penalized)) == len(penalized)  # a huge penalty forbids any repeat


# ---- beam search ----------------------------------------------------------------------------------------

def test_beam_search_scores_and_return_sequences(gpt):
    outs = generate(gpt, "The cat", max_new_tokens=12, num_beams=5, num_return_sequences=3, return_dict=True)
    assert len(outs) == 3 and all(isinstance(o, GenerationOutput) for o in outs)
    scores = [o.score for o in outs]
    assert scores == sorted(scores, reverse=True)
    for o in outs:  # the beam score is the sum of log-probabilities over length ** length_penalty (1.0)
        assert o.score == pytest.approx(sum(o.logprobs) / len(o.token_ids), abs=1e-4)
    greedy = generate(gpt, "The cat", max_new_tokens=12, return_dict=True)
    assert outs[0].score * len(outs[0].token_ids) >= greedy.score - 1e-4  # beam search finds at least greedy's


# ---- outputs --------------------------------------------------------------------------------------------

def test_token_ids_in_token_ids_out(gpt):
    tok = gpt.tokenizer
    ids = [tok.encode(p, add_special_tokens=True) for p in PROMPTS]
    text = generate(gpt, PROMPTS[0], max_new_tokens=10, ignore_eos=True)
    new = generate(gpt, ids[0], max_new_tokens=10, ignore_eos=True)
    assert isinstance(new, list) and all(isinstance(i, int) for i in new) and len(new) == 10
    assert tok.decode(ids[0] + new, skip_special_tokens=True).endswith(text)
    assert generate(gpt, ids, max_new_tokens=10, ignore_eos=True) == [
        generate(gpt, i, max_new_tokens=10, ignore_eos=True) for i in ids]
    # a left-padded LongTensor with its mask gives prompt + new tokens, as transformers does
    T = max(map(len, ids))
    x = torch.full((3, T), tok.pad_id)
    mask = torch.zeros_like(x)
    for i, row in enumerate(ids):
        x[i, T - len(row):] = torch.tensor(row)
        mask[i, T - len(row):] = 1
    out = generate(gpt, x, attention_mask=mask, max_new_tokens=10, ignore_eos=True)
    assert out.shape == (3, T + 10) and torch.equal(out[:, :T], x)
    assert out[:, T:].tolist() == generate(gpt, ids, max_new_tokens=10, ignore_eos=True)


def test_logprobs_are_the_models(gpt):
    out = generate(gpt, "Once upon a time", max_new_tokens=8, ignore_eos=True, return_dict=True,
                   repetition_penalty=1.5)
    prompt = gpt.tokenizer.encode("Once upon a time", add_special_tokens=True)
    seq = torch.tensor([prompt + out.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(gpt(seq)[0].float(), -1)
    expected = [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(out.token_ids)]
    assert out.logprobs == pytest.approx(expected, abs=1e-4)
    assert out.finish_reason == "length" and out.prompt_tokens == len(prompt)
    assert out.score == pytest.approx(sum(expected), abs=1e-3)


def test_eos_ends_a_row_and_finish_reasons(gpt):
    tok = gpt.tokenizer
    first = generate(gpt, "The cat", max_new_tokens=1, return_dict=True).token_ids[0]
    out = generate(gpt, ["The cat", "Once upon a time"], max_new_tokens=10, eos_token_id=first, return_dict=True)
    assert out[0].token_ids == [first] and out[0].finish_reason == "eos"
    assert out[1].finish_reason in ("length", "eos")
    ids = generate(gpt, torch.tensor([tok.encode("The cat", add_special_tokens=True)] * 2), max_new_tokens=5,
                   eos_token_id=first, pad_token_id=tok.pad_id)
    assert ids.shape[1] == len(tok.encode("The cat", add_special_tokens=True)) + 1  # all rows ended at once


# ---- stop strings and streaming -------------------------------------------------------------------------

def test_stop_strings(gpt):
    full = generate(gpt, "Once upon a time", max_new_tokens=30, ignore_eos=True)
    stop = full[5:8]
    assert stop and full.find(stop) == 5
    out = generate(gpt, "Once upon a time", max_new_tokens=30, ignore_eos=True, stop=[stop], return_dict=True)
    assert out.text == full[:5] and out.finish_reason == "stop"
    assert len(out.token_ids) < 30
    streamed = list(generate(gpt, "Once upon a time", max_new_tokens=30, ignore_eos=True, stop=[stop], stream=True))
    assert "".join(streamed) == full[:5]
    beam = generate(gpt, "Once upon a time", max_new_tokens=30, ignore_eos=True, num_beams=2, stop=[stop],
                    return_dict=True)
    assert stop not in beam.text


def test_stop_matcher_holds_back_partial_matches():
    m = StopMatcher(["STOP", "\n\n"])
    shown = [m.feed(p) for p in ["Hello S", "T", "a", "y\n", "x\n", "\nrest"]]
    assert shown == ["Hello ", "", "STa", "y", "\nx", ""]
    assert m.stopped and m.text == "Hello STay\nx"


def test_streaming_never_splits_a_character():
    model, ids = reciting_model()
    tok = model.tokenizer
    # the test means something: some tokens of the sentence are pieces of a character
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    prompt = ids[:3]
    text = generate(model, prompt, max_new_tokens=40, tokenizer=tok, return_dict=True).text
    assert text == MEMORIZED[len(tok.decode(prompt, skip_special_tokens=True)):]  # it recites the sentence
    pieces = list(generate(model, tok.decode(prompt, skip_special_tokens=True), max_new_tokens=40, stream=True))
    assert len(pieces) > 5
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text
    # the incremental decoder alone, token by token, on Chinese and emoji
    dec = IncrementalDecoder(tok, [])
    out = [dec.push([i]) for i in tok.encode("中文测试，你好世界 🙂🚀👍🏽", add_special_tokens=False)]
    assert all("\ufffd" not in p for p in out) and "".join(out) + dec.flush() == "中文测试，你好世界 🙂🚀👍🏽"


def test_streaming_keeps_spaces_of_sentencepiece_tokenizers(tmp_path):
    from _generate_models import hf_folder

    model = lmforge.load(hf_folder("llama", tmp_path))
    tok = model.tokenizer
    text = "The cat sat on the mat. 你好，世界！"
    ids = tok.encode(text, add_special_tokens=False)
    dec = IncrementalDecoder(tok, tok.encode("Once", add_special_tokens=True))
    pieces = [dec.push([i]) for i in ids] + [dec.flush()]
    assert "".join(pieces) == " " + text  # the space the first token carries is kept
    streamed = list(generate(model, "Once upon a", max_new_tokens=15, stream=True, ignore_eos=True))
    assert "".join(streamed) == generate(model, "Once upon a", max_new_tokens=15, ignore_eos=True)


# ---- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, words", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(temperature=-1.0), "temperature"),
    (dict(num_beams=0), "num_beams"), (dict(top_k=-1), "top_k"), (dict(min_p=2.0), "min_p"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_return_sequences=2), "do_sample"), (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size"),
    (dict(early_stopping="sometimes"), "early_stopping"), (dict(truncate="right"), "truncate"),
    (dict(beams=4), "unknown generation option"), (dict(max_new_tokens=200), "max_new_tokens"),
])
def test_bad_options_raise_clear_errors(options, words, gpt):
    with pytest.raises(ConfigError) as e:
        generate(gpt, "The cat", **options)
    message = str(e.value)
    assert words in message and "\n" not in message


def test_bad_prompts(gpt, seq2seq):
    long_prompt = "The cat sat on the mat. " * 40
    with pytest.raises(LmforgeError, match="context of 96 tokens.*truncate"):
        generate(gpt, long_prompt, max_new_tokens=10)
    out = generate(gpt, long_prompt, max_new_tokens=10, truncate="left", return_dict=True, ignore_eos=True)
    assert out.prompt_tokens == 86 and len(out.token_ids) == 10
    no_bos = lmforge_decoder("gpt", tokenizer=Tokenizer(byte_bpe(), {"eos": "<|endoftext|>"}))
    assert no_bos.config.bos_token_id is None
    with pytest.raises(LmforgeError, match="empty and this model has no BOS"):
        generate(no_bos, "", max_new_tokens=5)
    assert isinstance(generate(gpt, "", max_new_tokens=5), str)  # with BOS, an empty prompt is fine
    with pytest.raises(LmforgeError, match="outside the vocabulary"):
        generate(gpt, [5, 10_000], max_new_tokens=5)
    with pytest.raises(LmforgeError, match="one prompt"):
        generate(gpt, ["a", "b"], stream=True)
    with pytest.raises(LmforgeError, match="prompts must be"):
        generate(gpt, 3.5)
    bert = lmforge.build_model(lmforge.ModelConfig.from_name("bert-mini", vocab_size=100, n_layer=1))
    with pytest.raises(LmforgeError, match="encoder-only"):
        generate(bert, [1, 2, 3])
    with pytest.raises(LmforgeError, match="context"):
        generate(seq2seq, "The cat", max_new_tokens=64)



def test_fast_inference_linear_path(gpt, monkeypatch):
    from lmforge.model import fast

    monkeypatch.setattr(fast, "MIN_WEIGHT", 0)  # this tiny model's layers are below the size that uses oneDNN
    x = torch.tensor([gpt.tokenizer.encode("Once upon a time", add_special_tokens=True)])
    with torch.no_grad():
        reference = gpt(x)
        with torch.profiler.profile() as prof, fast.fast_inference():
            fast_out = gpt(x)
    assert any("_linear_pointwise" in e.name for e in prof.events())  # oneDNN really ran
    assert torch.allclose(fast_out, reference, atol=1e-5)  # oneDNN's linear: the same up to float rounding
    # generate enters fast_inference itself: batched == alone and cached == uncached on the oneDNN path too
    alone = [generate(gpt, p, max_new_tokens=15, **BEAM) for p in PROMPTS]
    assert generate(gpt, PROMPTS, max_new_tokens=15, **BEAM) == alone
    assert generate(gpt, PROMPTS, max_new_tokens=15, use_cache=False, **BEAM) == alone
    with fast.fast_inference():  # a forward that needs gradients keeps nn.Linear's path, bit for bit
        with_grad = gpt(x)
    assert with_grad.requires_grad and torch.equal(with_grad.detach(), gpt(x).detach())


def test_beam_sampling_is_seeded_and_batch_independent(gpt):
    options = dict(num_beams=3, do_sample=True, temperature=1.2, top_k=20, seed=4, max_new_tokens=15)
    alone = [generate(gpt, p, **options) for p in PROMPTS]
    assert generate(gpt, PROMPTS, **options) == alone
    assert generate(gpt, PROMPTS, **options, use_cache=False) == alone
    assert len({generate(gpt, PROMPTS[0], **{**options, "seed": s}) for s in range(5)}) > 1
