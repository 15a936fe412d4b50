"""Calibration data and input statistics shared by pruning and low-rank factorisation.

`calibration_batches(model, source)` gives batches of token ids (with their padding masks) from a prepared data
folder, text files or folders (windows, through `compress.quantize.token_windows`), a task table (.tsv / .csv /
.jsonl: each text encoded on its own, with the tokenizer's special tokens, as a classifier sees it), a list of
texts, or a tensor of ids. `input_stats(model, names, batches)` runs the model over them once and collects, for each
named linear layer, the Gram matrix X^T X of its inputs (real tokens only), the sum of |x| per input channel and the
token count: Wanda needs the diagonal of the Gram matrix, ASVD the mean |x|, whitened SVD (SVD-LLM) the whole of it.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..model.fast import Linear
from .quantize import token_windows

TABLES = (".tsv", ".csv", ".jsonl")
# linear layers that are heads (task or LM), never pruned or factorised
HEADS = ("lm_head", "classifier", "pooler", "nsp", "mlm_dense", "relation_classifier")
Batch = tuple[torch.Tensor, torch.Tensor | None]  # (ids (B, T), attention mask (B, T) or None)
_mask = threading.local()


def block_linears(model: nn.Module) -> list[str]:
    """Names of the linear layers of the blocks (attention and MLP projections): what pruning and factorisation act on."""
    return [name for name, m in model.named_modules()
            if type(m) in (nn.Linear, Linear) and name.rsplit(".", 1)[-1] not in HEADS]


def calibration_batches(model: nn.Module, source: Any, *, samples: int = 64, length: int = 256,
                        text_column: str = "text", batch_size: int = 8) -> list[Batch]:
    """Batches of calibration inputs (see the module docstring); at most `samples` sequences of `length` tokens."""
    if samples < 1 or length < 2:
        raise ConfigError(f"--calib-samples must be >= 1 and --calib-length >= 2 (got {samples}, {length})")
    length = min(length, model.config.context_length)
    if isinstance(source, torch.Tensor) and source.dim() == 2:  # token ids, one sequence a row: taken as they are
        return [(w, None) for w in source[:samples, :length].long().split(batch_size)]
    if isinstance(source, (str, Path)) and Path(source).suffix.lower() in TABLES and Path(source).is_file():
        from ..finetune.data import read_examples

        tok = model.tokenizer
        if tok is None:
            raise ConfigError(f"the model has no tokenizer to read --calib {source}")
        examples = read_examples(source, [text_column], None, require_label=False)[:samples]
        rows = [tok.encode(ex.texts[0], add_special_tokens=True)[:length] for ex in examples]
        rows = [r for r in rows if r]
        if not rows:
            raise DataError(f"--calib {source} holds no text in column {text_column!r}")
        rows.sort(key=len)
        out = []
        for i in range(0, len(rows), batch_size):
            chunk = rows[i: i + batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), model.config.pad_id, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for j, r in enumerate(chunk):
                ids[j, : len(r)] = torch.tensor(r)
                mask[j, : len(r)] = 1
            out.append((ids, mask))
        return out
    split = "train"
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        from ..data.prepare import is_prepared

        split = "train" if is_prepared(Path(source)) else "val"
    windows = token_windows(model, source, count=samples, context=length, split=split, what="--calib")
    return [(w, None) for w in windows.split(batch_size)]


@contextlib.contextmanager
def _real_tokens(mask: torch.Tensor | None) -> Iterator[None]:
    _mask.value = mask
    try:
        yield
    finally:
        _mask.value = None


def _rows(x: torch.Tensor) -> torch.Tensor:
    """A layer's input (B, T, C) as (real tokens, C) in float32."""
    mask = getattr(_mask, "value", None)
    if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.bool()].float()
    return x.reshape(-1, x.shape[-1]).float()


class Stats:
    """X^T X, sum |x| and the count of one layer's input rows."""

    def __init__(self, k: int, gram: bool) -> None:
        self.gram = torch.zeros(k, k, dtype=torch.float64) if gram else None
        self.sq = torch.zeros(k, dtype=torch.float64)
        self.abs = torch.zeros(k, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = _rows(x).cpu()
        if self.gram is not None:
            self.gram += (x.T @ x).double()
        self.sq += x.pow(2).sum(0).double()
        self.abs += x.abs().sum(0).double()
        self.n += x.shape[0]

    @property
    def norms(self) -> torch.Tensor:
        """||X_j||_2 of each input channel (Wanda's activation norm)."""
        return self.sq.sqrt().float()

    @property
    def mean_abs(self) -> torch.Tensor:
        return (self.abs / max(self.n, 1)).float()


def run_batches(model: nn.Module, batches: list[Batch], progress: bool = False, desc: str = "calibration") -> None:
    """The model's forward pass over calibration batches, with each batch's padding mask visible to the hooks."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    for ids, mask in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        with _real_tokens(mask.to(device) if mask is not None else None):
            ids = ids.to(device)
            if model.config.arch == "encoder_decoder":
                model(ids, mask.to(device) if mask is not None else None)
            else:
                model.encode(ids, mask.to(device) if mask is not None else None)


@torch.no_grad()
def input_stats(model: nn.Module, names: list[str], batches: list[Batch], *, gram: bool = False,
                progress: bool = False) -> dict[str, Stats]:
    """Statistics of the inputs of the named linear layers over the calibration batches (see the module docstring)."""
    modules = dict(model.named_modules())
    stats = {n: Stats(modules[n].in_features, gram) for n in names}
    hooks = [modules[n].register_forward_pre_hook(lambda m, args, s=stats[n]: s.add(args[0])) for n in names]
    was = model.training
    model.eval()
    try:
        run_batches(model, batches, progress)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return stats


__all__ = ["calibration_batches", "input_stats", "run_batches", "block_linears", "Stats", "HEADS", "TABLES"]
