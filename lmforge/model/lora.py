"""LoRA (Hu et al. 2021) as a layer swap on the model's named `nn.Linear` projections.

`apply_lora(model, rank=8, alpha=16, targets=["q_proj", "v_proj"])` replaces each targeted linear layer by a
`LoRALinear` that keeps the frozen weight under the same parameter names (`...q_proj.weight`, `...q_proj.bias`)
and adds two small matrices: y = x W^T + b + (alpha / rank) * dropout(x) A^T B^T, with B = 0 at the start (so the
adapted model starts as the base model). The choice is recorded in `model.config.lora`, so a checkpoint of an
adapted model is rebuilt by `lmforge.load` with no extra flags; `merge_lora` folds the update into plain
`nn.Linear` weights (for export and serving). The adapter's files (`save_adapter` / `load_adapter`, with the task
head it was trained with) are part of the checkpoint format (`lmforge.checkpoint`).

Targets are the leaf names of linear layers (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`,
`down_proj`) or their short forms (`q`, `k`, `v`, `o`, `gate`, `up`, `down`).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

SHORT_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
               "down": "down_proj"}
# linear layers that belong to the task or LM head, never LoRA targets
HEAD_MODULES = ("lm_head", "classifier", "pooler", "nsp", "mlm_dense")


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update; parameter names of the base layer are kept."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        if base.bias is not None:
            self.bias = base.bias
        else:
            self.register_parameter("bias", None)
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's own initialisation
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        return y + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    def delta(self) -> torch.Tensor:
        """The update B A * scaling, in float32."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def linear_names(model: nn.Module) -> list[str]:
    """Leaf names of the linear layers LoRA can target (those of the attention and MLP blocks)."""
    names = set()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, (nn.Linear, LoRALinear)) and leaf not in HEAD_MODULES:
            names.add(leaf)
    return sorted(names)


def normalize_targets(targets: Iterable[str] | str) -> list[str]:
    if isinstance(targets, str):
        targets = targets.split(",")
    out: list[str] = []
    for t in targets:
        for part in str(t).split(","):
            part = part.strip()
            if part:
                name = SHORT_NAMES.get(part, part)
                if name not in out:
                    out.append(name)
    if not out:
        raise ConfigError("--lora-targets is empty; name the layers to adapt, e.g. --lora-targets q,v")
    return out


def check_targets(model: nn.Module, targets: list[str]) -> None:
    available = linear_names(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise ConfigError(f"--lora-targets {','.join(missing)}: this model has no linear layer of that name; "
                          f"available: {', '.join(available)} (short forms: {', '.join(SHORT_NAMES)})")


def lora_spec(rank: int, alpha: float, targets: Iterable[str] | str, dropout: float = 0.0) -> dict[str, Any]:
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"--lora-rank={rank} is out of range; it must be a whole number >= 1")
    if alpha <= 0:
        raise ConfigError(f"--lora-alpha={alpha} must be > 0")
    if not 0 <= dropout < 1:
        raise ConfigError(f"--lora-dropout={dropout} must be in [0, 1)")
    return {"rank": rank, "alpha": float(alpha), "dropout": float(dropout), "targets": normalize_targets(targets)}


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, targets: Iterable[str] | str = ("q_proj", "v_proj"),
               dropout: float = 0.0) -> list[str]:
    """Swap the targeted linear layers of `model` for `LoRALinear`s (in place); returns their full names.

    The model's config records the adapter, so checkpoints of the adapted model reload as such."""
    spec = lora_spec(rank, alpha, targets, dropout)
    check_targets(model, spec["targets"])
    swapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in spec["targets"] and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, spec["rank"], spec["alpha"], spec["dropout"]))
                swapped.append(f"{name}.{child_name}" if name else child_name)
    config = getattr(model, "config", None)
    if config is not None and config.lora != spec:
        model.config = config.replace(lora=spec)
    return swapped


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight (W + B A * alpha / rank) and put plain `nn.Linear`s back;
    the model then has the config and state-dict names of a model that was never adapted."""
    for name, lora in lora_modules(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = nn.Linear(lora.in_features, lora.out_features, bias=lora.bias is not None,
                           device=lora.weight.device, dtype=lora.weight.dtype)
        linear.weight.copy_((lora.weight.float() + lora.delta()).to(lora.weight.dtype))
        if lora.bias is not None:
            linear.bias.copy_(lora.bias)
        linear.weight.requires_grad_(lora.weight.requires_grad)
        setattr(parent, child, linear)
    config = getattr(model, "config", None)
    if config is not None and config.lora is not None:
        model.config = config.replace(lora=None)
    return model


def mark_trainable(model: nn.Module, extra: Iterable[str] = ()) -> None:
    """Freeze everything but the LoRA matrices and the parameters whose names start with one of `extra`."""
    prefixes = tuple(extra)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name or (bool(prefixes) and name.startswith(prefixes)))


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Parameters of a task head (trained and saved with the adapter)."""
    config = model.config
    return ("classifier.", "pooler.") if config.head != "lm" else ()


def trainable_fraction(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters), shared tensors counted once."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


__all__ = ["LoRALinear", "apply_lora", "merge_lora", "linear_names", "mark_trainable", "head_prefixes",
           "trainable_fraction", "lora_spec", "lora_modules", "SHORT_NAMES", "HEAD_MODULES"]
