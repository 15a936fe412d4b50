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
    from ..model.flops import flops_per_token

    forward = flops_per_token(model, T)["forward"]  # (shared with training's MFU)
    kv_per_token = 2 * config.decoder_layers * config.n_kv_head * config.head_dim
    # activation memory of training per layer and token, 16-bit, no recomputation: Korthikanti et al. (2022)'s count
    # (34 h bytes for GPT-2's block) spelled out for GQA and gated MLPs, without the 5aT bytes of attention scores,
    # which fused attention (SDPA: flash or memory-efficient kernels) never stores
    h, kv, ff = config.d_model, config.n_kv_head * config.head_dim, config.d_ff
    attention = 7 * h + 4 * kv  # block input, Q, K, V, output-projection input, dropout mask
    mlp = 3 * h + (8 if config.gated else 4) * ff  # input, hidden (and gate) before and after the activation
    act_per_layer_token = attention + mlp + 4 * h  # + two norms' inputs
    return {
        "name": config.name or "custom", "arch": config.arch, "parameters": total,
        "non_embedding_parameters": total - groups["embeddings"], "groups": groups,
        "context": T, "flops_forward_per_token": forward, "flops_train_per_token": 3 * forward,
        "weights_bytes": {k: int(total * b) for k, b in BYTES.items()},
        "kv_cache_bytes_per_token_bf16": kv_per_token * 2,
        "kv_cache_bytes_full_context_bf16": kv_per_token * 2 * T * batch_size,
        "activation_bytes_per_layer_token": act_per_layer_token,
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


def training_memory(config: ModelConfig, r: dict[str, Any], world_size: int = 1, strategy: str = "ddp",
                    activation_checkpointing: bool = False) -> dict[str, int]:
    """Training memory of one device (bytes), for `r = analyse(config, context, batch_size)` with batch_size
    sequences per device: AdamW state (fp32 weights, gradients and two moments: 16 bytes a parameter) whole on
    every device under DDP, split N ways under FSDP plus the gathered working set (the root unit, embeddings and
    head, and two blocks, the running one and the prefetched one: bf16 weights and fp32 gradients); activations in bf16 (Korthikanti et al. 2022), with
    recomputation only each block's input and one block at a time; fp32 logits and their gradient."""
    P, T, B = r["parameters"], r["context"], r["batch_size"]
    blocks = config.n_layer + (config.decoder_layers if config.arch == "encoder_decoder" else 0)
    states = 16 * P if strategy == "ddp" else 16 * P // world_size
    if strategy == "fsdp" and world_size > 1:
        block = r["non_embedding_parameters"] / max(blocks, 1)
        root = r["groups"]["embeddings"] + r["groups"]["head"]  # gathered for the whole step (the root unit)
        states += int((root + 2 * block) * (2 + 4))
    per_layer = r["activation_bytes_per_layer_token"] * T * B
    if activation_checkpointing:
        activations = blocks * 2 * config.d_model * T * B + per_layer
    else:
        activations = blocks * per_layer
    vocab = config.vocab_size if config.head == "lm" else max(config.num_labels, 1)
    logits = 2 * 4 * vocab * T * B
    return {"states": int(states), "activations": int(activations), "logits": int(logits),
            "total": int(states + activations + logits)}


def info(model: str, *, set_: list[str] | None = None, context: int | None = None, batch_size: int = 1,
         world_size: int = 1, strategy: str = "ddp", activation_checkpointing: bool = False) -> dict[str, Any]:
    """Parameters, FLOPs per token and memory of a preset or a checkpoint.

    Args:
        model: a preset name (gpt2-124m, llama3-8b, bert-base, ...), a checkpoint or run folder, or a Hugging Face folder or hub id
        set_: override config fields, e.g. --set n_layer=24
        context: sequence length for the attention FLOPs and memory figures (default: the model's context)
        batch_size: sequences (per device), for the KV-cache and training-memory figures
        world_size: devices training together, for the per-device training memory
        strategy: ddp (every device holds the whole training state) or fsdp (the state split across devices)
        activation_checkpointing: recompute each block in the backward pass (keeps only block inputs)
    """
    if context is not None and context < 1 or batch_size < 1 or world_size < 1:
        raise ConfigError(f"--context, --batch-size and --world-size must be >= 1 (got {context}, {batch_size}, "
                          f"{world_size})")
    if strategy not in ("ddp", "fsdp"):
        raise ConfigError(f"--strategy {strategy!r} is not known; use ddp or fsdp")
    config = _config(model, parse_overrides(set_))
    r = analyse(config, context, batch_size)
    mem = training_memory(config, r, world_size, strategy, activation_checkpointing)
    r["train_bytes_per_device"] = mem
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
        f"  training (AdamW)     ~{_size(mem['total'])} per device: state {_size(mem['states'])} (fp32 weights, grads, "
        f"moments{', sharded' if strategy == 'fsdp' and world_size > 1 else ''}), activations {_size(mem['activations'])} "
        f"(bf16{', recomputed' if activation_checkpointing else ''}), logits {_size(mem['logits'])}; {strategy} on "
        f"{world_size} device{'s' if world_size > 1 else ''}, batch {batch_size} x {r['context']:,} each",
    ]
    print("\n".join(lines))
    return r
