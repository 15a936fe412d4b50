"""`lmforge eval perplexity` (the fine-tuning evaluations are in `lmforge.finetune.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal


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
    """Perplexity of a checkpoint on a split of prepared data (the same tokenizer is required), or of an n-gram
    model (an ARPA file from `lmforge ngram train` or KenLM) on the same data, beside it.

    Args:
        checkpoint: run folder or checkpoint folder, or an ARPA n-gram file
        data: prepared data folder
        split: which split to evaluate
        context: tokens per window (default: the model's context length)
        batch_size: windows per forward pass
        max_batches: stop after this many batches (default: the whole split)
        device: cpu, cuda or auto
    """
    from ..config import check_minimum
    from ..errors import FileError
    from ..device import resolve_device
    from ..evaluate import perplexity
    from ..loading import load

    check_minimum(1, context=context, batch_size=batch_size, max_batches=max_batches)
    if checkpoint.endswith((".arpa", ".arpa.gz")) and not Path(checkpoint).is_file():
        raise FileError(f"n-gram model {checkpoint} not found; make one with `lmforge ngram train ... --out "
                        f"{Path(checkpoint).name}`")
    if Path(checkpoint).is_file() and is_arpa(checkpoint):
        from .apps import ngram_perplexity

        result = ngram_perplexity(checkpoint, data, split)
        print(f"{checkpoint} on {data} [{split}]: loss {result['loss']:.4f}  perplexity {result['ppl']:.3f}  "
              f"({result['bits_per_token']:.3f} bits/token, {result['tokens']:,} tokens, {result['oov']:,} unknown, "
              f"{result['objective']}, {result['seconds']}s)")
        return result
    model = load(checkpoint, device=resolve_device(device))
    result = perplexity(model, data, split, context, batch_size, max_batches, source=checkpoint)
    print(f"{checkpoint} on {data} [{split}]: loss {result['loss']:.4f}  perplexity {result['ppl']:.3f}  "
          f"({result['bits_per_token']:.3f} bits/token, {result['tokens']:,} tokens, {result['objective']}, "
          f"context {result['context']}, {result['seconds']}s)")
    return result


def is_arpa(path: str) -> bool:
    """Whether a file is an ARPA n-gram model: a .arpa name, or \\data\\ among its first lines."""
    if path.endswith((".arpa", ".arpa.gz")):
        return True
    with open(path, "rb") as f:
        head = f.read(4096)
    return b"\\data\\" in head


__all__ = ["perplexity_cli", "is_arpa"]
