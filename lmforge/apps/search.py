"""Semantic search: documents cut into overlapping chunks, embedded, indexed and searched by cosine similarity.

An index is a folder written whole (`io.atomic_dir`): `index.json` (the model, its pooling, the chunking, the
backend), `chunks.jsonl` (each chunk's document, character span and text), `embeddings.npy` (float32, one
L2-normalised row per chunk) and, for the FAISS backend, `faiss.index`. Exact search is a matrix product (numpy);
`faiss-cpu` (optional: `pip install faiss-cpu`) adds an HNSW graph for large collections (approximate, far
fewer distance computations per query).

Chunking follows the tokenizer: a document's tokens are cut into windows of `chunk_tokens` that overlap by
`overlap` tokens, each window widened to whole words, and a chunk keeps its character span in the document, so
an answer found in a chunk points back into the original text.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from .. import io as lio
from ..corpus import json_object, list_files, read_lines, read_text_blocks
from ..errors import ConfigError, DataError
from ..model import Transformer
from .embed import PoolingSpec, embed, load_encoder

FORMAT = "lmforge-index"
Backend = Literal["exact", "faiss"]


@dataclass
class Document:
    id: str
    text: str
    title: str | None = None


@dataclass
class Chunk:
    doc: str  # the document's id
    start: int  # character span in the document
    end: int
    text: str
    title: str | None = None


# ---- documents and chunks ---------------------------------------------------------------------------------

def read_documents(paths: Sequence[str] | str, text_field: str = "text", id_field: str = "id",
                   title_field: str = "title") -> list[Document]:
    """Documents from text/markdown files (one document each, its path as id) and JSONL files (one per line:
    `text`, optional `id` and `title`), in files or folders."""
    docs: list[Document] = []
    for path in list_files([paths] if isinstance(paths, str) else paths):
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            for lineno, line in enumerate(read_lines(path), 1):
                if not line.strip():
                    continue
                record = json_object(path, lineno, line)
                text = record.get(text_field)
                if not isinstance(text, str):
                    raise DataError(f"{path}:{lineno}: no text field {text_field!r} (found: {', '.join(record)}); "
                                    "each line needs a \"text\"")
                doc_id = str(record.get(id_field, f"{path.name}:{lineno}"))
                docs.append(Document(doc_id, text, record.get(title_field)))
        else:
            docs.append(Document(str(path), "".join(read_text_blocks(path))))
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise DataError(f"{paths}: no document holds any text")
    return docs


def chunk_document(model: Transformer, doc: Document, chunk_tokens: int, overlap: int) -> list[Chunk]:
    """Overlapping windows of `chunk_tokens` tokens, widened to whole words (see the module docstring)."""
    enc = model.tokenizer.backend.encode(doc.text, add_special_tokens=False)
    offsets = [(a, b) for a, b in enc.offsets if b > a]
    if not offsets:
        return []
    step = chunk_tokens - overlap
    chunks, starts = [], range(0, max(len(offsets) - overlap, 1), step)
    for first in starts:
        last = min(first + chunk_tokens, len(offsets)) - 1
        a, b = offsets[first][0], offsets[last][1]
        while a > 0 and not doc.text[a - 1].isspace():  # whole words: back to the start of the word
            a -= 1
        while b < len(doc.text) and not doc.text[b].isspace() and not doc.text[b - 1].isspace():
            b += 1
        chunks.append(Chunk(doc.id, a, b, doc.text[a:b], doc.title))
        if last == len(offsets) - 1:
            break
    return chunks


def chunk_documents(model: Transformer, docs: Sequence[Document], chunk_tokens: int = 200,
                    overlap: int = 40) -> list[Chunk]:
    if chunk_tokens < 8 or not 0 <= overlap < chunk_tokens:
        raise ConfigError(f"--chunk-tokens={chunk_tokens} must be >= 8 and --overlap={overlap} >= 0 and smaller "
                          "than --chunk-tokens")
    specials = len(model.tokenizer.encode("a", add_special_tokens=True)) - len(model.tokenizer.encode("a"))
    limit = (getattr(model, "pooling_spec", None) and model.pooling_spec.max_length) or model.config.context_length
    if chunk_tokens + specials > min(limit, model.config.context_length):
        raise ConfigError(f"--chunk-tokens={chunk_tokens} does not fit the model's limit of {limit} tokens "
                          f"({specials} special); use --chunk-tokens <= {limit - specials}")
    return [c for d in docs for c in chunk_document(model, d, chunk_tokens, overlap)]


# ---- the index -------------------------------------------------------------------------------------------

class Index:
    """Chunks, their unit-length embeddings, and the encoder that made them (loaded on first query)."""

    def __init__(self, chunks: list[Chunk], vectors: np.ndarray, meta: dict[str, Any], folder: Path | None = None,
                 model: Transformer | None = None, faiss_index: Any = None) -> None:
        self.chunks, self.vectors, self.meta, self.folder = chunks, vectors, meta, folder
        self._model, self._faiss = model, faiss_index

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def model(self) -> Transformer:
        if self._model is None:
            path = self.meta["model"]
            if not Path(path).exists() and not path.startswith("hf:"):
                raise DataError(f"the index was built with {path}, which is gone; rebuild it with `lmforge index "
                                "build MODEL --docs DOCS --out INDEX`")
            self._model = load_encoder(path)
            self._model.pooling_spec = PoolingSpec(**self.meta["pooling"])
        return self._model

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        vectors = embed(self.model, list(queries), batch_size=64)
        return _unit(vectors)

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, chunk indices), each (queries, k), best first."""
        k = min(k, len(self.chunks))
        if self.meta["backend"] == "faiss":
            scores, ids = self._faiss.search(np.ascontiguousarray(queries, dtype=np.float32), k)
            return scores, ids
        scores = queries @ self.vectors.T  # cosine: every row is unit length
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, 1).argsort(1)[:, ::-1]
        ids = np.take_along_axis(top, order, 1)
        return np.take_along_axis(scores, ids, 1), ids

    def search(self, queries: Sequence[str] | str, k: int = 5) -> list[list[dict[str, Any]]]:
        """For each query, the k best chunks: {"score", "doc", "start", "end", "text", "title"}."""
        if k < 1:
            raise ConfigError(f"-k {k}: ask for at least one result")
        single = isinstance(queries, str)
        queries = [queries] if single else list(queries)
        if not queries or not all(isinstance(q, str) and q.strip() for q in queries):
            raise ConfigError("a query is empty; give the text to search for")
        scores, ids = self.search_vectors(self.embed_queries(queries), k)
        results = [[{"score": round(float(s), 6), **asdict(self.chunks[int(i)])} for s, i in zip(row_s, row_i)
                    if i >= 0] for row_s, row_i in zip(scores, ids)]
        return results[0] if single else results

    # ---- files ---------------------------------------------------------------------------------------------
    def save(self, out: str | Path, overwrite: bool = False, inputs: Sequence[str] = ()) -> Path:
        out = lio.check_output(out, what="a search index", overwrite=overwrite, ours=is_index, inputs=inputs)
        with lio.atomic_dir(out) as tmp:
            with lio.atomic_write(tmp / "embeddings.npy", "wb") as f:
                np.save(f, self.vectors.astype(np.float32))
            lio.write_text(tmp / "chunks.jsonl", "".join(json.dumps(asdict(c), ensure_ascii=False) + "\n"
                                                         for c in self.chunks))
            if self._faiss is not None:
                faiss = _faiss()
                with lio.atomic_write(tmp / "faiss.index", "wb") as f:
                    f.write(faiss.serialize_index(self._faiss).tobytes())
            lio.write_json(tmp / "index.json", self.meta)
        self.folder = out
        return out

    @classmethod
    def load(cls, folder: str | Path) -> "Index":
        folder = lio.recover_dir(Path(folder))
        if not is_index(folder):
            raise DataError(f"{folder} is not a search index (no index.json); build one with `lmforge index build "
                            "MODEL --docs DOCS --out INDEX`")
        meta = lio.read_json(folder / "index.json")
        if meta.get("format") != FORMAT:
            raise DataError(f"{folder}/index.json is not an lmforge index (format {meta.get('format')!r})")
        try:
            vectors = np.load(folder / "embeddings.npy", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"{folder}/embeddings.npy is damaged ({e}); rebuild the index") from None
        chunks = [Chunk(**json.loads(line)) for line in read_lines(folder / "chunks.jsonl") if line.strip()]
        if vectors.shape != (len(chunks), meta["dim"]):
            raise DataError(f"{folder}: {len(chunks)} chunks but embeddings of shape {vectors.shape}; the index is "
                            "damaged: rebuild it")
        faiss_index = None
        if meta["backend"] == "faiss":
            faiss = _faiss()
            faiss_index = faiss.deserialize_index(np.fromfile(folder / "faiss.index", dtype=np.uint8))
        return cls(chunks, vectors, meta, folder, faiss_index=faiss_index)


