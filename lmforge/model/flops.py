"""Model FLOPs per token, from the shape alone: what `lmforge info` prints and what training's MFU divides by.

Matrix multiplies only (norms, activations and softmax are a few percent at most): each block's linear layers
counted once per use (ALBERT-style shared blocks once per layer that reuses them), the output head, and
attention's QK^T and AV against `context` keys, as Kaplan et al. (2020) and nanoGPT's `estimate_mfu` count
them. A training step costs three forward passes (forward, and the two products of the backward pass).
"""

from __future__ import annotations

from torch import nn


def flops_per_token(model: nn.Module, context: int) -> dict[str, float]:
    """{"forward": ..., "train": ...} FLOPs per token of `model` (a `Transformer`, real or on the meta device) at a
    sequence length of `context` tokens."""
    config = model.config
    linear_per_token = 0.0
    blocks_total = 0
    for stack in (model.encoder, model.decoder):
        if stack is None:
            continue
        weights = sum(p.numel() for n, p in stack.layers.named_parameters() if n.endswith("weight") and p.dim() == 2)
        linear_per_token += weights * stack.n_layers / len(stack.layers)
        blocks_total += stack.n_layers
    head = config.d_model * config.vocab_size if config.head == "lm" else config.d_model * max(config.num_labels, 1)
    attn_width = config.n_head * config.head_dim
    attn_flops = 4 * blocks_total * context * attn_width  # QK^T and AV against T keys (Kaplan et al.)
    forward = 2 * (linear_per_token + head) + attn_flops
    return {"forward": forward, "train": 3 * forward}


__all__ = ["flops_per_token"]
