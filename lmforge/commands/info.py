"""`lmforge info`: parameters, FLOPs per token and memory of a preset or a checkpoint, without building it
(the model is created on the meta device, so even a 70B shape costs nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import PRESETS, ModelConfig, parse_overrides
from ..errors import ConfigError

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "int4": 0.5}


def _config(model: str, overrides: dict[str, Any]) -> ModelConfig:
    """The config of a preset, an lmforge checkpoint or run folder, or a Hugging Face folder or hub id."""
    from ..checkpoint import is_lmforge_checkpoint, read_config, resolve_checkpoint

    path = Path(model)
    folder = resolve_checkpoint(path) if path.exists() and model not in PRESETS else None
    if model in PRESETS:
        config = ModelConfig.from_name(model)
    elif folder is not None and is_lmforge_checkpoint(folder):
        config = read_config(folder)
    elif path.exists() or "/" in model:
        from ..convert.api import hf_model_config

        config = hf_model_config(model)
    else:
        config = ModelConfig.from_name(model)  # the unknown-preset error lists the presets
    return config.replace(**overrides) if overrides else config


def analyse(config: ModelConfig, context: int | None = None, batch_size: int = 1) -> dict[str, Any]:
    import torch

    from ..model import Transformer

    with torch.device("meta"):
        model = Transformer(config)
    T = context or config.context_length
    groups: dict[str, int] = {"embeddings": 0, "attention": 0, "mlp": 0, "norms": 0, "head": 0}
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if "embed" in name and "norm" not in name:
            groups["embeddings"] += p.numel()
        elif "attn." in name or "cross_attn." in name:
            groups["attention"] += p.numel()
        elif "mlp." in name:
            groups["mlp"] += p.numel()
        elif "norm" in name:
            groups["norms"] += p.numel()
        else:
            groups["head"] += p.numel()
    total = sum(groups.values())
    # matrix multiplies per token: each block's linear layers, counted once per use (shared layers are reused)
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
    attn_flops = 4 * blocks_total * T * attn_width  # QK^T and AV against T keys (Kaplan et al.)
    forward = 2 * (linear_per_token + head) + attn_flops
    kv_per_token = 2 * config.decoder_layers * config.n_kv_head * config.head_dim
    # activation memory of training per layer and token, bf16, no recomputation (Korthikanti et al. 2022)
    act_per_layer_token = config.d_model * 34 + 5 * config.n_head * T
    return {
        "name": config.name or "custom", "arch": config.arch, "parameters": total,
        "non_embedding_parameters": total - groups["embeddings"], "groups": groups,
        "context": T, "flops_forward_per_token": forward, "flops_train_per_token": 3 * forward,
        "weights_bytes": {k: int(total * b) for k, b in BYTES.items()},
        "kv_cache_bytes_per_token_bf16": kv_per_token * 2,
        "kv_cache_bytes_full_context_bf16": kv_per_token * 2 * T * batch_size,
        "train_bytes_adamw_fp32": 16 * total + int(act_per_layer_token * blocks_total * T * batch_size),
        "batch_size": batch_size,
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _count(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:,.2f}{unit}"
    return f"{n:,.0f}"


def info(model: str, *, set_: list[str] | None = None, context: int | None = None, batch_size: int = 1) -> dict[str, Any]:
    """Parameters, FLOPs per token and memory of a preset or a checkpoint.

    Args:
        model: a preset name (gpt2-124m, llama3-8b, bert-base, ...), a checkpoint or run folder, or a Hugging Face folder or hub id
        set_: override config fields, e.g. --set n_layer=24
        context: sequence length for the attention FLOPs and memory figures (default: the model's context)
        batch_size: sequences, for the KV-cache and training-memory figures
    """
    if context is not None and context < 1 or batch_size < 1:
        raise ConfigError(f"--context and --batch-size must be >= 1 (got {context}, {batch_size})")
    config = _config(model, parse_overrides(set_))
    r = analyse(config, context, batch_size)
    g = r["groups"]
    lines = [
        f"{r['name']}  ({r['arch']}, {config.n_layer} layers, d_model {config.d_model}, {config.n_head} heads"
        f"{f', {config.n_kv_head} kv heads' if config.n_kv_head != config.n_head else ''}, vocab {config.vocab_size:,}, "
        f"context {config.context_length:,})",
        f"  parameters           {r['parameters']:>15,}  ({_count(r['parameters'])}; non-embedding "
        f"{_count(r['non_embedding_parameters'])})",
        "                       " + ", ".join(f"{k} {_count(v)}" for k, v in g.items() if v),
        f"  FLOPs / token        forward {_count(r['flops_forward_per_token'])}, training {_count(r['flops_train_per_token'])}"
        f"  (at context {r['context']:,})",
        "  weights              " + ", ".join(f"{k} {_size(v)}" for k, v in r["weights_bytes"].items()),
        *([f"  KV cache (bf16)      {_size(r['kv_cache_bytes_per_token_bf16'])} per token, "
           f"{_size(r['kv_cache_bytes_full_context_bf16'])} for {batch_size} x {r['context']:,} tokens"]
          if config.arch != "encoder" else []),
        f"  training (AdamW)     ~{_size(r['train_bytes_adamw_fp32'])} for batch {batch_size} x {r['context']:,} "
        "(fp32 weights+grads+moments, bf16 activations, no recomputation)",
    ]
    print("\n".join(lines))
    return r
