"""A quick check after `lmforge export onnx`: the exported graphs against the PyTorch model on one small batch.

(`lmforge export check` gives the full parity report across formats; this is the one-line smoke test of an export.)
"""

from __future__ import annotations

import torch

from ...model.cache import KVCache

STEPS = 4


def _ids(config, rows: int = 2, length: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    low = 3 if config.vocab_size > 8 else 0
    return torch.randint(low, config.vocab_size, (rows, length), generator=g)


def compare(model, onnx_model) -> dict:
    """max |delta logit| and top-1 agreement of ONNX Runtime against PyTorch: a prefill of 2 x 6 tokens, then
    STEPS cached steps (decoders, encoder-decoders), or one padded batch (models with a head)."""
    config = model.config
    ids = _ids(config)
    diffs, agree, total = [], 0, 0

    def add(a: torch.Tensor, b: torch.Tensor) -> None:
        nonlocal agree, total
        diffs.append(float((a.float() - b.float()).abs().max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.argmax(-1).numel()

    with torch.inference_mode():
        if onnx_model.kind == "head":
            mask = torch.ones_like(ids)
            mask[1, 4:] = 0  # right padding, as the fine-tuning collators pad
            a = model(ids, mask)
            b = onnx_model(ids, mask)
            if a.dim() == 3:  # per-token logits: padding positions are ignored downstream
                a, b = a[mask.bool()], b[mask.bool()]
            add(a, b)
        else:
            B = ids.shape[0]
            cache = KVCache.for_model(model, B, ids.shape[1] + STEPS + 1)
            ocache = onnx_model.new_cache(B)
            if onnx_model.kind == "seq2seq":
                hidden, ohidden = model.encode(ids), onnx_model.encode(ids)
                start = torch.full((B, 1), config.decoder_start_token_id or 0, dtype=torch.long)
                a = model.last_logits(model.decode(start, hidden, cache=cache))
                b = onnx_model.last_logits(onnx_model.decode(start, ohidden, cache=ocache))
            else:
                hidden = ohidden = None
                a = model.last_logits(model.decode(ids, cache=cache))
                b = onnx_model.last_logits(onnx_model.decode(ids, cache=ocache))
            add(a, b)
            for _ in range(STEPS):
                t = a.argmax(-1, keepdim=True)
                a = model.last_logits(model.decode(t, hidden, cache=cache))
                b = onnx_model.last_logits(onnx_model.decode(t, ohidden, cache=ocache))
                add(a, b)
    return {"max_abs_diff": max(diffs), "top1_agreement": agree / total, "positions": total}


def quick_check(model, onnx_model) -> str:
    r = compare(model, onnx_model)
    what = "one padded batch" if onnx_model.kind == "head" else f"a prefill and {STEPS} cached steps"
    return (f"check: ONNX Runtime vs PyTorch on {what}: max |delta logit| {r['max_abs_diff']:.2e}, top-1 agreement "
            f"{r['top1_agreement']:.0%} ({r['positions']} positions)")


__all__ = ["compare", "quick_check"]
