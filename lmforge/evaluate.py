"""Perplexity of a model on prepared data, with the objectives and the loss loop of training, so `eval perplexity`
on the val split reproduces the trainer's validation loss (on the whole split rather than a sample of it)."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from .data.batches import PreparedData
from .data.prepare import check_tokenizer
from .errors import LmforgeError
from .model import Transformer
from .train.objectives import default_objective, make_objective
from .train.trainer import eval_loss


@torch.no_grad()
def perplexity(
    model: Transformer,
    data: str,
    split: str = "val",
    context: int | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    seed: int = 1337,
    source: str = "the model",
) -> dict[str, Any]:
    """Mean loss per predicted token and its exponential on a prepared split.

    Decoders: next-token loss on non-overlapping windows of `context` tokens. Encoders: masked-LM loss with a
    fixed (seeded) 15% masking. Encoder-decoders: target-token loss on the split's pairs.
    """
    prepared = PreparedData(data)
    if split not in prepared.manifest["splits"]:
        raise LmforgeError(f"{data} has no split {split!r}; it has {', '.join(prepared.manifest['splits'])}")
    if model.tokenizer is not None:
        check_tokenizer(prepared.manifest, model.tokenizer, data, source)
    context = context or model.config.context_length
    if context > model.config.context_length:
        raise LmforgeError(f"--context={context} is longer than the model's context_length={model.config.context_length}")
    objective = make_objective(default_objective(model.config.arch), prepared, model.tokenizer or prepared.tokenizer(),
                               context, seed, train_split=split, val_split=split)
    model.eval()
    start = time.time()
    mean, count = eval_loss(model, objective, batch_size, max_batches)
    if count == 0:
        raise LmforgeError(f"the {split} split of {data} is too small to evaluate with context {context}")
    return {"split": split, "objective": objective.name, "tokens": count, "loss": mean, "ppl": math.exp(min(mean, 50)),
            "bits_per_token": mean / math.log(2), "context": context, "seconds": round(time.time() - start, 2)}


__all__ = ["perplexity"]
