"""What trains: every weight (full), the task head and the top blocks (frozen), or LoRA matrices and the head (lora).

`apply_method` sets `requires_grad` on a built model (swapping in LoRA layers for lora); `restore_method` does the
same for a run being resumed.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from ..errors import ConfigError
from .lora import apply_lora, head_prefixes, lora_spec, mark_trainable, trainable_fraction
from .transformer import Transformer

Method = Literal["full", "frozen", "lora"]


def top_layers(model: Transformer, k: int) -> list[str]:
    """Parameter-name prefixes of the top k blocks (of the encoder for encoders, of the decoder otherwise),
    with the final norm."""
    stack_name = "encoder" if model.config.arch == "encoder" else "decoder"
    stack = getattr(model, stack_name)
    n = len(stack.layers)
    if k > n:
        raise ConfigError(f"--unfreeze-layers={k} but the model has {n} layers")
    prefixes = [f"{stack_name}.layers.{i}." for i in range(n - k, n)]
    if k and stack.final_norm is not None:
        prefixes.append(f"{stack_name}.final_norm.")
    return prefixes


def apply_method(model: Transformer, method: Method, *, unfreeze_layers: int = 0, lora_rank: int = 8,
                 lora_alpha: float = 16.0, lora_targets: Sequence[str] | str = ("q_proj", "v_proj"),
                 lora_dropout: float = 0.0) -> dict[str, Any]:
    """Set what trains: everything (full), the head and the top k layers (frozen), or LoRA matrices and the head
    (lora). Returns a summary."""
    if method not in ("full", "frozen", "lora"):
        raise ConfigError(f"--method {method!r} is not supported; use full | frozen | lora")
    if unfreeze_layers < 0:
        raise ConfigError(f"--unfreeze-layers={unfreeze_layers} must be >= 0")
    heads = tuple(head_prefixes(model))
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "frozen":
        keep = heads + tuple(top_layers(model, unfreeze_layers))
        if not keep:
            raise ConfigError("--method frozen on a language-model head would train nothing; use --method lora or full")
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(keep))
    else:
        if not model.config.lora:
            apply_lora(model, **lora_spec(lora_rank, lora_alpha, lora_targets, lora_dropout))
        mark_trainable(model, heads + tuple(top_layers(model, unfreeze_layers)))
    trainable, total = trainable_fraction(model)
    return {"method": method, "trainable": trainable, "total": total, "fraction": trainable / total,
            "lora": model.config.lora, "unfreeze_layers": unfreeze_layers}


def restore_method(model: Transformer, info: dict[str, Any]) -> None:
    """Set requires_grad as `apply_method` did for a run being resumed (the adapter is rebuilt from the config)."""
    apply_method(model, info["method"], unfreeze_layers=info.get("unfreeze_layers", 0))


__all__ = ["Method", "apply_method", "restore_method", "top_layers"]
