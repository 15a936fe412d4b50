"""Token embeddings initialised from word vectors (GloVe or word2vec text files), for models trained from scratch."""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError
from .transformer import Transformer


def read_word_vectors(path: str | Path, wanted: set[str] | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """Vectors of a GloVe or word2vec text file (`word v1 v2 ...` per line; word2vec's `count dim` header line is
    skipped). Only the words in `wanted` are kept (all when None)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such word-vector file")
    vectors: dict[str, torch.Tensor] = {}
    dim = None
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").rstrip().split(" ")
            if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                dim = int(parts[1])  # word2vec header: count dim
                continue
            if len(parts) < 2:
                continue
            if dim is None:
                dim = len(parts) - 1
            if len(parts) - 1 != dim:
                raise DataError(f"{path}:{lineno}: {len(parts) - 1} numbers but the file's vectors have {dim}")
            word = parts[0]
            if wanted is not None and word not in wanted:
                continue
            try:
                vectors[word] = torch.tensor([float(x) for x in parts[1:]])
            except ValueError:
                raise DataError(f"{path}:{lineno}: not a number among the vector's values") from None
    if dim is None:
        raise DataError(f"{path} holds no vectors")
    return vectors, dim


def token_words(tokenizer) -> dict[int, str]:
    """The word each word-initial vocabulary entry spells (decoded, spaces stripped); continuation pieces
    (WordPiece's ## or ＃＃) and special tokens are left out."""
    out = {}
    special = tokenizer.special_ids
    for i in range(tokenizer.vocab_size):
        token = tokenizer.id_to_token(i)
        if i in special or token is None or token.startswith(("##", "＃＃")):
            continue
        text = tokenizer.decode([i]).strip()
        if text and "\ufffd" not in text:
            out[i] = text
    return out


@torch.no_grad()
def init_embeddings(model: Transformer, tokenizer, path: str | Path, lowercase_fallback: bool = True) -> dict[str, Any]:
    """Set the token-embedding rows of vocabulary entries that spell a word of the vector file (as is, or lower-cased),
    rescaled so the vectors have the spread of the model's initialisation; returns coverage figures."""
    words = token_words(tokenizer)
    wanted = set(words.values()) | ({w.lower() for w in words.values()} if lowercase_fallback else set())
    vectors, dim = read_word_vectors(path, wanted)
    d = model.config.d_model
    if dim != d:
        raise ConfigError(f"{path} has {dim}-dimensional vectors but the model's d_model is {d}; build the model "
                          f"with --set d_model={dim} (and n_head dividing it) or use vectors of size {d}")
    found = {}
    for i, w in words.items():
        vec = vectors.get(w)
        if vec is None and lowercase_fallback:
            vec = vectors.get(w.lower())
        if vec is not None:
            found[i] = vec
    if not found:
        raise DataError(f"no word of {path} matches a token of the vocabulary; is it a vector file for this language?")
    stacked = torch.stack(list(found.values()))
    emb = model.tok_embed.weight
    target_std = float(emb.std()) or model.config.init_std
    scale = target_std / max(float(stacked.std()), 1e-8)
    index = torch.tensor(list(found), dtype=torch.long, device=emb.device)
    emb.index_copy_(0, index, (stacked * scale).to(emb.dtype).to(emb.device))
    coverage = len(found) / max(len(words), 1)
    return {"vectors_file": str(path), "vector_dim": dim, "tokens_set": len(found), "vocab": tokenizer.vocab_size,
            "coverage": coverage, "scale": scale if math.isfinite(scale) else None,
            "note": f"embeddings: {len(found):,} of {tokenizer.vocab_size:,} token rows set from {path} "
                    f"({coverage:.1%} of word-initial tokens)"}


__all__ = ["read_word_vectors", "token_words", "init_embeddings"]
