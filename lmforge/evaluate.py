"""Evaluation runs. Perplexity uses the same objectives as training, so `eval perplexity` on the val split
reproduces the trainer's validation loss (on the whole split rather than a sample of it)."""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import torch

from .checkpoint import load, resolve_device
from .data.batches import PreparedData
from .data.prepare import check_tokenizer
from .errors import LmforgeError
from .model import Transformer
from .train.objectives import CausalLM, MaskedLM, Objective, Seq2Seq


def _objective_for(model: Transformer, data: PreparedData, split: str, context: int, seed: int) -> Objective:
    tok = model.tokenizer or data.tokenizer()
    arch = model.config.arch
    if arch == "encoder_decoder":
        pairs = data.pairs(split)
        return Seq2Seq(pairs, pairs, context, seed, tok)
    tokens = data.tokens(split)
    if arch == "encoder":
        return MaskedLM(tokens, tokens, context, seed, tok)
    return CausalLM(tokens, tokens, context, seed)


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
    objective = _objective_for(model, prepared, split, context, seed)
    model.eval()
    total, count, start = 0.0, 0, time.time()
    for batch in objective.eval_batches(batch_size, max_batches):
        batch = {k: v.to(model.device) for k, v in batch.items()}
        loss, n = objective.loss(model, batch)
        total += float(loss)
        count += int(n)
    if count == 0:
        raise LmforgeError(f"the {split} split of {data} is too small to evaluate with context {context}")
    mean = total / count
    return {"split": split, "objective": objective.name, "tokens": count, "loss": mean, "ppl": math.exp(min(mean, 50)),
            "bits_per_token": mean / math.log(2), "context": context, "seconds": round(time.time() - start, 2)}


def perplexity_cli(
    checkpoint: str,
    *,
    data: str,
    split: Literal["train", "val"] = "val",
    context: int | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Perplexity of a checkpoint on a split of prepared data (the same tokenizer is required).

    Args:
        checkpoint: run folder or checkpoint folder
        data: prepared data folder
        split: which split to evaluate
        context: tokens per window (default: the model's context length)
        batch_size: windows per forward pass
        max_batches: stop after this many batches (default: the whole split)
        device: cpu, cuda or auto
    """
    model = load(checkpoint, device=resolve_device(device))
    result = perplexity(model, data, split, context, batch_size, max_batches, source=checkpoint)
    print(f"{checkpoint} on {data} [{split}]: loss {result['loss']:.4f}  perplexity {result['ppl']:.3f}  "
          f"({result['bits_per_token']:.3f} bits/token, {result['tokens']:,} tokens, {result['objective']}, "
          f"context {result['context']}, {result['seconds']}s)")
    return result
