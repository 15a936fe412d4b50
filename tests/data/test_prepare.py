import gzip
import json

import numpy as np
import pytest

from lmforge.data.batches import PreparedData, TokenWindows
from lmforge.corpus import CorpusReader, read_pairs_jsonl
from lmforge.data.prepare import prepare_corpus, prepare_pairs, read_manifest
from lmforge.errors import DataError, LmforgeError
from lmforge.tokenizer import train_tokenizer

DOCS = [f"Document number {i}: the cat sat on mat {i % 7} while the dog ran {i % 5} laps." for i in range(300)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(DOCS, "bpe", 400, "decoder", progress=False)


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def test_jsonl_documents_are_framed_split_by_seed_and_counted(tmp_path, tok):
    src = write_jsonl(tmp_path / "c.jsonl", DOCS)
    m = prepare_corpus([str(src)], tok, tmp_path / "d", val_fraction=0.2, seed=3, progress=False)
    train = np.memmap(tmp_path / "d" / "train.bin", dtype=m["dtype"])
    val = np.memmap(tmp_path / "d" / "val.bin", dtype=m["dtype"])
    assert m["dtype"] == "uint16" and m["options"]["split_by"] == "docs"
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 300
    assert 30 < m["splits"]["val"]["documents"] < 90
    assert len(train) == m["splits"]["train"]["tokens"] and len(val) == m["splits"]["val"]["tokens"]
    # every document is BOS ... EOS, and decodes back to itself
    ids = train.tolist()
    assert ids.count(tok.bos_id) == ids.count(tok.eos_id) == m["splits"]["train"]["documents"]
    first = ids[1: ids.index(tok.eos_id)]
    assert tok.decode(first) in DOCS
    assert m["tokenizer"]["sha256"] == tok.sha256 and (tmp_path / "d" / "tokenizer.json").exists()
    assert m["stats"]["tokens"] == len(train) + len(val) and m["stats"]["top_tokens"]
    # the same seed gives the same split
    m2 = prepare_corpus([str(src)], tok, tmp_path / "d2", val_fraction=0.2, seed=3, progress=False)
    assert m2["splits"] == m["splits"]


def test_single_document_is_split_at_the_tail(tmp_path, tok):
    text = " ".join(DOCS)
    (tmp_path / "one.txt").write_text(text)
    m = prepare_corpus([str(tmp_path / "one.txt")], tok, tmp_path / "d", val_fraction=0.1, progress=False)
    assert m["options"]["split_by"] == "tail"
    total = m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]
    assert m["splits"]["val"]["tokens"] == int(total * 0.1)
    ids = np.concatenate([np.memmap(tmp_path / "d" / f"{s}.bin", dtype=m["dtype"]) for s in ("train", "val")])
    assert tok.decode(ids[1:-1].tolist()) == text  # the stream is the text, in order


def test_folder_gzip_cleaning_and_dedup(tmp_path, tok):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("same text\n")
    (folder / "sub" / "b.txt").write_text("same text\n")
    with gzip.open(folder / "c.txt.gz", "wt") as f:
        f.write("caf\u0065\u0301 with a bell\x07 and a tab\t\n")
    (folder / ".hidden.txt").write_text("never read")
    (folder / "image.png").write_bytes(b"\x89PNG\x00\x00")
    reader = CorpusReader([folder], dedup=True, clean=True)
    docs = list(reader.documents_text())
    assert docs.count("same text\n") == 1 and reader.duplicates == 1
    assert "café with a bell and a tab\t\n" in docs  # NFC joined the accent, the bell is gone, the tab kept
    assert all("never read" not in d for d in docs)


@pytest.mark.parametrize("content,match", [
    (b"\x00\x01\x02binary", "looks binary"),
    ("caf\xe9".encode("latin-1") + b" and more", "is not valid utf-8 at byte 3"),
])
def test_binary_and_non_utf8_files_are_clear_errors(tmp_path, tok, content, match):
    (tmp_path / "bad.txt").write_bytes(content)
    with pytest.raises(DataError, match=match):
        prepare_corpus([str(tmp_path / "bad.txt")], tok, tmp_path / "d", progress=False)
    assert not (tmp_path / "d" / "train.bin").exists() and not (tmp_path / "d" / "train.bin.tmp").exists()
    (tmp_path / "good.txt").write_text(" ".join(DOCS))
    m = prepare_corpus([str(tmp_path)], tok, tmp_path / "d", skip_bad_files=True, glob="*.txt", progress=False)
    assert m["skipped_files"] == [str(tmp_path / "bad.txt")]


