"""The n-gram baseline: modified Kneser-Ney checked by hand on a tiny corpus, normalised in every context, the same
perplexity as the kenlm module on the same ARPA file, and `eval perplexity` on prepared data beside a Transformer's
data."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from lmforge.apps import ngram
from lmforge.cli import main
from lmforge.errors import DataError, LmforgeError

from _finetune_data import encoder_tokenizer


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "a b c d e f g".split()
    return [" ".join(rng.choice(words[:rng.randint(2, 7)]) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def model_of(lines, order):
    vocab = ngram.Vocabulary()
    return ngram.estimate(ngram.encode_words(vocab, lines, grow=True), vocab, order), vocab


def logp(model, vocab, context: list[str], word: str) -> float:
    """log10 p(word | context) by ARPA's rule, through the vectorised scorer (a sentence ending in `word`)."""
    sentence = [vocab.get(w) for w in context + [word]]
    stream, _ = ngram.padded_stream([sentence])
    scored = ngram.score_sentences(model, [sentence])["per_token"]
    return float(scored[len(sentence) - 1])


def test_bigram_by_hand():
    # <s> a b </s> / <s> a a </s> / <s> b </s>
    model, vocab = model_of(["a b", "a a", "b"], 2)
    # bigram counts: <s>a 2, <s>b 1, ab 1, aa 1, a</s> 1, b</s> 2 -> every count 1 or 2: fallback discounts
    d1, d2 = ngram.FALLBACK[0], ngram.FALLBACK[1]
    # unigram adjusted counts (distinct left contexts): a {<s>, a} = 2, b {<s>, a} = 2, </s> {a, b} = 2, <unk> 0
    uni_gamma = (d2 * 3) / 6
    p_uni = {w: (2 - d2) / 6 + uni_gamma / 4 for w in ("a", "b", "</s>")}
    # p(b | a): a's continuations a 1, b 1, </s> 1 -> total 3, three counts of 1
    gamma_a = 3 * d1 / 3
    expected = (1 - d1) / 3 + gamma_a * p_uni["b"]
    assert math.isclose(10 ** logp(model, vocab, ["a"], "b"), expected, rel_tol=1e-6)
    # p(b | <s>): <s> a 2, <s> b 1 -> (1 - d1) / 3 + (d2 + d1) / 3 * p(b)
    assert math.isclose(10 ** logp(model, vocab, [], "b"), (1 - d1) / 3 + (d2 + d1) / 3 * p_uni["b"], rel_tol=1e-6)
    # an unseen word: <unk> has only the uniform share
    assert math.isclose(10 ** ngram.score_sentences(model, [[2]])["per_token"][0],
                        (d1 + d2) / 3 * (uni_gamma / 4), rel_tol=1e-6)


@pytest.mark.parametrize("order", [2, 3, 5])
def test_probabilities_sum_to_one_in_every_context(order):
    model, vocab = model_of(corpus(), order)
    words = [w for w in vocab.words if w != "<s>"]
    for context in ([], ["a"], ["a", "b"], ["g", "g", "g"], ["zz", "a"], ["b", "c", "d", "e"]):
        total = sum(10 ** logp(model, vocab, context, w) for w in words)
        assert math.isclose(total, 1.0, rel_tol=1e-9), (context, total)


@pytest.mark.parametrize("order", [2, 3, 5])
def test_same_perplexity_as_kenlm_on_our_arpa(order, tmp_path):
    kenlm = pytest.importorskip("kenlm")
    lines = corpus(400, 1)
    model, vocab = model_of(lines, order)
    path = ngram.write_arpa(model, tmp_path / "m.arpa", {"unit": "words"})
    test = corpus(50, 2) + ["a z b", "unseen words only"]
    ours = ngram.perplexity_of(ngram.read_arpa(path), ngram.encode_words(ngram.read_arpa(path).vocab, test, False))
    reference = kenlm.Model(str(path))
    total = sum(reference.score(t, bos=True, eos=True) for t in test)
    count = sum(len(t.split()) + 1 for t in test)
    assert ours["tokens"] == count
    assert math.isclose(ours["ppl"], 10 ** (-total / count), rel_tol=1e-5)
    direct = ngram.perplexity_of(model, ngram.encode_words(vocab, test, False))
    assert math.isclose(direct["ppl"], ours["ppl"], rel_tol=1e-6)  # ARPA round trip


def test_ngram_cli_on_prepared_data_and_eval_perplexity(tmp_path):
    tok = encoder_tokenizer()
    tok.save(tmp_path / "tok")
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(corpus(200, 3)) + "\n")
    assert main(["prepare", str(text), "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "data"),
                 "--doc-split", "line"]) == 0
    arpa = tmp_path / "kn3.arpa"
    assert main(["ngram", "train", str(tmp_path / "data"), "--order", "3", "--out", str(arpa)]) == 0
    assert arpa.read_text().startswith("# lmforge ngram unit=ids")
    from lmforge.commands.evaluate import perplexity_cli

    result = perplexity_cli(str(arpa), data=str(tmp_path / "data"))
    assert 1 < result["ppl"] < 20 and result["objective"] == "3-gram"
    # the same ids counted from the text with --tokenizer give the same model
    arpa2 = tmp_path / "kn3b.arpa"
    assert main(["ngram", "train", str(text), "--tokenizer", str(tmp_path / "tok"), "--order", "3", "--out",
                 str(arpa2)]) == 0
    # nothing is overwritten without --overwrite
    assert main(["ngram", "train", str(text), "--order", "3", "--out", str(arpa)]) == 2
    # a words model on token ids, another tokenizer's data, a truncated file: one-line errors
    words = tmp_path / "words.arpa"
    assert main(["ngram", "train", str(text), "--order", "2", "--out", str(words)]) == 0
    with pytest.raises(DataError, match="counts words"):
        perplexity_cli(str(words), data=str(tmp_path / "data"))
    lines = arpa.read_text().splitlines()
    (tmp_path / "cut.arpa").write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    with pytest.raises(DataError, match="truncated"):
        perplexity_cli(str(tmp_path / "cut.arpa"), data=str(tmp_path / "data"))
    with pytest.raises(DataError, match="does not exist"):
        ngram.read_arpa(tmp_path / "missing.arpa")
    with pytest.raises(LmforgeError, match="n-gram model .*missing.arpa not found; make one with `lmforge ngram train"):
        perplexity_cli(str(tmp_path / "missing.arpa"), data=str(tmp_path / "data"))
    assert main(["ngram", "train", str(text), "--order", "12", "--out", str(tmp_path / "x.arpa")]) == 2


def test_stream_sentences_cut_at_document_boundaries():
    ids = np.array([1, 5, 6, 2, 1, 7, 2, 1, 2])
    assert [s.tolist() for s in ngram.sentences_from_stream(ids, {1, 2})] == [[5, 6], [7]]
