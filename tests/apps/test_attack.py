"""Adversarial probes: TextAttack's summary computed right, word attacks (masked-LM and embedding-neighbour
candidates under the similarity constraint) and character attacks on a tiny trained classifier, the report folder
and the augmented training table of `lmforge attack`, and its errors."""

from __future__ import annotations

import json

import pytest

import lmforge
from lmforge.apps.attack import AttackConfig, AttackResult, Candidates, run_attack, summarize
from lmforge.cli import main
from lmforge.errors import ConfigError
from lmforge.finetune.classify import finetune_classify

from _finetune_data import TINY, encoder_tokenizer, sentiment_rows, src, tiny_options, write_table


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack")
    encoder_tokenizer().save(root / "tok")
    train = write_table(root / "train.tsv", sentiment_rows(300, 0))
    dev = write_table(root / "dev.tsv", sentiment_rows(40, 1))
    finetune_classify(model="bert-mini", train=train, dev=dev, out=str(root / "run"),
                      source=src(str(root / "tok"), set_=TINY + ["dropout=0"]), options=tiny_options(max_steps=80))
    tok = encoder_tokenizer()
    mlm = lmforge.build_model(lmforge.ModelConfig.from_name("bert-mini", vocab_size=tok.vocab_size, n_layer=1,
                                                            d_model=32, n_head=2, context_length=64))
    lmforge.save(mlm, root / "mlm", tokenizer=tok)
    return {"root": root, "run": root / "run", "train": train, "dev": dev, "mlm": root / "mlm"}


def test_summary_follows_textattack():
    results = [AttackResult(0, "1", "a b c d", "1", "success", words_changed=1, words=4, queries=10),
               AttackResult(1, "1", "a b", "1", "failure", words=2, queries=6),
               AttackResult(2, "0", "a", "1", "skipped", words=1, queries=1),
               AttackResult(3, "0", "a b c d e", "0", "success", words_changed=2, words=5, queries=20)]
    s = summarize(results)
    assert s["original_accuracy"] == 0.75 and s["accuracy_under_attack"] == 0.25
    assert s["attack_success_rate"] == pytest.approx(2 / 3)
    assert s["words_perturbed_pct"] == pytest.approx(100 * (1 / 4 + 2 / 5) / 2)
    assert s["queries_per_example"] == pytest.approx(12.0)


def test_char_edits_are_single_edits():
    c = Candidates(AttackConfig(method="char", max_candidates=100), None, None)
    edits = c.char_edits("movie")
    assert edits and "movie" not in edits
    for e in edits:
        assert abs(len(e) - 5) <= 1
    assert c.char_edits("a") == [] and c.char_edits("12") == []


@pytest.mark.parametrize("method,mlm", [("word", False), ("word", True), ("char", False)])
def test_attacks_flip_a_tiny_classifier(clf, method, mlm):
    model = lmforge.load(clf["run"])
    rows = [line.split("\t") for line in open(clf["dev"]).read().splitlines()[1:]]
    labels, texts = [r[0] for r in rows], [r[1] for r in rows]
    results, s = run_attack(model, texts, labels, AttackConfig(method=method, min_similarity=0.0, max_change=0.5),
                            mlm=lmforge.load(clf["mlm"]) if mlm else None, similarity=model)
    assert s["examples"] == 40 and s["original_accuracy"] >= 0.8
    if method == "word" and not mlm:
        # the classifier's own embedding neighbours of a sentiment word are words of the same sentiment: a
        # synonym-like substitution set, which this tiny classifier survives
        neighbours = Candidates(AttackConfig(), None, model).from_embeddings("lovely")
        assert {"great", "wonderful", "superb", "brilliant"} & set(neighbours[:5]), neighbours
    else:  # an untrained masked LM proposes random words; character edits make unknown words
        assert s["attack_success_rate"] > (0.05 if mlm else 0.2), s
        assert s["accuracy_under_attack"] < s["original_accuracy"]
    for r in results:
        if r.status == "success":
            assert r.adversarial != r.original and r.adversarial_prediction != r.label
            assert 1 <= r.words_changed <= max(1, int(0.5 * r.words))
            assert r.queries >= 2
    strict, _ = run_attack(model, texts, labels, AttackConfig(method=method, min_similarity=0.9999),
                           similarity=model) if method == "word" else (None, None)
    if strict is not None:  # an impossible similarity keeps every text
        assert all(r.status != "success" for r in strict)


def test_attack_command_report_and_augmented_table(clf, tmp_path, capsys):
    out = tmp_path / "attack"
    assert main(["attack", str(clf["run"]), "--data", clf["dev"], "--out", str(out), "--limit", "15", "--method",
                 "char,word", "--augment", clf["train"], "--min-similarity", "0", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["attacks"]) == {"char", "word"} and report["examples"] == 15
    lines = [json.loads(x) for x in (out / "word.jsonl").read_text().splitlines()]
    assert len(lines) == 15 and {"original", "adversarial", "status", "queries", "changes"} <= set(lines[0])
    adversarial = (out / "adversarial.tsv").read_text().splitlines()
    augmented = (out / "augmented.tsv").read_text().splitlines()
    assert adversarial[0] == augmented[0] == "label\ttext"
    assert len(augmented) == 301 + len(adversarial) - 1 == 300 + report["augmented"]["adversarial"] + 1
    assert main(["finetune", "classify", "--model", str(clf["run"]), "--train", str(out / "augmented.tsv"), "--dev",
                 clf["dev"], "--out", str(tmp_path / "adv-run"), "--max-steps", "2", "--no-progress"]) == 0
    # errors: one line, exit 2, nothing overwritten
    assert main(["attack", str(clf["run"]), "--data", clf["dev"], "--out", str(out), "--limit", "2"]) == 2
    assert main(["attack", str(clf["run"]), "--data", clf["dev"], "--out", str(tmp_path / "a2"), "--method", "x"]) == 2
    capsys.readouterr()
    assert main(["attack", str(clf["mlm"]), "--data", clf["dev"], "--out", str(tmp_path / "a3")]) == 2
    assert "; attack needs a model fine-tuned with `lmforge finetune classify`" in capsys.readouterr().err
    assert main(["attack", str(clf["run"]), "--data", clf["dev"], "--out", str(tmp_path / "a4"), "--max-change",
                 "2"]) == 2
    with pytest.raises(ConfigError, match="masked-LM head"):
        Candidates(AttackConfig(), lmforge.load(clf["run"]), None)
