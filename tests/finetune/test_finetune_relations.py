"""`lmforge finetune relations` and `lmforge extract`: SpERT JSON read and checked, entity token spans, the strict
relation score, a tiny model that learns entities and relations, and triples + graphs from raw text."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET

import pytest

import lmforge
from lmforge.apps.extract import layout, sentences_of, words_of
from lmforge.cli import main
from lmforge.errors import DataError
from lmforge.finetune.relations import (RelationSentence, encode, finetune_relations, read_spert, relation_report)
from lmforge.tokenizer import train_tokenizer

from _finetune_data import TINY, src, tiny_options

PEOPLE = ["anna smith", "bob jones", "carla diaz", "dan lee", "eva moss", "frank ng"]
ORGS = ["acme", "globex", "initech", "umbrella"]
CITIES = ["paris", "berlin", "tokyo", "lima"]
TEMPLATES = [  # (words, entities (start, end, type), relations (head, tail, type))
    ("{p} works for {o} .", [("p", "Peop"), ("o", "Org")], [(0, 1, "Work_For")]),
    ("{o} is based in {c} .", [("o", "Org"), ("c", "Loc")], [(0, 1, "OrgBased_In")]),
    ("{p} lives in {c} and likes {o} .", [("p", "Peop"), ("c", "Loc"), ("o", "Org")], [(0, 1, "Live_In")]),
    ("yesterday {p} visited {c} .", [("p", "Peop"), ("c", "Loc")], []),
]


def sentences(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text, slots, relations = rng.choice(TEMPLATES)
        values = {"p": rng.choice(PEOPLE), "o": rng.choice(ORGS), "c": rng.choice(CITIES)}
        words, entities = [], []
        for piece in text.split():
            if piece.startswith("{"):
                slot = piece[1]
                kind = dict(slots)[slot]
                entities.append({"type": kind, "start": len(words), "end": len(words) + len(values[slot].split())})
                words += values[slot].split()
            else:
                words.append(piece)
        # entities are listed in the template's slot order; relations index them
        out.append({"tokens": words, "entities": entities,
                    "relations": [{"type": t, "head": h, "tail": tl} for h, tl, t in relations]})
    return out


def test_spert_files_are_checked(tmp_path):
    good = sentences(5, 0)
    (tmp_path / "good.json").write_text(json.dumps(good))
    items = read_spert(str(tmp_path / "good.json"))
    assert len(items) == 5 and all(isinstance(e, tuple) for s in items for e in s.entities)
    for bad, message in ((dict(good[0], entities=[{"type": "X", "start": 3, "end": 2}]), "typed word span"),
                         (dict(good[0], relations=[{"type": "R", "head": 0, "tail": 9}]), "two different entities"),
                         ({"entities": []}, "tokens"),
                         (dict(good[0], entities=[{"type": "X", "start": 0, "end": 2},
                                                  {"type": "Y", "start": 1, "end": 3}]), "overlap")):
        (tmp_path / "bad.json").write_text(json.dumps([bad]))
        with pytest.raises(DataError, match=message):
            read_spert(str(tmp_path / "bad.json"))
    (tmp_path / "dict.json").write_text("{}")
    with pytest.raises(DataError, match="a list of sentences"):
        read_spert(str(tmp_path / "dict.json"))


def test_entity_token_spans_cover_their_words():
    tok = train_tokenizer([" ".join(s["tokens"]) for s in sentences(200, 1)], "wordpiece", 600, "encoder",
                          progress=False)
    item = RelationSentence("xavier-unknownword smith works for globex .".split(), [(0, 2, "Peop"), (4, 5, "Org")],
                            [(0, 1, "Work_For")])
    rows, _ = encode(tok, [item], max_length=32, tags=["O", "B-Org", "B-Peop", "I-Org", "I-Peop"],
                     relation_types=["Work_For"], use_types=False)
    (hs, he), (ts, te) = rows.spans[0]
    assert tok.decode(rows.ids[0][hs:he].tolist()).replace(" ", "") == "xavier-unknownwordsmith"
    assert tok.decode(rows.ids[0][ts:te].tolist()).strip() == "globex"
    assert rows.pair_labels[0] == {(0, 1): 1}


def test_strict_relation_score():
    gold = [RelationSentence(["a", "b", "c"], [(0, 1, "P"), (2, 3, "O")], [(0, 1, "W")])]
    right = [RelationSentence(["a", "b", "c"], [(0, 1, "P"), (2, 3, "O")], [(0, 1, "W")])]
    wrong_type = [RelationSentence(["a", "b", "c"], [(0, 1, "L"), (2, 3, "O")], [(0, 1, "W")])]
    wrong_span = [RelationSentence(["a", "b", "c"], [(0, 2, "P"), (2, 3, "O")], [(0, 1, "W")])]
    assert relation_report(gold, right)["relations"]["f1"] == 1.0
    assert relation_report(gold, wrong_type)["relations"]["f1"] == 0.0  # an entity type wrong: the relation is wrong
    assert relation_report(gold, wrong_span)["relations"]["f1"] == 0.0
    assert relation_report(gold, wrong_span)["entities"]["correct"] == 1


def test_tiny_model_learns_and_extract_writes_triples_and_graphs(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps(sentences(400, 2)))
    (tmp_path / "dev.json").write_text(json.dumps(sentences(60, 3)))
    tok = train_tokenizer([" ".join(s["tokens"]) for s in sentences(400, 2)], "wordpiece", 600, "encoder",
                          progress=False)
    tok.save(tmp_path / "tok")
    result = finetune_relations(model="bert-mini", train=str(tmp_path / "train.json"), dev=str(tmp_path / "dev.json"),
                                out=str(tmp_path / "run"), source=src(str(tmp_path / "tok"), set_=TINY + ["dropout=0"]),
                                options=tiny_options(max_steps=200, lr=3e-3, eval_every=50, save_every=50))
    assert result["dev"]["entities"]["f1"] >= 0.9 and result["dev"]["relations"]["f1"] >= 0.8, result["headline"]
    model = lmforge.load(tmp_path / "run")
    assert model.config.head == "relations" and model.config.relation_labels == ["Live_In", "OrgBased_In", "Work_For"]
    text = tmp_path / "news.txt"
    text.write_text("bob jones works for initech . Acme is based in tokyo.\nyesterday eva moss visited lima .\n")
    out = tmp_path / "triples.jsonl"
    args = ["extract", str(tmp_path / "run"), "--input", str(text), "--out", str(out), "--graph",
            str(tmp_path / "g.graphml"), "--graph", str(tmp_path / "g.dot"), "--graph", str(tmp_path / "g.png")]
    assert main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["sentence"] for r in records] == ["bob jones works for initech .", "Acme is based in tokyo.",
                                                "yesterday eva moss visited lima ."]
    source = text.read_text()
    for r in records:
        for e in r["entities"]:
            assert source[e["start"]:e["end"]] == e["text"]  # character spans in the input file
    first = records[0]["relations"]
    assert [(x["head"]["text"], x["type"], x["tail"]["text"]) for x in first] == [("bob jones", "Work_For", "initech")]
    graph = ET.parse(tmp_path / "g.graphml").getroot()
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    assert len(graph.findall(".//g:edge", ns)) >= 1 and len(graph.findall(".//g:node", ns)) >= 4
    assert (tmp_path / "g.dot").read_text().startswith("digraph") and "Work_For" in (tmp_path / "g.dot").read_text()
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    assert main(args) == 2  # nothing is overwritten
    assert main(["extract", str(tmp_path / "run"), "--input", str(text), "--out", str(tmp_path / "t.csv")]) == 2
    assert main(["extract", str(tmp_path / "tok"), "--input", str(text), "--out", str(tmp_path / "t2.jsonl")]) == 2


def test_sentences_and_words_keep_offsets():
    text = "Dr. Smith went home. Then he slept!\nA new line here"
    found = list(sentences_of(text))
    assert [s for _, s in found] == ["Dr. Smith went home.", "Then he slept!", "A new line here"]
    for offset, s in found:
        assert text[offset:offset + len(s)] == s
    assert [w for w, _, _ in words_of("U.S.-based O'Neil's co-op, 3.5%")] == [
        "U", ".", "S", ".", "-", "based", "O'Neil's", "co-op", ",", "3", ".", "5", "%"]


def test_graph_layout_keeps_separate_components_readable():
    import numpy as np

    edges = [(0, 1), (0, 2), (1, 2), (3, 4), (5, 6), (7, 8)]  # four sentences' worth of separate components
    pos = layout(9, edges)
    assert pos.shape == (9, 2) and pos.min() >= 0 and pos.max() <= 1
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)[np.triu_indices(9, 1)]
    assert dist.min() > 0.15  # without the pull to the centre: 0.03 (the labels of a pair overlap)
