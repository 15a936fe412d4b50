"""Pruning: unstructured (magnitude, Wanda), 2:4 semi-structured, and structured removal of heads and MLP neurons.

Unstructured methods zero weights of every linear layer of the blocks (attention and MLP projections; embeddings
and heads stay whole), at exactly `sparsity` in each layer:

- `magnitude`: the smallest |W| of each layer;
- `wanda` (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"): the smallest
  |W_ij| * ||X_j||_2 in each output row, ||X_j|| the norm of input channel j over calibration tokens (one pass over
  the calibration data through the unpruned model: the statistics of every layer come from the original
  activations, where the paper prunes block by block);
- `2:4`: in each group of 4 consecutive inputs of a row, the 2 with the smallest score (Wanda's when calibration
  data is given, else |W|): NVIDIA's sparse tensor cores' pattern, always 50%.

The zeros are stored as ordinary dense weights: the checkpoint loads and runs everywhere, at the dense speed (no
CPU kernel here skips zeros); the gain is what a sparse kernel or a compressor makes of it.

Structured pruning (`heads`, `neurons`, or both) physically removes attention heads and MLP neurons: q/k/v rows,
o_proj columns, up/gate rows and down_proj columns are cut out, and the model is rebuilt with a smaller config
(`n_head`, `n_kv_head`, `d_ff`), so it is faster on every kernel and loads, decodes and exports like any model.
Every layer loses the same number of heads and neurons, which keeps one `ModelConfig` (one n_head and one d_ff
for all layers, as every Hugging Face, GGUF and ONNX layout expects); which ones go is chosen in each layer by
importance on calibration data:

- a neuron's: mean |h_j| over tokens (h the MLP's hidden activation) times ||down_proj[:, j]||_2, the size of its
  contribution to the output;
- a head's: the mean norm of its contribution to o_proj's output, ||o_proj[:, head] y_head||_2.

With grouped-query attention the same number of query heads goes from each key/value group (the groups stay); with
multi-head attention a head's key and value go with it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, choices
from ..model.blocks import MLP, Attention
from .calibrate import Batch, block_linears, calibration_batches, input_stats, run_batches

UNSTRUCTURED = ("magnitude", "wanda", "2:4")
STRUCTURED = ("heads", "neurons")
METHODS = UNSTRUCTURED + STRUCTURED + ("heads,neurons",)


def _check_model(model: nn.Module, what: str) -> Any:
    config = getattr(model, "config", None)
    if config is None or not isinstance(model, nn.Module):
        raise ConfigError(f"{what} needs an lmforge model (lmforge.load gives one); got {type(model).__name__}")
    for field, hint in (("quant", "prune the float model, then quantize"),
                        ("lora", "merge it first (lmforge lora merge)"),
                        ("lowrank", "prune the original, then factorise")):
        if getattr(config, field, None):
            raise ConfigError(f"the model is {'quantized' if field == 'quant' else 'factorised' if field == 'lowrank' else 'adapted with LoRA'}; "
                              f"{hint}")
    return config


# ---- unstructured ---------------------------------------------------------------------------------------

def unstructured_mask(weight: torch.Tensor, method: str, sparsity: float, norms: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """A boolean mask (True = keep) of a weight (out, in): see the module docstring."""
    score = weight.detach().float().abs()
    if norms is not None:
        score = score * norms.to(score.device)[None, :]
    out, k_in = score.shape
    if method == "2:4":
        if k_in % 4:
            raise ConfigError(f"2:4 sparsity needs inputs in multiples of 4; a layer has {k_in}")
        groups = score.view(out, k_in // 4, 4)
        drop = groups.topk(2, dim=-1, largest=False).indices
        keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
        return keep.view(out, k_in)
    if method == "magnitude":  # layer-wise: the smallest of the whole matrix
        n = int(round(sparsity * score.numel()))
        keep = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
        if n:
            keep[score.flatten().topk(n, largest=False).indices] = False
        return keep.view_as(score)
    n = int(round(sparsity * k_in))  # wanda: per output row
    keep = torch.ones_like(score, dtype=torch.bool)
    if n:
        keep.scatter_(1, score.topk(n, dim=1, largest=False).indices, False)
    return keep


@torch.no_grad()
def prune_unstructured(model: nn.Module, method: str = "wanda", sparsity: float = 0.5, *, calib: Any = None,
                       calib_samples: int = 64, calib_length: int = 256, text_column: str = "text",
                       progress: bool = True) -> dict[str, float]:
    """Zero weights of the block projections in place (see the module docstring); returns each layer's sparsity."""
    config = _check_model(model, "prune")
    if method not in UNSTRUCTURED:
        raise ConfigError(f"--method {method!r} is not an unstructured pruning method; use {choices(UNSTRUCTURED)}")
    if method == "2:4":
        sparsity = 0.5
    elif not 0.0 < sparsity < 1.0:
        raise ConfigError(f"--sparsity {sparsity} is out of range; it must be > 0 and < 1 (0.5 = half the weights)")
    if method == "wanda" and calib is None:
        raise ConfigError("--method wanda weighs weights by input activations: give --calib (prepared data, text "
                          "files or a .tsv/.csv/.jsonl table)")
    names = block_linears(model)
    if not names:
        raise ConfigError("the model has no linear layers to prune")
    stats = None
    if calib is not None and method != "magnitude":
        batches = calibration_batches(model, calib, samples=calib_samples, length=calib_length,
                                      text_column=text_column)
        stats = input_stats(model, names, batches, progress=progress)
    modules = dict(model.named_modules())
    achieved = {}
    for name in names:
        weight = modules[name].weight
        mask = unstructured_mask(weight, method, sparsity, stats[name].norms if stats else None)
        weight.mul_(mask.to(weight.dtype))
        achieved[name] = 1.0 - mask.float().mean().item()
    model.config = config.replace(pruning={"method": method, "sparsity": sparsity,
                                           "score": "wanda" if stats else "magnitude",
                                           "calib": str(calib) if calib is not None else None,
                                           "layers": len(names)})
    return achieved


