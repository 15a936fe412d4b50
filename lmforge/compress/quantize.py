"""Quantization as a layer swap on a loaded model: round-to-nearest or GPTQ, weight-only int8/int4, dynamic int8.

`quantize(model, method="int4", group_size=32, algo="gptq", calib="data/")` replaces the model's linear layers
(every projection of the blocks and, unless head=False, the LM head; task heads stay float) by the quantized
layers of `lmforge.model.quant`, in place, and records the layout in `model.config.quant`, so `lmforge.save`
writes a checkpoint (integers + scales in safetensors, the layout in config.json) that `lmforge.load` rebuilds.

GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers"):
for each linear layer, H = 2 X^T X over calibration inputs X; columns are quantized in order (or by decreasing
H diagonal with act_order) and each one's rounding error is spread over the columns not yet quantized with the
inverse Hessian's Cholesky factor, in lazy blocks of 128 columns. Blocks are processed in turn: the inputs of
block i come from blocks 0..i-1 already quantized (the calibration activations are captured once at the first
block and carried forward), so later layers correct for earlier layers' errors. With act_order, int4 group
scales are fixed from the unquantized weights first ("static groups"), so groups stay contiguous for the kernel.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError, choices
from ..model.quant import (GROUP_SIZES, KINDS, check_int4_shape, exact_forward, from_codes, int4_codes, int4_params,
                           int8_codes, int8_scales, quant_layers, quantizable, quantize_rtn, swap)

ALGOS = ("rtn", "gptq")


# ---- token windows from text or prepared data -------------------------------------------------------------

def token_windows(model: nn.Module, source: Any, *, count: int, context: int, split: str = "val",
                  what: str = "--data") -> torch.Tensor:
    """Up to `count` non-overlapping windows (count, context) of token ids: from a prepared data folder (its
    `split`; its tokenizer must be the model's), text files or folders (tokenized with the model's tokenizer), a
    list of strings, or a tensor of ids."""
    if isinstance(source, torch.Tensor):
        ids = source.reshape(-1).long()
    elif isinstance(source, (list, tuple)) and all(isinstance(s, str) for s in source):
        ids = torch.tensor(_tokenizer(model, what).encode("\n\n".join(source)), dtype=torch.long)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise DataError(f"{what} {path} does not exist; give a text file or folder, or a prepared data folder")
        from ..data.prepare import check_tokenizer, is_prepared

        if path.is_dir() and is_prepared(path):
            from ..data.batches import PreparedData

            prepared = PreparedData(path)
            if split not in prepared.manifest["splits"]:
                raise DataError(f"{what} {path} has no {split} split (it has {', '.join(prepared.manifest['splits'])})")
            if getattr(model, "tokenizer", None) is not None:
                check_tokenizer(prepared.manifest, model.tokenizer, path, "the model")
            tokens = prepared.tokens(split)
            ids = torch.from_numpy(np.asarray(tokens[0: min(len(tokens), count * context)]).astype(np.int64))
        else:
            from ..corpus import CorpusReader

            tok = _tokenizer(model, what)
            parts, have = [], 0
            # read about what is needed (a few characters a token), not whole files: tokenizing is the slow part
            for piece in CorpusReader(path, chunk_chars=max(1 << 16, 8 * count * context)).pieces():
                parts.append(tok.encode(piece.text))
                have += len(parts[-1])
                if have >= count * context:
                    break
            ids = torch.tensor([i for p in parts for i in p], dtype=torch.long)
    else:
        raise ConfigError(f"{what} must be a path, a list of texts or a tensor of token ids; got {type(source).__name__}")
    n = min(count, len(ids) // context)
    if n < 1:
        raise DataError(f"{what} {source if isinstance(source, (str, os.PathLike)) else ''} holds {len(ids):,} tokens, "
                        f"fewer than one window of {context}; give more text")
    return ids[: n * context].view(n, context)


def _tokenizer(model: nn.Module, what: str):
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ConfigError(f"the model has no tokenizer to read the text of {what}; give a prepared data folder")
    return tok


# ---- GPTQ -------------------------------------------------------------------------------------------------

class Hessian:
    """Running 2/n * X^T X of a layer's inputs."""

    def __init__(self, k: int) -> None:
        self.h = torch.zeros(k, k, dtype=torch.float32)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        m = x.shape[0]
        self.h *= self.n / (self.n + m)
        self.n += m
        x = x * math.sqrt(2 / self.n)
        self.h += x.T @ x


