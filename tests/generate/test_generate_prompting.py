"""Prompting helpers for evaluation: k-shot prompts, candidate scoring by log-likelihood, multiple choice."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import ConfigError, LmforgeError
from lmforge.generate import choose, few_shot_prompt, generate, score_continuations

from _generate_models import lmforge_decoder, lmforge_seq2seq

EXAMPLES = [("2 + 2", "4"), ("3 + 5", "8"), {"input": "1 + 6", "output": "7"}]



def test_few_shot_prompt():
    assert few_shot_prompt("4 + 4", EXAMPLES, k=2) == "Q: 2 + 2\nA: 4\n\nQ: 3 + 5\nA: 8\n\nQ: 4 + 4\nA:"
    assert few_shot_prompt("4 + 4") == "Q: 4 + 4\nA:"  # zero-shot
    p = few_shot_prompt("sky", [("grass", "green")], template="{input} is {output}.", instruction="Colours:",
                        separator="\n")
    assert p == "Colours:\ngrass is green.\nsky is"
    picked = few_shot_prompt("x", EXAMPLES, k=2, seed=1)
    assert picked == few_shot_prompt("x", EXAMPLES, k=2, seed=1) and picked.count("Q: ") == 3
    for bad in (dict(k=5), dict(k=-1), dict(template="{input}")):
        with pytest.raises(ConfigError):
            few_shot_prompt("x", EXAMPLES, **bad)


def _manual_logprob(model, prompt_ids, cand_ids) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt_ids + cand_ids]))[0].float(), -1)
    return sum(logp[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(cand_ids))


def test_score_continuations_decoder():
    model = lmforge_decoder("llama")
    tok = model.tokenizer
    prompt = "Once upon a time"
    greedy = generate(model, prompt, max_new_tokens=4, ignore_eos=True)
    candidates = [greedy, " there was a cat", " the moon", " 12345 #$%"]
    scores = score_continuations(model, prompt, candidates, batch_size=3)
    prompt_ids = tok.encode(prompt, add_special_tokens=True)
    for c, s in zip(candidates, scores):
        ids = tok.encode(c, add_special_tokens=False)
        assert s.num_tokens == len(ids) and s.num_chars == len(c)
        assert s.logprob == pytest.approx(_manual_logprob(model, prompt_ids, ids), abs=1e-4)
    greedy_ids = generate(model, prompt, max_new_tokens=4, ignore_eos=True, tokenizer=None,
                          return_dict=True).token_ids
    by_ids = score_continuations(model, prompt_ids, [greedy_ids, [5, 6, 7]])
    assert by_ids[0].is_greedy and not by_ids[1].is_greedy
    assert by_ids[0].logprob == pytest.approx(_manual_logprob(model, prompt_ids, greedy_ids), abs=1e-4)
    assert choose(model, prompt_ids, [[5, 6, 7, 8], greedy_ids, [9, 10, 11, 12]]) == 1
    assert choose(model, prompt, candidates, normalize="chars") in range(4)


def test_score_continuations_seq2seq():
    model = lmforge_seq2seq()
    tok = model.tokenizer
    source = "The quick brown fox"
    candidates = [" jumps", " sleeps all day"]
    scores = score_continuations(model, source, candidates)
    src = torch.tensor([tok.encode(source, add_special_tokens=True)])
    for c, s in zip(candidates, scores):
        ids = tok.encode(c, add_special_tokens=False)
        dec = torch.tensor([[model.config.decoder_start_token_id] + ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(src, decoder_input_ids=dec)[0].float(), -1)
        assert s.logprob == pytest.approx(sum(logp[i, t].item() for i, t in enumerate(ids)), abs=1e-4)


def test_scoring_errors():
    model = lmforge_decoder("gpt")
    with pytest.raises(LmforgeError, match="no candidates"):
        score_continuations(model, "x", [])
    with pytest.raises(LmforgeError, match="no tokens"):
        score_continuations(model, "x", ["", " a"])
    with pytest.raises(LmforgeError, match="context"):
        score_continuations(model, "The cat sat on the mat. " * 40, [" yes"])
    assert score_continuations(model, "The cat sat on the mat. " * 40, [" yes"], truncate="left")[0].num_tokens
    with pytest.raises(ConfigError, match="normalize"):
        choose(model, "x", [" a"], normalize="length")