def sparsity_of(model: nn.Module) -> dict[str, float]:
    """The share of zero weights in each linear layer of the blocks."""
    modules = dict(model.named_modules())
    return {n: (modules[n].weight == 0).float().mean().item() for n in block_linears(model)}


# ---- structured -----------------------------------------------------------------------------------------

def _attentions(model: nn.Module) -> dict[str, Attention]:
    return {n: m for n, m in model.named_modules() if isinstance(m, Attention)}


def _mlps(model: nn.Module) -> dict[str, MLP]:
    return {n: m for n, m in model.named_modules() if isinstance(m, MLP)}


@torch.no_grad()
def structured_importance(model: nn.Module, batches: list[Batch], *, heads: bool, neurons: bool,
                          progress: bool = False) -> dict[str, torch.Tensor]:
    """Importance of each head (`<attention>`: (n_head,)) and each MLP neuron (`<mlp>`: (d_ff,)) on the batches."""
    from .calibrate import _rows

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def add(name: str, value: torch.Tensor, n: int) -> None:
        sums[name] = sums.get(name, 0) + value.double().cpu()
        counts[name] = counts.get(name, 0) + n

    if heads:
        for name, attn in _attentions(model).items():
            def head_hook(module, args, name=name, attn=attn):
                y = _rows(args[0])  # (N, H * D): the heads' outputs before o_proj
                w = attn.o_proj.weight.float()  # (C, H * D)
                H, D = attn.n_head, attn.head_dim
                norms = torch.stack([(y[:, h * D:(h + 1) * D] @ w[:, h * D:(h + 1) * D].T).norm(dim=1).sum()
                                     for h in range(H)])
                add(name, norms, y.shape[0])
            hooks.append(attn.o_proj.register_forward_pre_hook(head_hook))
    if neurons:
        for name, mlp in _mlps(model).items():
            def neuron_hook(module, args, name=name, mlp=mlp):
                h = _rows(args[0])  # (N, d_ff): the hidden activation entering down_proj
                add(name, h.abs().sum(0) * mlp.down_proj.weight.float().norm(dim=0), h.shape[0])
            hooks.append(mlp.down_proj.register_forward_pre_hook(neuron_hook))
    was = model.training
    model.eval()
    try:
        run_batches(model, batches, progress, desc="importance")
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return {k: (v / max(counts[k], 1)).float() for k, v in sums.items()}


def _keep_heads(score: torch.Tensor, n_kv: int, remove: int) -> torch.Tensor:
    """Sorted indices of the query heads kept: `remove` fewer in each of the n_kv groups (whole heads with MHA)."""
    H = score.numel()
    group = H // n_kv
    if group == 1:
        return score.topk(H - remove).indices.sort().values
    kept = [g * group + score[g * group:(g + 1) * group].topk(group - remove).indices for g in range(n_kv)]
    return torch.cat(kept).sort().values


