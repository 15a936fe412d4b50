"""Low-rank factorisation as a layer swap: each linear layer of the blocks becomes two (rank r) by truncated SVD.

`factorize(model, rank_ratio=0.5, method="asvd", calib="data/")` replaces every attention and MLP projection
W (out, in) by `model.lowrank.LowRankLinear` with A (r, in) and B (out, r), in place, and records the ranks in
`model.config.lowrank`, so `lmforge.save` writes a checkpoint that `lmforge.load` rebuilds. The rank of each layer
comes from one global ratio of parameters: r = floor(rank_ratio * out * in / (out + in)), so `rank_ratio=0.5`
halves the parameters of every factorised layer (and 0.8 keeps 80%: "20% fewer"). A layer where that rank would not
be smaller than min(out, in) stays whole unless `full=True` (tests: the full rank reproduces the layer).

Methods (all keep the bias as it was; every rank component is then balanced between A and B, the same product):
- `svd`: W = U S V^T truncated to r; B = U_r S_r, A = V_r^T. Best for the weights, blind to the inputs.
- `asvd` (Yuan et al. 2023, "ASVD: Activation-aware Singular Value Decomposition"): scale the input channels by
  s_j = mean|x_j|^alpha (alpha 0.5, the paper's) over calibration tokens, W S = U' S' V'^T, A = V'_r^T S^-1: the
  channels that carry large activations are kept more faithfully.
- `svd-llm` (Wang et al. 2024, "SVD-LLM"): whiten by the Cholesky factor L of X^T X (W L = U' S' V'^T,
  A = V'_r^T L^-1), which minimises the error of the layer's outputs ||(W - BA) X|| over the calibration inputs
  at rank r: never worse than `svd` there, whatever the inputs' correlations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, choices
from ..model.lowrank import LowRankLinear
from .calibrate import block_linears, calibration_batches, input_stats
from .prune import _check_model

METHODS = ("svd", "asvd", "svd-llm")


def rank_for(out_features: int, in_features: int, ratio: float) -> int:
    """The rank that keeps `ratio` of an (out, in) layer's parameters: r (out + in) = ratio * out * in."""
    return max(1, int(ratio * out_features * in_features / (out_features + in_features)))


def balance(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same product B A with each rank component's row of A and column of B of equal norm. The methods leave all
    of a component's scale on one side (the singular value on B; and SVD-LLM's A carries L^-1, tiny when the
    calibration inputs are large), so an optimizer's steps, of one size for every element, would wreck the small
    side in recovery training; balanced, both factors have the scale of an ordinary weight."""
    scale = (b.norm(dim=0) / a.norm(dim=1).clamp(min=1e-30)).clamp(min=1e-30).sqrt()  # (rank,)
    return a * scale[:, None], b / scale[None, :]


@torch.no_grad()
def factor(weight: torch.Tensor, rank: int, method: str = "svd", stats: Any = None, alpha: float = 0.5,
           damp: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (rank, in), B (out, rank)) with B A close to `weight` (see the module docstring), in float32, each rank
    component balanced between the two factors (`balance`)."""
    a, b = _factor(weight, rank, method, stats, alpha, damp)
    a, b = balance(a, b)
    return a.float(), b.float()


