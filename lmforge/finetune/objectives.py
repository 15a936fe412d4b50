"""Fine-tuning objectives for the one training loop: batches as pure functions of the sample index.

An epoch is a seeded permutation of the examples (seeded by (seed, epoch)); inside windows of `window` batches
the examples are sorted by length and cut into batches, and the batches of a window are shuffled (again seeded),
so a batch holds examples of similar length and pads little. An epoch is padded to a whole number of batches with
examples of the same epoch, so batch boundaries stay where the window cut them. Everything is a function of
(seed, epoch, index): `--resume` continues exactly, and any split into micro-batches or processes sees the same
samples.

- `TaskObjective`: sequence classification (one label per row) and token classification (a label per token,
  -100 where nothing is predicted), cross-entropy with optional class weights and label smoothing;
- `CausalObjective`: decoder-only language modelling with a loss mask (chat SFT: assistant tokens; decoder-only
  seq2seq: the target after the prompt);
- `PairObjective`: encoder-decoder seq2seq (the pretraining `Seq2Seq` objective on in-memory pairs, bucketed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model import Transformer, cross_entropy
from ..train.objectives import Batch, Objective, Seq2Seq


class BucketOrder:
    """Which example each global sample index stands for (see the module docstring)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, window: int = 50) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.n = len(self.lengths)
        self.batch_size, self.seed, self.window = batch_size, seed, window
        self.per_epoch = math.ceil(self.n / batch_size) * batch_size

    @lru_cache(maxsize=2)
    def epoch(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(self.n)
        extra = self.per_epoch - self.n
        if extra:
            perm = np.concatenate([perm, rng.choice(self.n, size=extra, replace=False if extra <= self.n else True)])
        span = self.batch_size * self.window
        out = []
        for start in range(0, len(perm), span):
            chunk = perm[start:start + span]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            blocks = [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            for b in rng.permutation(len(blocks)):
                out.append(blocks[b])
        return np.concatenate(out)

    def indices(self, first: int, size: int) -> list[int]:
        out = []
        for i in range(first, first + size):
            epoch, k = divmod(i, self.per_epoch)
            out.append(int(self.epoch(epoch)[k]))
        return out


@dataclass
class Rows:
    """Tokenized examples: ids, optional segment ids, labels (an int per row, or an array per row with -100 where
    nothing is predicted) and the example each row comes from (a long document may give several windows)."""

    ids: list[np.ndarray] = field(default_factory=list)
    types: list[np.ndarray] | None = None
    labels: list = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    word_ids: list[np.ndarray] | None = None  # tagging: the word of each first sub-token, -1 elsewhere

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def pad_rows(rows: list, value: int, width: int | None = None) -> torch.Tensor:
    width = width or max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(np.asarray(r, dtype=np.int64))
    return out


def collate(rows: Rows, index: Sequence[int], pad_id: int) -> Batch:
    ids = [rows.ids[i] for i in index]
    batch: Batch = {"input_ids": pad_rows(ids, pad_id),
                    "attention_mask": pad_rows([np.ones(len(x), dtype=np.int64) for x in ids], 0)}
    if rows.types is not None:
        batch["token_type_ids"] = pad_rows([rows.types[i] for i in index], 0)
    first = rows.labels[index[0]] if len(index) else None
    if first is not None and np.ndim(first) == 0:
        batch["labels"] = torch.tensor([int(rows.labels[i]) for i in index], dtype=torch.long)
    elif first is not None:
        batch["labels"] = pad_rows([rows.labels[i] for i in index], -100)
    return batch


def task_logits(model: Transformer, batch: Batch) -> torch.Tensor:
    """Logits of a classifier or tagger. Decoders run without the padding mask (right padding is invisible to
    real tokens under the causal mask, and the unmasked path is faster); pooling still sees the mask."""
    if model.config.arch == "decoder":
        hidden = model.encode(batch["input_ids"])
        return model.head_logits(hidden, batch["attention_mask"])
    return model(batch["input_ids"], batch["attention_mask"], token_type_ids=batch.get("token_type_ids"))


def sorted_chunks(lengths: Sequence[int], size: int) -> Iterator[list[int]]:
    """Indices in chunks of `size`, longest first (for evaluation and prediction with little padding)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), size):
        yield order[start:start + size]


class RowsObjective(Objective):
    """Batches of `Rows` in bucketed epoch order; the dev rows longest first. Subclasses give `_collate` and the loss."""

    def __init__(self, name: str, train: Rows, dev: Rows | None, pad_id: int, seed: int, batch_size: int,
                 label_smoothing: float = 0.0) -> None:
        self.name = name
        self.train, self.dev, self.pad_id = train, dev, pad_id
        self.order = BucketOrder(train.lengths, batch_size, seed)
        self.label_smoothing = label_smoothing

    def _collate(self, rows: Rows, index: Sequence[int]) -> Batch:
        return collate(rows, index, self.pad_id)

    def samples_per_epoch(self) -> int:
        return self.order.per_epoch

    def batch(self, first: int, size: int) -> Batch:
        return self._collate(self.train, self.order.indices(first, size))

    def eval_batches(self, size: int, limit: int | None) -> Iterator[Batch]:
        if self.dev is None or not len(self.dev):
            return
        for n, chunk in enumerate(sorted_chunks(self.dev.lengths, size)):
            if limit and n >= limit:
                return
            yield self._collate(self.dev, chunk)


class TaskObjective(RowsObjective):
    """Cross-entropy of a classification or tagging head; the target count is the sum of class weights (the
    number of targets without weights), so the loop's normalisation gives the weighted mean."""

    perplexity = False  # labels, not tokens: exp(loss) means nothing here

    def __init__(self, name: str, train: Rows, dev: Rows | None, pad_id: int, seed: int, batch_size: int,
                 class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__(name, train, dev, pad_id, seed, batch_size, label_smoothing)
        self.weights = class_weights

    def count(self, batch: Batch) -> torch.Tensor:
        labels = batch["labels"]
        if self.weights is None:
            return (labels != -100).sum()
        kept = labels[labels != -100]
        return self.weights.to(kept.device)[kept].sum()

    def loss(self, model: Transformer, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = task_logits(model, batch)
        labels = batch["labels"]
        weight = self.weights.to(logits.device) if self.weights is not None else None
        smoothing = self.label_smoothing if model.training else 0.0
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), weight=weight,
                               ignore_index=-100, reduction="sum", label_smoothing=smoothing)
        return loss, self.count(batch)

    def tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())


class CausalObjective(RowsObjective):
    """Next-token loss on rows of (ids, loss mask): row i predicts ids[t + 1] where mask[t + 1] is set."""

    def _collate(self, rows: Rows, index: Sequence[int]) -> Batch:
        ids = [rows.ids[i] for i in index]
        targets = [np.where(rows.labels[i][1:] > 0, rows.ids[i][1:], -100) for i in index]
        return {"input_ids": pad_rows([x[:-1] for x in ids], self.pad_id), "labels": pad_rows(targets, -100)}

    def loss(self, model: Transformer, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        # right padding needs no mask under causal attention: padding never precedes a real token
        hidden = model.encode(batch["input_ids"])
        labels = batch["labels"]
        chosen = labels != -100
        logits = model.head_logits(hidden[chosen])  # the vocabulary projection only where there is a target
        smoothing = self.label_smoothing if model.training else 0.0
        return cross_entropy(logits, labels[chosen], label_smoothing=smoothing), chosen.sum()

    def tokens(self, batch: Batch) -> int:
        return int((batch["input_ids"] != self.pad_id).sum())


class ListPairs:
    """In-memory (source ids, target ids) pairs with the interface of `data.batches.PairSet`."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.pairs[i]


class PairObjective(Seq2Seq):
    """The pretraining seq2seq objective (teacher forcing, label smoothing) on in-memory pairs, bucketed by length."""

    def __init__(self, train: ListPairs, dev: ListPairs | None, context: int, seed: int, tokenizer, batch_size: int,
                 label_smoothing: float = 0.0, decoder_start: int | None = None) -> None:
        super().__init__(train, dev, context, seed, tokenizer, label_smoothing)
        if decoder_start is not None:
            self.bos = decoder_start  # the model's decoder start (BART: </s>), as generation uses it
        lengths = [len(s) + len(t) for s, t in train.pairs]
        self.order = BucketOrder(lengths, batch_size, seed)

    def samples_per_epoch(self) -> int:
        return self.order.per_epoch

    def batch(self, first: int, size: int) -> Batch:
        return self._collate([self.train.pair(i) for i in self.order.indices(first, size)])


def class_weight_tensor(kind: str, rows_labels: Sequence[int], n_labels: int) -> torch.Tensor | None:
    """--class-weights: None, or balanced weights n / (classes * count) per class (0 for an absent class)."""
    if kind == "none":
        return None
    counts = np.bincount(np.asarray(rows_labels, dtype=np.int64), minlength=n_labels).astype(np.float64)
    if kind == "balanced":
        weights = np.where(counts > 0, counts.sum() / (n_labels * np.maximum(counts, 1)), 0.0)
        return torch.tensor(weights, dtype=torch.float32)
    raise ConfigError(f"--class-weights {kind!r} is not supported; use none | balanced")


__all__ = ["class_weight_tensor", "BucketOrder", "Rows", "collate", "task_logits", "sorted_chunks", "RowsObjective", "TaskObjective",
           "CausalObjective",
           "ListPairs", "PairObjective"]