def head_removal(config: Any, amount: float) -> tuple[int, int, int]:
    """(heads removed per layer, n_head after, n_kv_head after) for removing `amount` of the heads."""
    group = config.n_head // config.n_kv_head
    if group == 1:
        remove = int(round(amount * config.n_head))
        remove = min(remove, config.n_head - 1)
        return remove, config.n_head - remove, config.n_kv_head - remove
    remove = min(int(round(amount * group)), group - 1)  # query heads per key/value group
    return remove, config.n_head - remove * config.n_kv_head, config.n_kv_head


def _rows_of(linear: nn.Linear, index: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"weight": linear.weight.detach()[index]}
    if linear.bias is not None:
        out["bias"] = linear.bias.detach()[index]
    return out


def _cols_of(linear: nn.Linear, index: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"weight": linear.weight.detach()[:, index]}
    if linear.bias is not None:
        out["bias"] = linear.bias.detach()
    return out


@torch.no_grad()
def prune_structured(model: nn.Module, amount: float = 0.3, *, heads: bool = True, neurons: bool = True,
                     calib: Any = None, calib_samples: int = 64, calib_length: int = 256, text_column: str = "text",
                     progress: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """A physically smaller copy of `model` without the least important heads and/or MLP neurons (see the module
    docstring), and what was kept: {"heads": {attention: kept indices}, "neurons": {mlp: kept indices}}."""
    config = _check_model(model, "prune")
    if not (heads or neurons):
        raise ConfigError(f"--method names no structure to remove; use {choices(STRUCTURED + ('heads,neurons',))}")
    if not 0.0 < amount < 1.0:
        raise ConfigError(f"--amount {amount} is out of range; it must be > 0 and < 1 (0.3 = 30% of heads/neurons)")
    if calib is None:
        raise ConfigError("structured pruning ranks heads and neurons on calibration data: give --calib (prepared "
                          "data, text files or a .tsv/.csv/.jsonl table)")
    changes: dict[str, Any] = {}
    remove_heads = 0
    if heads:
        remove_heads, n_head, n_kv = head_removal(config, amount)
        if remove_heads == 0:
            raise ConfigError(f"--amount {amount} removes no head: this model has {config.n_head} heads "
                              f"({config.n_head // config.n_kv_head} per key/value group); raise --amount")
        changes.update(n_head=n_head, n_kv_head=n_kv, head_dim=config.head_dim)
        if config.pos == "rope":
            changes["rotary_dim"] = config.rotary_dim
    remove_neurons = int(round(amount * config.d_ff)) if neurons else 0
    if neurons:
        if not 0 < remove_neurons < config.d_ff:
            raise ConfigError(f"--amount {amount} removes {remove_neurons} of {config.d_ff} neurons; choose 0 < "
                              "--amount < 1")
        changes["d_ff"] = config.d_ff - remove_neurons
    batches = calibration_batches(model, calib, samples=calib_samples, length=calib_length, text_column=text_column)
    importance = structured_importance(model, batches, heads=heads, neurons=neurons, progress=progress)
    kept: dict[str, dict[str, list[int]]] = {"heads": {}, "neurons": {}}
    state = dict(model.state_dict())
    for name, attn in (_attentions(model).items() if heads else ()):
        q_heads = _keep_heads(importance[name], attn.n_kv_head, remove_heads)
        kept["heads"][name] = q_heads.tolist()
        D = attn.head_dim
        q_index = (q_heads[:, None] * D + torch.arange(D)[None]).flatten()
        kv_heads = q_heads if attn.n_kv_head == attn.n_head else torch.arange(attn.n_kv_head)
        kv_index = (kv_heads[:, None] * D + torch.arange(D)[None]).flatten()
        prefix = f"{name}." if name else ""
        for proj, part in (("q_proj", _rows_of(attn.q_proj, q_index)), ("k_proj", _rows_of(attn.k_proj, kv_index)),
                           ("v_proj", _rows_of(attn.v_proj, kv_index)), ("o_proj", _cols_of(attn.o_proj, q_index))):
            for key, value in part.items():
                state[f"{prefix}{proj}.{key}"] = value
    for name, mlp in (_mlps(model).items() if neurons else ()):
        index = importance[name].topk(config.d_ff - remove_neurons).indices.sort().values
        kept["neurons"][name] = index.tolist()
        prefix = f"{name}." if name else ""
        parts = [("up_proj", _rows_of(mlp.up_proj, index)), ("down_proj", _cols_of(mlp.down_proj, index))]
        if mlp.gated:
            parts.append(("gate_proj", _rows_of(mlp.gate_proj, index)))
        for proj, part in parts:
            for key, value in part.items():
                state[f"{prefix}{proj}.{key}"] = value
    what = "+".join(k for k, on in (("heads", heads), ("neurons", neurons)) if on)
    record = {"method": what, "amount": amount, "calib": str(calib), "heads_removed_per_layer": remove_heads,
              "neurons_removed_per_layer": remove_neurons, "from": {"n_head": config.n_head,
                                                                    "n_kv_head": config.n_kv_head,
                                                                    "d_ff": config.d_ff}}
    new = _rebuilt(model, config.replace(**changes, pruning=record), state)
    return new, kept


def _rebuilt(model: nn.Module, config: Any, state: dict[str, torch.Tensor]) -> nn.Module:
    """A model of `config` holding `state` (on the device and in the dtype of `model`)."""
    from ..model import Transformer

    param = next(model.parameters())
    with torch.device("meta"):
        new = Transformer(config)
    keys = {k for k in new.state_dict() if k not in new.tied_keys()}
    missing, _ = new.load_state_dict({k: state[k].to(param.device) for k in keys}, strict=False, assign=True)
    if set(missing) - new.tied_keys():
        raise ConfigError(f"rebuilding the pruned model left {', '.join(sorted(missing)[:3])} unfilled")
    if new.tied:
        new.lm_head.weight = new.tok_embed.weight
    from ..model.meta import materialize_buffers

    materialize_buffers(new, param.device)
    new.tokenizer = getattr(model, "tokenizer", None)
    new.train(model.training)
    return new


def parameter_share(model: nn.Module, reference: nn.Module) -> float:
    return model.num_parameters() / reference.num_parameters()


def prune(model: nn.Module, method: str = "wanda", *, sparsity: float = 0.5, amount: float = 0.3, calib: Any = None,
          calib_samples: int = 64, calib_length: int = 256, text_column: str = "text",
          progress: bool = True) -> nn.Module:
    """Prune `model` by `method` (magnitude | wanda | 2:4 in place; heads | neurons | heads,neurons return a smaller
    copy) and return the pruned model; `config.pruning` records what was done."""
    parts = [p.strip() for p in str(method).split(",") if p.strip()]
    if not parts or any(p not in UNSTRUCTURED + STRUCTURED for p in parts) or (
            len(parts) > 1 and any(p in UNSTRUCTURED for p in parts)):
        raise ConfigError(f"--method {method!r} is not a pruning method; use {choices(METHODS)}")
    if parts[0] in UNSTRUCTURED:
        prune_unstructured(model, parts[0], sparsity, calib=calib, calib_samples=calib_samples,
                           calib_length=calib_length, text_column=text_column, progress=progress)
        return model
    new, _ = prune_structured(model, amount, heads="heads" in parts, neurons="neurons" in parts, calib=calib,
                              calib_samples=calib_samples, calib_length=calib_length, text_column=text_column,
                              progress=progress)
    return new


def masked_copy(model: nn.Module, kept: dict[str, Any]) -> nn.Module:
    """A copy of `model` in which the heads and neurons not in `kept` are zeroed out (o_proj / down_proj columns):
    it computes what the structurally pruned model computes, at the original size (tests, comparisons)."""
    import copy

    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for name, heads in kept.get("heads", {}).items():
            attn = modules[name]
            D = attn.head_dim
            keep = torch.zeros(attn.n_head * D, dtype=torch.bool)
            for h in heads:
                keep[h * D:(h + 1) * D] = True
            attn.o_proj.weight[:, ~keep] = 0
        for name, index in kept.get("neurons", {}).items():
            mlp = modules[name]
            keep = torch.zeros(mlp.down_proj.in_features, dtype=torch.bool)
            keep[torch.tensor(index)] = True
            mlp.down_proj.weight[:, ~keep] = 0
    return masked


__all__ = ["prune", "prune_unstructured", "prune_structured", "unstructured_mask", "structured_importance",
           "sparsity_of", "masked_copy", "head_removal", "METHODS", "UNSTRUCTURED", "STRUCTURED"]
