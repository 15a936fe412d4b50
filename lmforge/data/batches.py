"""Training and evaluation batches from prepared data, as pure functions of a sample index.

A batch depends only on (seed, index of its first sample): an epoch is a seeded permutation of windows (with
a seeded offset, so window boundaries move between epochs), and masking draws come from a generator seeded
by the sample index. Resuming therefore needs no sampler state beyond a counter, and every process of a
multi-process run can compute its own shard of the same global batch.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .prepare import read_manifest


def _memmap(path: Path, dtype: str) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{path} is missing; the prepared data folder is incomplete - re-run `lmforge prepare`")
    size = path.stat().st_size
    if size == 0:
        return np.zeros(0, dtype=dtype)
    if size % np.dtype(dtype).itemsize:
        raise DataError(f"{path} is truncated ({size} bytes is not a whole number of {dtype} tokens); re-run "
                        "`lmforge prepare`")
    return np.memmap(path, dtype=dtype, mode="r")


class ConcatTokens:
    """Several token files read as one stream (a prepared split written with --shard-tokens): `len` and slices,
    which is all windows need; a slice across a file boundary joins the two pieces."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = [p for p in parts if len(p)]
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)
        self.dtype = parts[0].dtype if parts else np.dtype(np.uint16)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # (np.asarray: the whole split, read into memory)
        return np.asarray(self[0:len(self)], dtype=dtype)

    def __getitem__(self, index):
        if not isinstance(index, slice):
            if index < 0:
                index += len(self)
            i = int(np.searchsorted(self.starts, index, side="right")) - 1
            return self.parts[i][index - self.starts[i]]
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise IndexError("token files are sliced with step 1")
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        i = first
        while start < stop:
            local = start - self.starts[i]
            end = min(stop, int(self.starts[i + 1]))
            pieces.append(self.parts[i][local: local + end - start])
            start, i = end, i + 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


class TokenWindows:
    """Windows of `length` tokens from a packed token stream, epoch by epoch without repetition."""

    def __init__(self, tokens: np.ndarray, length: int, seed: int, split: str = "train") -> None:
        self.tokens, self.length, self.seed = tokens, length, seed
        n = len(tokens)
        if n < length + 1:
            raise DataError(f"the {split} split has {n:,} tokens, fewer than one window of {length + 1}; "
                            "use a smaller --context or more data")
        # windows start at offset + k * stride; with the largest offset there are still `per_epoch` windows
        self.stride = length
        self.per_epoch = max((n - length - 1) // self.stride, 1)

    @lru_cache(maxsize=2)
    def _epoch(self, epoch: int) -> tuple[int, np.ndarray]:
        """The window offset and window order of an epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        last_start = len(self.tokens) - self.length - 1  # a window needs length + 1 tokens
        max_offset = last_start - (self.per_epoch - 1) * self.stride  # >= 0 by the choice of per_epoch
        offset = int(rng.integers(0, min(self.stride, max_offset + 1)))
        return offset, rng.permutation(self.per_epoch)

    def starts(self, first: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        for i in range(count):
            epoch, k = divmod(first + i, self.per_epoch)
            offset, perm = self._epoch(epoch)
            out[i] = offset + perm[k] * self.stride
        return out

    def windows(self, first: int, count: int, extra: int = 1) -> torch.Tensor:
        """(count, length + extra) int64 token windows for samples first .. first + count - 1."""
        rows = [self.tokens[s: s + self.length + extra] for s in self.starts(first, count)]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def sequential(self, extra: int = 1) -> list[np.ndarray]:
        """Non-overlapping windows from the start, for evaluation (the last partial window included)."""
        n, out = len(self.tokens), []
        for s in range(0, n - 1, self.length):
            chunk = self.tokens[s: min(s + self.length + extra, n)]
            if len(chunk) > 1:
                out.append(np.asarray(chunk, dtype=np.int64))
        return out


class PairSet:
    """Source/target id sequences of one split of prepared pair data."""

    def __init__(self, folder: Path, split: str, dtype: str) -> None:
        self.src = _memmap(folder / f"{split}.src.bin", dtype)
        self.tgt = _memmap(folder / f"{split}.tgt.bin", dtype)
        self.src_idx = _memmap(folder / f"{split}.src.idx", "int64")
        self.tgt_idx = _memmap(folder / f"{split}.tgt.idx", "int64")
        self.n = len(self.src_idx) - 1

    def __len__(self) -> int:
        return self.n

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(self.src[self.src_idx[i]: self.src_idx[i + 1]], dtype=np.int64),
                np.asarray(self.tgt[self.tgt_idx[i]: self.tgt_idx[i + 1]], dtype=np.int64))

    def order(self, seed: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(self.n)


class PreparedData:
    """A prepared data folder: manifest, tokenizer and memory-mapped splits."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.kind = self.manifest["kind"]
        self.dtype = self.manifest["dtype"]

    def tokenizer(self):
        from ..tokenizer import Tokenizer

        return Tokenizer.load(self.folder)

    def tokens(self, split: str) -> np.ndarray | ConcatTokens:
        if self.kind != "tokens":
            raise DataError(f"{self.folder} holds {self.kind} data, not a token stream; prepare a plain corpus "
                            "for causal or masked LM")
        entry = self.manifest["splits"].get(split, {})
        if "files" in entry:  # written in several files (--shard-tokens)
            parts = []
            for name, count in zip(entry["files"], entry["file_tokens"]):
                part = _memmap(self.folder / name, self.dtype)
                if len(part) != count:
                    raise DataError(f"{self.folder / name} holds {len(part):,} tokens but manifest.json says {count:,}; "
                                    "the data changed or is damaged - re-run `lmforge prepare`")
                parts.append(part)
            return ConcatTokens(parts)
        tokens = _memmap(self.folder / f"{split}.bin", self.dtype)
        expected = entry.get("tokens")
        if expected is not None and len(tokens) != expected:
            raise DataError(f"{self.folder / (split + '.bin')} holds {len(tokens):,} tokens but manifest.json says "
                            f"{expected:,}; the data changed or is damaged - re-run `lmforge prepare`")
        return tokens

    def pairs(self, split: str) -> PairSet:
        if self.kind != "pairs":
            raise DataError(f"{self.folder} holds a token stream, not source/target pairs; prepare pairs with "
                            "`lmforge prepare --source src.txt --target tgt.txt` for seq2seq")
        return PairSet(self.folder, split, self.dtype)


def mask_tokens(ids: torch.Tensor, *, vocab_size: int, mask_id: int, special_ids: set[int], probability: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose `probability` of the non-special tokens; of those 80% become [MASK], 10% a random
    token, 10% stay. Returns (inputs, labels) with labels -100 where nothing is predicted."""
    labels = ids.clone()
    special = torch.zeros_like(ids, dtype=torch.bool)
    for s in special_ids:
        special |= ids == s
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & ~special
    labels[~chosen] = -100
    inputs = ids.clone()
    replace = chosen & (torch.rand(ids.shape, generator=generator) < 0.8)
    inputs[replace] = mask_id
    randomize = chosen & ~replace & (torch.rand(ids.shape, generator=generator) < 0.5)
    inputs[randomize] = torch.randint(vocab_size, ids.shape, generator=generator)[randomize]
    return inputs, labels
