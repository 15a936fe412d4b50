"""Low-rank linear layers (a `Linear` factorised into two) and the layer swap that rebuilds them from a config.

A factorised layer computes y = (x A^T) B^T + b with A (rank, in) and B (out, rank): two `Linear`s, `down` (in ->
rank, no bias) and `up` (rank -> out, the original bias), so each product takes the oneDNN inference path of
`model.fast` like any other layer. Its parameters are `<name>.down.weight`, `<name>.up.weight`, `<name>.up.bias`.
How A and B are chosen (truncated SVD, activation-aware SVD) is in `lmforge.compress.lowrank`; here is only the
layer, and `apply_lowrank_layout`, which `Transformer.__init__` calls when `config.lowrank` names factorised layers
(`{"method", "rank_ratio", "layers": {name: rank}}`), so `lmforge.load` rebuilds the checkpoint with no flags.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .fast import Linear


class LowRankLinear(nn.Module):
    """x -> up(down(x)): a rank-`rank` factorisation of an (out, in) linear layer."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.up.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def weight_product(self) -> torch.Tensor:
        """The (out, in) matrix B A this layer applies, in float32."""
        return self.up.weight.float() @ self.down.weight.float()

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}"


def check_layout(spec: Any) -> dict[str, Any]:
    if not (isinstance(spec, dict) and isinstance(spec.get("layers"), dict) and spec["layers"]
            and all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in spec["layers"].values())):
        raise ConfigError(f"lowrank={spec!r} needs a non-empty 'layers' object mapping layer names to ranks >= 1")
    return spec


def apply_lowrank_layout(model: nn.Module, spec: dict[str, Any]) -> None:
    """Replace the layers named in `spec["layers"]` by empty `LowRankLinear`s of their rank (a checkpoint fills them)."""
    check_layout(spec)
    modules = dict(model.named_modules())
    for name, rank in spec["layers"].items():
        linear = modules.get(name)
        if not isinstance(linear, nn.Linear):
            raise ConfigError(f"lowrank.layers names {name!r}, which is not a linear layer of this model")
        layer = LowRankLinear(linear.in_features, linear.out_features, rank, linear.bias is not None,
                              device=linear.weight.device, dtype=linear.weight.dtype)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)


def lowrank_layers(model: nn.Module) -> dict[str, LowRankLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LowRankLinear)}


__all__ = ["LowRankLinear", "apply_lowrank_layout", "lowrank_layers", "check_layout"]
