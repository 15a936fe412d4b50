"""Sentence embeddings from any encoder (or decoder): the pooled final hidden states, pooled as the model was
trained, optionally L2-normalised.

How a model pools: a sentence-transformers folder says so itself (`modules.json`, `1_Pooling/config.json`, a
`Normalize` module: all-MiniLM-L6-v2 is mean pooling + normalisation, and lmforge's vectors equal
sentence-transformers' within 1e-5); an lmforge classifier pools as its head was trained (`config.pooling`);
anything else pools the mean of its tokens (an encoder) or the last token (a decoder). Texts longer than the
model's limit (sentence-transformers' `max_seq_length`, else the context) are truncated, as sentence-transformers
does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from .. import io as lio
from ..errors import ConfigError, DataError
from ..model import Transformer

Pooling = Literal["mean", "cls", "last", "max"]


@dataclass
class PoolingSpec:
    """How token states become one vector, and where that was read from."""

    pooling: str
    normalize: bool
    max_length: int | None
    source: str


def sentence_transformers_spec(folder: Path) -> PoolingSpec | None:
    """The pooling, normalisation and length limit of a sentence-transformers folder; None when it is not one."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    modules = lio.read_json(modules_file)
    pooling, normalize = None, False
    for module in modules if isinstance(modules, list) else []:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            config = lio.read_json(folder / module.get("path", "") / "config.json")
            modes = [m for m in ("cls_token", "mean_tokens", "max_tokens", "lasttoken")
                     if config.get(f"pooling_mode_{m}")]
            if len(modes) != 1:
                raise ConfigError(f"{folder}: the pooling {modes or 'none'} of this sentence-transformers model is "
                                  "not supported; lmforge pools one of cls, mean, max, last")
            pooling = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max", "lasttoken": "last"}[modes[0]]
        elif kind.endswith("Normalize"):
            normalize = True
    if pooling is None:
        return None
    limit = None
    if (folder / "sentence_bert_config.json").is_file():
        limit = lio.read_json(folder / "sentence_bert_config.json").get("max_seq_length")
    return PoolingSpec(pooling, normalize, limit, "sentence-transformers")


def pooling_spec(model: Transformer, path: str | Path | None = None) -> PoolingSpec:
    """How `model` (loaded from `path`) pools: see the module docstring."""
    if path is not None:
        folder = Path(path)
        for candidate in (folder, folder / "best"):
            if candidate.is_dir():
                spec = sentence_transformers_spec(candidate)
                if spec is not None:
                    return spec
    config = model.config
    if config.head == "classify":
        return PoolingSpec(config.pooling, False, None, "the classifier's head")
    if config.arch == "decoder":
        return PoolingSpec("last", False, None, "a decoder's last token")
    return PoolingSpec("mean", False, None, "the mean of the tokens")


def pool(hidden: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, T, d) states and a (B, T) mask of real tokens -> (B, d)."""
    m = mask.to(hidden.dtype)[..., None]
    if kind == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if kind == "cls":
        return hidden[:, 0]
    if kind == "max":
        return hidden.masked_fill(m == 0, float("-inf")).amax(1)
    if kind == "last":
        last = mask.long().cumsum(1).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ConfigError(f"pooling {kind!r} is not supported; use mean | cls | max | last")


@torch.no_grad()
def embed(model: Transformer, texts: Sequence[str] | str, *, pooling: str | None = None,
          normalize: bool | None = None, batch_size: int = 64, max_length: int | None = None,
          path: str | Path | None = None) -> np.ndarray:
    """Sentence embeddings (n, d_model) float32 of `texts` (one text gives (1, d_model)). `pooling` and `normalize`
    default to the model's own (see `pooling_spec`; `path` is the folder the model came from, for a
    sentence-transformers configuration)."""
    if model.tokenizer is None:
        raise ConfigError("the model has no tokenizer; load it from a folder with tokenizer.json")
    if isinstance(texts, str):
        texts = [texts]
    if not all(isinstance(t, str) for t in texts):
        raise ConfigError("embed takes a list of strings")
    spec = getattr(model, "pooling_spec", None) or pooling_spec(model, path)
    kind = pooling or spec.pooling
    norm = spec.normalize if normalize is None else normalize
    limit = min(max_length or spec.max_length or model.config.context_length, model.config.context_length)
    backend = model.tokenizer.backend
    encodings = backend.encode_batch(list(texts), add_special_tokens=True)
    ids = [e.ids[:limit] if len(e.ids) <= limit else _truncate(e.ids, limit, model) for e in encodings]
    device = next(model.parameters()).device
    use_types = model.config.type_vocab_size > 0
    out = np.zeros((len(texts), model.config.d_model), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    was = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(ids[i]) for i in chunk)
            batch = torch.full((len(chunk), width), model.config.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):
                batch[r, :len(ids[i])] = torch.tensor(ids[i])
                mask[r, :len(ids[i])] = 1
            batch, mask = batch.to(device), mask.to(device)
            hidden = model.encode(batch, mask, torch.zeros_like(batch) if use_types else None)
            vectors = pool(hidden.float(), mask, kind)
            if norm:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
            out[chunk] = vectors.cpu().numpy()
    finally:
        model.train(was)
    return out


def _truncate(ids: list[int], limit: int, model: Transformer) -> list[int]:
    """The first `limit` tokens, keeping the closing special token (SEP) where the tokenizer adds one."""
    end = model.tokenizer.doc_suffix if model.config.arch == "encoder" else []
    return ids[:limit - len(end)] + end if end and ids[-1] == end[0] else ids[:limit]


def load_encoder(path: str, device: str = "cpu") -> Transformer:
    """A model for embeddings: `lmforge.load(path)` with the pooling it was trained with attached
    (`model.pooling_spec`)."""
    from ..loading import load

    model = load(path, device=device, dtype="fp32")
    model.pooling_spec = pooling_spec(model, path)
    return model


def read_lines_file(path: str) -> list[str]:
    """The non-empty lines of a text file (sentences to embed)."""
    from ..corpus import read_lines

    p = Path(path)
    if not p.is_file():
        raise DataError(f"--input {path} is not a file; give a text file with one sentence per line")
    lines = [line for line in read_lines(p) if line.strip()]
    if not lines:
        raise DataError(f"{path} holds no text; give one sentence per line")
    return lines


def write_embeddings(vectors: np.ndarray, out: str | Path) -> Path:
    """A .npy file (float32 n x d), written atomically; .jsonl writes one {"index", "embedding"} per line."""
    out = Path(out)
    if out.suffix == ".jsonl":
        lio.write_text(out, "".join(json.dumps({"index": i, "embedding": [round(float(x), 7) for x in v]}) + "\n"
                                    for i, v in enumerate(vectors)))
        return out
    if out.suffix != ".npy":
        raise ConfigError(f"--out {out}: write embeddings to a .npy (float32 array) or .jsonl file")
    with lio.atomic_write(out, "wb") as f:
        np.save(f, vectors.astype(np.float32))
    return out


__all__ = ["embed", "pool", "pooling_spec", "PoolingSpec", "sentence_transformers_spec", "load_encoder",
           "read_lines_file", "write_embeddings"]