@torch.no_grad()
def gptq_codes(weight: torch.Tensor, hessian: torch.Tensor, kind: str, group_size: int = 32,
               symmetric: bool = False, act_order: bool = False, damp: float = 0.01,
               block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """GPTQ on one weight (N, K) with Hessian (K, K): (codes, scales, offsets) in the layout of `from_codes`."""
    W = weight.detach().float().cpu().clone()
    n, k = W.shape
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    int4 = kind == "int4"
    if int4:
        groups = k // group_size
        block_size = max(block_size, group_size) // group_size * group_size
        scales = torch.empty(n, groups, dtype=torch.bfloat16)
        offsets = torch.empty(n, groups, dtype=torch.bfloat16)
        if act_order:  # static groups: scales from the unquantized weight
            scales[:], offsets[:] = int4_params(W.view(n, groups, group_size), symmetric)
    else:
        scales = int8_scales(W)
        offsets = None
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(k)
    try:
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError:
        raise ConfigError("GPTQ: the calibration Hessian is not positive definite even with damping; give more "
                          "calibration text (--calib-samples) or a larger --damp") from None
    codes = torch.zeros(n, k, dtype=torch.int16)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            w = W1[:, i]
            if int4:
                g = col // group_size
                if not act_order and col % group_size == 0:  # a new group: its scales from the updated weights
                    scales[:, g], offsets[:, g] = int4_params(W1[:, i: i + group_size], symmetric)
                q = int4_codes(w[:, None], scales[:, g], offsets[:, g])[:, 0]
                deq = (q.float() - 8) * scales[:, g].float() + offsets[:, g].float()
            else:
                q = int8_codes(w[:, None], scales)[:, 0]
                deq = q.float() * scales.float()
            codes[:, col] = q.to(torch.int16)
            err = (w - deq) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    q = codes.to(torch.uint8 if int4 else torch.int8)
    return q, (scales if kind != "dynamic-int8" else scales.float()), offsets


def _blocks(model: nn.Module) -> tuple[Any, list[nn.Module]]:
    """The stack GPTQ walks through block by block."""
    arch = model.config.arch
    if arch == "encoder_decoder":
        raise ConfigError("--algo gptq supports decoder and encoder models; use --algo rtn for an encoder-decoder")
    if model.config.unique_layers:
        raise ConfigError("--algo gptq does not support shared layers (unique_layers); use --algo rtn")
    stack = model.decoder if arch == "decoder" else model.encoder
    return stack, [stack.block(i) for i in range(stack.n_layers)]


class _Stop(Exception):
    pass


@torch.no_grad()
def gptq_quantize(model: nn.Module, names: list[str], kind: str, windows: torch.Tensor, *, group_size: int,
                  symmetric: bool, act_order: bool, damp: float, batch_size: int = 4, progress: bool = True) -> None:
    """Quantize the layers `names` of `model` with GPTQ, block by block (see the module docstring). Calibration
    activations pass the already quantized layers in fp32 (`exact_forward`), whatever kernels this CPU has."""
    with exact_forward():
        _gptq_quantize(model, names, kind, windows, group_size=group_size, symmetric=symmetric, act_order=act_order,
                       damp=damp, batch_size=batch_size, progress=progress)


def _gptq_quantize(model: nn.Module, names: list[str], kind: str, windows: torch.Tensor, *, group_size: int,
                   symmetric: bool, act_order: bool, damp: float, batch_size: int, progress: bool) -> None:
    stack, blocks = _blocks(model)
    wanted = set(names)
    captured: list[tuple[tuple, dict]] = []

    def capture(_module, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        for b in range(0, len(windows), batch_size):
            try:
                model(windows[b: b + batch_size])
            except _Stop:
                pass
    finally:
        handle.remove()
    xs = [args[0] for args, _ in captured]
    module_names = {id(m): n for n, m in model.named_modules()}
    from tqdm import tqdm

    bar = tqdm(total=len(names), desc="GPTQ", unit="layer", disable=not progress)
    for index, block in enumerate(blocks):
        prefix = module_names[id(block)] + "."
        targets = {n: m for n, m in model.named_modules() if n in wanted and n.startswith(prefix)}
        # layers fed the same tensor (q/k/v, gate/up) share one Hessian and are quantized as one stacked matrix
        # (GPTQ treats rows independently, so this equals quantizing them one by one, in fewer, larger steps)
        seen: dict[str, torch.Tensor] = {}  # the first batch's input of each layer, held so identities stay unique
        hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen.setdefault(n, a[0])) for n, m in targets.items()]
        try:
            args, kwargs = captured[0]
            block(xs[0], *args[1:4], index, *args[5:], **kwargs)
        finally:
            for h in hooks:
                h.remove()
        groups: list[list[str]] = []
        for n in targets:
            group = next((g for g in groups if seen[g[0]] is seen[n]), None)
            group.append(n) if group is not None else groups.append([n])
        seen.clear()
        hessians = {g[0]: Hessian(targets[g[0]].in_features) for g in groups}
        hooks = [targets[g[0]].register_forward_pre_hook(lambda mod, a, h=hessians[g[0]]: h.add(a[0])) for g in groups]
        try:
            for x, (args, kwargs) in zip(xs, captured):
                block(x, *args[1:4], index, *args[5:], **kwargs)
        finally:
            for h in hooks:
                h.remove()
        for group in groups:
            weight = torch.cat([targets[n].weight.detach() for n in group])
            codes, scales, offsets = gptq_codes(weight, hessians[group[0]].h, kind, group_size, symmetric, act_order,
                                                damp)
            at = 0
            for n in group:
                rows = slice(at, at + targets[n].out_features)
                at = rows.stop
                swap(model, n, from_codes(targets[n], kind, codes[rows], scales[rows],
                                          None if offsets is None else offsets[rows], group_size))
                bar.update()
        xs = [block(x, *args[1:4], index, *args[5:], **kwargs) for x, (args, kwargs) in zip(xs, captured)]
    if "lm_head" in wanted:  # the LM head sees the final norm of the last block's (quantized) output
        hessian = Hessian(model.lm_head.in_features)
        for x in xs:
            hessian.add(stack.final_norm(x) if stack.final_norm is not None else x)
        codes, scales, offsets = gptq_codes(model.lm_head.weight, hessian.h, kind, group_size, symmetric, act_order,
                                            damp)
        swap(model, "lm_head", from_codes(model.lm_head, kind, codes, scales, offsets, group_size))
        bar.update()
    bar.close()
    done = quant_layers(model)
    for n in [n for n in names if n not in done]:  # outside the walked stack (e.g. an MLM transform): RTN
        swap(model, n, quantize_rtn(model.get_submodule(n), kind, group_size, symmetric))