def test_empty_and_missing_corpora_are_clear_errors(tmp_path, tok):
    (tmp_path / "empty.txt").write_text("   \n\n")
    with pytest.raises(DataError, match="holds no text"):
        prepare_corpus([str(tmp_path / "empty.txt")], tok, tmp_path / "d", progress=False)
    with pytest.raises(DataError, match="does not exist"):
        prepare_corpus([str(tmp_path / "nope.txt")], tok, tmp_path / "d2", progress=False)
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="holds no corpus files"):
        prepare_corpus([str(tmp_path / "e")], tok, tmp_path / "d3", progress=False)


def test_jsonl_errors_name_file_and_line(tmp_path, tok):
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(DataError, match=r"c.jsonl:2: no field 'text' \(found: body\).*--text-field"):
        prepare_corpus([str(tmp_path / "c.jsonl")], tok, tmp_path / "d", progress=False)
    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n{"text": "x",\n')
    with pytest.raises(DataError, match=r"b.jsonl:2: invalid JSON .*each line must be one JSON object"):
        prepare_corpus([str(tmp_path / "b.jsonl")], tok, tmp_path / "d", progress=False)
    # pairs: a line that is JSON but not an object is refused the same way (it used to be a TypeError)
    (tmp_path / "p.jsonl").write_text('{"source": "a", "target": "b"}\n5\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: expected a JSON object per line, got int"):
        list(read_pairs_jsonl(tmp_path / "p.jsonl"))


def test_existing_data_is_not_overwritten(tmp_path, tok):
    src = write_jsonl(tmp_path / "c.jsonl", DOCS)
    prepare_corpus([str(src)], tok, tmp_path / "d", progress=False)
    before = (tmp_path / "d" / "train.bin").read_bytes()
    with pytest.raises(LmforgeError, match="already holds prepared data"):
        prepare_corpus([str(src)], tok, tmp_path / "d", seed=9, progress=False)
    assert (tmp_path / "d" / "train.bin").read_bytes() == before


def test_uint32_for_large_vocabularies():
    from lmforge.data.prepare import token_dtype

    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_large_documents_stream_in_pieces(tmp_path, tok):
    big = "".join(f"line {i} of a long document\n" for i in range(20000))
    (tmp_path / "big.txt").write_text(big)
    reader = CorpusReader([tmp_path / "big.txt"], chunk_chars=50_000)
    pieces = list(reader.pieces())
    assert len(pieces) > 5 and all(p.doc == 0 for p in pieces) and pieces[-1].last and not pieces[0].last
    assert "".join(p.text for p in pieces) == big
    assert all(p.text.endswith("\n") for p in pieces)


def test_pairs_and_windows(tmp_path, tok):
    pairs = [(f"source {i}", f"target {i} " * (1 + i % 3)) for i in range(200)]
    m = prepare_pairs(iter(pairs), tok, tmp_path / "p", val_fraction=0.1, progress=False)
    data = PreparedData(tmp_path / "p")
    train = data.pairs("train")
    assert len(train) + len(data.pairs("val")) == 200 == m["splits"]["train"]["pairs"] + m["splits"]["val"]["pairs"]
    s, t = train.pair(0)
    assert (tok.decode(s.tolist()), tok.decode(t.tolist())) in pairs
    assert read_manifest(tmp_path / "p")["kind"] == "pairs"
    with pytest.raises(DataError, match="not a token stream"):
        data.tokens("train")


def test_windows_cover_an_epoch_without_repeats_and_move_between_epochs():
    tokens = np.arange(1000, dtype=np.uint16)
    w = TokenWindows(tokens, 16, seed=0)
    starts = w.starts(0, w.per_epoch)
    assert len(set(starts.tolist())) == w.per_epoch and (np.diff(np.sort(starts)) == 16).all()
    offsets = {int(w.starts(e * w.per_epoch, 1)[0] % 16) for e in range(10)}
    assert len(offsets) > 1  # window boundaries move between epochs
    assert (w.windows(0, 4)[:, 1:] - w.windows(0, 4)[:, :-1] == 1).all()  # contiguous windows
    assert (starts + 17 <= 1000).all()
    with pytest.raises(DataError, match="fewer than one window"):
        TokenWindows(tokens[:10], 16, seed=0)