def _factor(weight: torch.Tensor, rank: int, method: str, stats: Any, alpha: float,
            damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    w = weight.detach().double().cpu()
    if method == "svd":
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return vh[:rank], u[:, :rank] * s[:rank]
    if stats is None:
        raise ConfigError(f"--method {method} needs calibration inputs: give --calib")
    if method == "asvd":
        scale = stats.mean_abs.double().clamp(min=1e-6) ** alpha
        u, s, vh = torch.linalg.svd(w * scale[None, :], full_matrices=False)
        return vh[:rank] / scale[None, :], u[:, :rank] * s[:rank]
    if method == "svd-llm":
        gram = stats.gram.double()
        eye = gram.diagonal().mean().clamp(min=1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype)
        while True:  # X^T X = L L^T, damped just enough to be positive definite (fewer tokens than channels)
            chol, info = torch.linalg.cholesky_ex(gram + damp * eye)
            if int(info) == 0 or damp > 1:
                break
            damp *= 10
        u, s, vh = torch.linalg.svd(w @ chol, full_matrices=False)
        a = torch.linalg.solve_triangular(chol, vh[:rank], upper=False, left=False)  # V_r^T L^-1
        return a, u[:, :rank] * s[:rank]
    raise ConfigError(f"--method {method!r} is not a low-rank method; use {choices(METHODS)}")


@torch.no_grad()
def lowrank_layer(linear: nn.Linear, rank: int, method: str = "svd", stats: Any = None) -> LowRankLinear:
    a, b = factor(linear.weight, rank, method, stats)
    w = linear.weight
    layer = LowRankLinear(linear.in_features, linear.out_features, rank, linear.bias is not None, device=w.device,
                          dtype=w.dtype)
    layer.down.weight.copy_(a)
    layer.up.weight.copy_(b)
    if linear.bias is not None:
        layer.up.bias.copy_(linear.bias)
    layer.requires_grad_(w.requires_grad)
    return layer


@torch.no_grad()
def factorize(model: nn.Module, rank_ratio: float = 0.5, method: str = "svd", *, calib: Any = None,
              calib_samples: int = 64, calib_length: int = 256, text_column: str = "text", full: bool = False,
              progress: bool = True) -> dict[str, int]:
    """Factorise the block projections of `model` in place (see the module docstring); returns each layer's rank."""
    config = _check_model(model, "lowrank")
    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is not a low-rank method; use {choices(METHODS)}")
    if not (0.0 < rank_ratio < 1.0 or (full and rank_ratio == 1.0)):
        raise ConfigError(f"--rank-ratio {rank_ratio} is out of range; it must be > 0 and < 1 (0.5 = half the "
                          "parameters of each factorised layer; at 1 two factors cost what the layer does)")
    if method != "svd" and calib is None:
        raise ConfigError(f"--method {method} scales by input activations: give --calib (prepared data, text files or "
                          "a .tsv/.csv/.jsonl table), or use --method svd")
    modules = dict(model.named_modules())
    ranks = {}
    for name in block_linears(model):
        m = modules[name]
        r = min(m.in_features, m.out_features) if full else rank_for(m.out_features, m.in_features, rank_ratio)
        if full or r < min(m.in_features, m.out_features):
            ranks[name] = r
    if not ranks:
        raise ConfigError(f"--rank-ratio {rank_ratio} factorises no layer (every rank would be full); lower it")
    stats = None
    if method != "svd":
        batches = calibration_batches(model, calib, samples=calib_samples, length=calib_length,
                                      text_column=text_column)
        stats = input_stats(model, list(ranks), batches, gram=method == "svd-llm", progress=progress)
    from tqdm import tqdm

    for name in tqdm(ranks, desc=f"{method} factorisation", unit="layer", disable=not progress):
        parent, _, child = name.rpartition(".")
        layer = lowrank_layer(modules[name], ranks[name], method, stats[name] if stats else None)
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    model.config = config.replace(lowrank={"method": method, "rank_ratio": rank_ratio,
                                           "calib": str(calib) if calib is not None else None, "layers": ranks})
    return ranks


@torch.no_grad()
def merge_lowrank(model: nn.Module) -> nn.Module:
    """Put dense `Linear`s (the products B A) back in place of factorised layers (exports that need plain layers)."""
    from ..model.fast import Linear
    from ..model.lowrank import lowrank_layers

    for name, layer in lowrank_layers(model).items():
        plain = Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                       device=layer.up.weight.device, dtype=layer.up.weight.dtype)
        plain.weight.copy_(layer.weight_product().to(plain.weight.dtype))
        if layer.bias is not None:
            plain.bias.copy_(layer.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain)
    if getattr(model, "config", None) is not None and model.config.lowrank:
        model.config = model.config.replace(lowrank=None)
    return model


__all__ = ["factorize", "factor", "lowrank_layer", "rank_for", "merge_lowrank", "METHODS"]