# ---- the API ----------------------------------------------------------------------------------------------

def quantize(
    model: nn.Module,
    method: str = "int8",
    *,
    group_size: int = 32,
    algo: str = "rtn",
    calib: Any = None,
    symmetric: bool = False,
    head: bool = True,
    act_order: bool = False,
    calib_samples: int = 32,
    calib_context: int = 512,
    damp: float = 0.01,
    progress: bool = True,
) -> nn.Module:
    """Quantize `model`'s linear layers in place and return it (see the module docstring).

    method: int8 (weight-only, per channel) | int4 (weight-only, groups of `group_size` inputs) | dynamic-int8
    (int8 weights and per-token int8 activations, for encoders); algo: rtn | gptq (needs `calib`: text files or
    folders, a prepared data folder (its train split), a list of texts, or token ids); head: quantize the LM head
    too (task heads always stay float); symmetric: int4 codes centred on zero (default: min/max per group)."""
    config = getattr(model, "config", None)
    if config is None or not isinstance(model, nn.Module):
        raise ConfigError(f"quantize needs an lmforge model (lmforge.load gives one); got {type(model).__name__}")
    if method not in KINDS:
        raise ConfigError(f"--method {method!r} is not a quantization method; use {choices(KINDS)}")
    if algo not in ALGOS:
        raise ConfigError(f"--algo {algo!r} is not supported; use {choices(ALGOS)}")
    if config.quant:
        raise ConfigError(f"the model is already quantized ({config.quant.get('method')}); quantize the original")
    if config.lora:
        raise ConfigError("the model carries a LoRA adapter; merge it first (lmforge lora merge), then quantize")
    if algo == "gptq" and method == "dynamic-int8":
        raise ConfigError("--algo gptq is for weight-only int8/int4; dynamic-int8 uses --algo rtn")
    if algo == "gptq" and calib is None:
        raise ConfigError("--algo gptq needs calibration text: give --calib (a text file or folder, or prepared data)")
    if method == "int4" and group_size not in GROUP_SIZES:
        raise ConfigError(f"--group-size {group_size} is not supported by the int4 kernel; use {choices(GROUP_SIZES)}")
    if not 0 < damp < 1:
        raise ConfigError(f"--damp {damp} must be in (0, 1); 0.01 is usual")
    names = quantizable(model, head)
    if not names:
        raise ConfigError("the model has no linear layers to quantize")
    modules = dict(model.named_modules())
    if method == "int4":
        for n in names:
            check_int4_shape(n, modules[n].in_features, group_size)
    if model.tied and "lm_head" in names:  # the head gets its own (quantized) weight; the embedding stays
        model.lm_head = _untied(model.lm_head)
    if algo == "gptq":
        context = min(calib_context, config.context_length)
        split = "train" if _prepared(calib) else "val"
        windows = token_windows(model, calib, count=calib_samples, context=context, split=split, what="--calib")
        gptq_quantize(model, names, method, windows, group_size=group_size, symmetric=symmetric,
                      act_order=act_order, damp=damp, progress=progress)
    else:
        from tqdm import tqdm

        for n in tqdm(names, desc=f"{method} RTN", unit="layer", disable=not progress):
            swap(model, n, quantize_rtn(model.get_submodule(n), method, group_size, symmetric))
    spec = {"method": method, "algo": algo, "group_size": group_size if method == "int4" else None,
            "symmetric": bool(symmetric) if method == "int4" else True, "act_order": bool(act_order),
            "layers": {n: method for n in names}}
    model.config = config.replace(quant=spec)
    return model.eval()


def _untied(head: nn.Linear) -> nn.Linear:
    plain = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None, device="meta")
    plain.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    if head.bias is not None:
        plain.bias = head.bias
    return plain


def _prepared(path: Any) -> bool:
    if not isinstance(path, (str, os.PathLike)):
        return False
    from ..data.prepare import is_prepared

    return Path(path).is_dir() and is_prepared(Path(path))


def layer_error(layer: nn.Module, reference: nn.Linear, inputs: torch.Tensor) -> float:
    """Relative output error ||layer(x) - reference(x)|| / ||reference(x)|| on `inputs` (fp32 reference)."""
    with torch.no_grad():
        ref = reference(inputs)
        return float((layer(inputs).float() - ref).norm() / ref.norm())


__all__ = ["quantize", "gptq_codes", "gptq_quantize", "Hessian", "token_windows", "layer_error", "ALGOS"]
