import math

import pytest
import sacrebleu

from lmforge import metrics
from lmforge.errors import LmforgeError


@pytest.mark.parametrize("tags,entities", [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    (["O", "I-PER", "I-PER", "O"], [("PER", 1, 2)]),  # I- without B- opens an entity (CoNLL semantics)
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),  # a type change ends the entity
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)]),  # B- always starts a new one
    (["I-PER", "O", "I-PER"], [("PER", 0, 0), ("PER", 2, 2)]),
    (["B-ORG", "I-ORG", "I-ORG"], [("ORG", 0, 2)]),
    (["S-PER", "B-LOC", "E-LOC", "O"], [("PER", 0, 0), ("LOC", 1, 2)]),  # BIOES
    (["O", "O"], []),
])
def test_entities_follow_conll_semantics(tags, entities):
    assert metrics.get_entities(tags) == entities


def test_entity_scores_are_micro_averaged_over_entities_as_seqeval():
    # seqeval's README example: MISC is found with a wrong start, PER exactly -> P = R = F1 = 0.5
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    r = metrics.entity_report(gold, pred)
    assert (r["precision"], r["recall"], r["f1"]) == (0.5, 0.5, 0.5)
    assert r["per_type"]["MISC"]["f1"] == 0.0 and r["per_type"]["PER"]["f1"] == 1.0
    # hand-computed: 3 gold entities, 4 predicted, 2 correct (a type mismatch and an I- start count as wrong)
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O", "B-LOC"]]
    r = metrics.entity_report(gold, pred)
    assert r["correct_entities"] == 2 and r["predicted_entities"] == 4 and r["gold_entities"] == 3
    assert math.isclose(r["precision"], 0.5) and math.isclose(r["recall"], 2 / 3)
    assert math.isclose(r["f1"], 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert r["token_accuracy"] == 4 / 7
    with pytest.raises(LmforgeError, match="sentence 1"):
        metrics.entity_report([["O"]], [["O", "O"]])


def test_classification_report_macro_f1_and_confusion_by_hand():
    gold = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "b", "a", "b", "c", "c"]
    r = metrics.classification_report(gold, pred, ["a", "b", "c"])
    assert r["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]  # rows gold, columns predicted
    assert r["accuracy"] == 4 / 6
    a, b, c = (r["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"]) == (1.0, 2 / 3) and math.isclose(a["f1"], 0.8)
    assert (b["precision"], b["recall"], b["f1"]) == (0.5, 0.5, 0.5)
    assert (c["precision"], c["recall"]) == (0.5, 1.0) and math.isclose(c["f1"], 2 / 3)
    assert math.isclose(r["macro_f1"], (0.8 + 0.5 + 2 / 3) / 3)
    assert math.isclose(r["weighted_f1"], (3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    # a class never predicted has precision 0 (not NaN)
    r = metrics.classification_report(["x", "y"], ["x", "x"], ["x", "y"])
    assert r["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_confusion_matrix_png(tmp_path):
    path = metrics.plot_confusion([[5, 1], [2, 7]], ["neg", "pos"], tmp_path / "c.png", "dev")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bleu_equals_sacrebleu_corpus_bleu():
    hyps = ["the cat sat on the mat", "a quick brown dog", "hello there world"]
    refs = ["the cat is on the mat", "the quick brown fox", "hello world"]
    ours = metrics.bleu(hyps, refs)
    assert ours["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert ours["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    with pytest.raises(LmforgeError, match="pair up"):
        metrics.bleu(hyps, refs[:2])


def test_rouge_by_hand():
    r = metrics.rouge_pair("The cat sat on the mat.", "the cat is on the mat")
    assert math.isclose(r["rouge1"]["f1"], 5 / 6)  # the x2, cat, on, mat (clipped counts)
    assert math.isclose(r["rouge2"]["f1"], 3 / 5)  # the cat, on the, the mat
    assert math.isclose(r["rougeL"]["f1"], 5 / 6)  # LCS: the cat on the mat
    r = metrics.rouge_pair("a b c d", "a c")
    assert math.isclose(r["rouge1"]["precision"], 0.5) and r["rouge1"]["recall"] == 1.0
    assert r["rouge2"]["f1"] == 0.0 and math.isclose(r["rougeL"]["f1"], 2 * 0.5 / 1.5)
    corpus = metrics.rouge(["a b", "x"], ["a b", "y"])
    assert corpus["rouge1"] == 0.5 and corpus["rougeL"] == 0.5
    assert metrics.rouge_tokens("Größe: 10 Äpfel!") == ["größe", "10", "äpfel"]