def is_index(path: Path) -> bool:
    return (path / "index.json").is_file()


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError("--backend faiss needs faiss-cpu: pip install faiss-cpu (or pip install "
                          "'lmforge[faiss]'); --backend exact needs nothing") from None
    return faiss


def build_index(model_path: str, docs: Sequence[Document], *, chunk_tokens: int = 200, overlap: int = 40,
                backend: Backend = "exact", batch_size: int = 64, hnsw_neighbors: int = 32,
                model: Transformer | None = None) -> Index:
    """Chunk, embed and index documents with the encoder at `model_path` (or the already loaded `model`)."""
    if backend not in ("exact", "faiss"):
        raise ConfigError(f"--backend {backend!r}: use exact | faiss")
    faiss = _faiss() if backend == "faiss" else None
    model = model or load_encoder(model_path)
    if not getattr(model, "pooling_spec", None):
        from .embed import pooling_spec

        model.pooling_spec = pooling_spec(model, model_path)
    start = time.time()
    chunks = chunk_documents(model, docs, chunk_tokens, overlap)
    if not chunks:
        raise DataError("the documents gave no chunks (no tokens)")
    vectors = _unit(embed(model, [c.text for c in chunks], batch_size=batch_size))
    faiss_index = None
    if faiss is not None:
        faiss_index = faiss.IndexHNSWFlat(vectors.shape[1], hnsw_neighbors, faiss.METRIC_INNER_PRODUCT)
        faiss_index.hnsw.efSearch = 128
        faiss_index.add(vectors)
    meta = {"format": FORMAT, "version": 1, "model": str(Path(model_path).resolve()) if Path(model_path).exists()
            else model_path, "pooling": asdict(model.pooling_spec), "dim": int(vectors.shape[1]),
            "chunk_tokens": chunk_tokens, "overlap": overlap, "backend": backend, "documents": len(docs),
            "chunks": len(chunks), "metric": "cosine", "seconds": round(time.time() - start, 2)}
    return Index(chunks, vectors, meta, model=model, faiss_index=faiss_index)


def iter_results(results: list[dict[str, Any]], width: int = 160) -> Iterator[str]:
    """Lines for the terminal: rank, score, document and the start of the chunk."""
    for rank, r in enumerate(results, 1):
        text = " ".join(r["text"].split())
        yield f"{rank:>2}. {r['score']:.4f}  {r['title'] or r['doc']} [{r['start']}:{r['end']}]  " \
              f"{text[:width]}{'...' if len(text) > width else ''}"


__all__ = ["Document", "Chunk", "Index", "read_documents", "chunk_document", "chunk_documents", "build_index",
           "is_index", "iter_results", "FORMAT"]
