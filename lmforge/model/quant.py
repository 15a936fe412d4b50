"""Quantized linear layers (weight-only int8 and int4, dynamic int8) and the layer swap that rebuilds them.

The layers live here, below `checkpoint` and `loading`, for the reason LoRA's do: a quantized checkpoint records
its layout in `config.quant` (`{"method", "group_size", "symmetric", "algo", "layers": {name: kind}}`), and
`Transformer.__init__` swaps the named `Linear`s for empty quantized ones (`apply_quant_layout`) that the
checkpoint reader then fills like any other tensors. How the integers are chosen (round-to-nearest here, GPTQ with
calibration data in `lmforge.compress`) is above, in `lmforge.compress`.

Kinds and what each stores (the checkpoint's safetensors; portable, nothing packed for one CPU):

- `int8`: symmetric per-output-channel int8, `qweight` int8 (N, K) and `scales` bf16 (N); w = q * scale.
- `int4`: group-wise 4-bit, `qweight` uint8 (N, K/2) (two codes a byte, the even column in the low nibble),
  `scales` and `offsets` bf16 (N, K/group); w = (q - 8) * scale + offset (symmetric: offset = 0).
- `dynamic-int8`: int8 weights as `int8` (scales fp32) and int8 activations quantized per token at run time.

Kernels (measured on this 2-core AMD EPYC with AVX512-BF16, see docs/compression.md): at most
`kernels.MAX_ROWS` rows of input (decoding) go to lmforge's own AVX-512 kernels (`lmforge.model.kernels`: the
int8 and int4 layouts above read as they are stored, fp32 activations) where they are built, and int4 inputs of
more than `PREFILL_ROWS` rows (prefill, scoring) dequantize to bf16 with lmforge's kernel for oneDNN's bf16 linear
(1.7-2.7x aten's packed kernel at 64-256 rows on SmolLM2's layers). Otherwise int4 runs
`aten._weight_int4pack_mm_for_cpu` (packed once, lazily, for the CPU it runs on), whose alternative (unpacking the
nibbles and multiplying densely) was 2-15x slower at every size measured; int8 runs `aten._weight_int8pack_mm` at
decoding sizes (at most `DECODE_ROWS` rows of input) and dequantizes to a bf16 weight for oneDNN's bf16 linear on
longer inputs (prefill, scoring), where that was faster than the kernel. Both kernels take bf16 activations (their
fp32-activation paths are 3-20x slower). dynamic-int8 multiplies with `torch._int_mm` (int8 x
int8 -> int32), checked against an exact product once per process (pytorch#136746: wrong results on some AMD
CPUs), else the dequantized weight.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, choices
from . import kernels
from .fast import Linear, thread_flag

KINDS = ("int8", "int4", "dynamic-int8")
GROUP_SIZES = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu takes
DECODE_ROWS = 16  # inputs with at most this many rows (tokens x batch) take the packed kernels
PREFILL_ROWS = 32  # int4 with lmforge's kernels: more rows than this dequantize to bf16 for oneDNN's product
# linear layers that are task heads: never quantized (the LM head only when asked)
TASK_HEADS = ("classifier", "pooler", "nsp", "mlm_dense", "relation_classifier")
_lock = threading.Lock()
_int_mm_ok: bool | None = None


_exact = threading.local()


def exact_forward() -> contextlib.AbstractContextManager[None]:
    """Within this block (in this thread), quantized layers multiply by their dequantized weight in the input's own
    dtype (fp32: no bf16 rounding of weights or activations): what GPTQ propagates its calibration activations
    through, so its choices do not depend on which CPU kernel a machine has."""
    return thread_flag(_exact, True)


# ---- round to nearest ---------------------------------------------------------------------------------

def int8_scales(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per-row int8 scales (absmax / 127), rounded to bf16 (what the kernel multiplies by)."""
    return (w.float().abs().amax(1) / 127).clamp(min=1e-8).to(torch.bfloat16)


def int8_codes(w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return torch.round(w.float() / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)


def int4_params(w: torch.Tensor, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and offset of each row of `w` (..., group) for 4-bit codes: w = (q - 8) * scale + offset, rounded
    to bf16. Asymmetric: codes span [min, max]; symmetric: offset 0, codes span [-8, 7] * scale."""
    w = w.float()
    if symmetric:
        scale = (w.abs().amax(-1) / 8).clamp(min=1e-8)
        return scale.to(torch.bfloat16), torch.zeros_like(scale, dtype=torch.bfloat16)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-8).to(torch.bfloat16).float()
    return scale.to(torch.bfloat16), (lo + 8 * scale).to(torch.bfloat16)


def int4_codes(w: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 of `w` (..., group) under (scale, offset) of shape (...)."""
    return torch.round((w.float() - offset.float()[..., None]) / scale.float()[..., None] + 8).clamp(0, 15).to(torch.uint8)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(N, K) codes 0..15 -> (N, K/2) uint8, the even column in the low nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(p: torch.Tensor) -> torch.Tensor:
    return torch.stack([p & 15, p >> 4], -1).reshape(p.shape[0], -1)


def check_int4_shape(name: str, in_features: int, group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        raise ConfigError(f"--group-size {group_size} is not supported by the int4 kernel; use {choices(GROUP_SIZES)}")
    if in_features % group_size:
        fits = [g for g in GROUP_SIZES if in_features % g == 0]
        raise ConfigError(f"--group-size {group_size} does not divide the {in_features} inputs of {name}; "
                          + (f"use {choices(fits)}" if fits else "int4 needs inputs in multiples of 32: use --method "
                             "int8 for this model"))


# ---- the layers ----------------------------------------------------------------------------------------

class QuantLinear(nn.Module):
    """Common part: sizes, the float bias (same state-dict name as nn.Linear's), the dequantized weight, and the
    forward pass that picks a kernel by input size. Subclasses store integers + scales as buffers."""

    kind = ""

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None
        self._packed: Any = None
        self._own: Any = None  # what lmforge's own kernel reads (fp32 scales), made on first use

    def _apply(self, fn, recurse=True):  # moving or casting the module drops what was packed for the old tensors
        self._packed = self._own = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._packed = self._own = None
        return super()._load_from_state_dict(*args, **kwargs)

    def kernel_tensors(self) -> list[torch.Tensor] | None:
        """(weight, scale, shift) as lmforge's decode kernels read them (`lmforge.model.kernels`), or None for a
        kind they do not take."""
        return None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def weight_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        fast = (x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad)
                and not getattr(_exact, "on", False))
        y = self._kernel(x2) if fast else None
        if y is None:  # matrix-matrix (or not on the CPU, or with a gradient): the dequantized weight
            dtype = torch.bfloat16 if fast and x.dtype == torch.float32 else x.dtype
            w = self.dequantize(dtype)
            if fast:
                y = torch.ops.mkldnn._linear_pointwise(x2.to(dtype), w, None, "none", [], "") if _onednn() \
                    else F.linear(x2.to(dtype), w)
            else:
                y = F.linear(x2, w)
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*shape[:-1], self.out_features)

    def _kernel(self, x2: torch.Tensor) -> torch.Tensor | None:
        return None

    def _aligned(self, name: str) -> torch.Tensor:
        """The buffer `name`, copied once into memory of its own when it is not 64-byte aligned: tensors memory-mapped
        from a safetensors file start at any byte, and aten's packed int8 kernel crashes on such a weight."""
        t = getattr(self, name)
        if t.data_ptr() % 64:
            t = t.clone()
            setattr(self, name, t)
        return t

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.kind}"


class Int8Linear(QuantLinear):
    kind = "int8"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None) -> None:
        super().__init__(in_features, out_features, bias, device)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.bfloat16, device=device))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.qweight.to(dtype) * self.scales.to(dtype)[:, None])

    def kernel_tensors(self):
        if self._own is None:
            self._own = [self.qweight.contiguous(), self.scales.float().contiguous(), torch.empty(0)]
        return self._own

    def _kernel(self, x2):
        if x2.shape[0] > DECODE_ROWS:
            return None
        if x2.shape[0] <= kernels.MAX_ROWS and kernels.ops() is not None:
            w, s, _ = self.kernel_tensors()
            y = kernels.linear_int8(x2, w, s)
            if y is not None:
                return y
        return torch.ops.aten._weight_int8pack_mm(x2.to(torch.bfloat16).contiguous(), self._aligned("qweight"),
                                                  self._aligned("scales"))


class Int4Linear(QuantLinear):
    kind = "int4"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = 32,
                 device=None) -> None:
        super().__init__(in_features, out_features, bias, device)
        self.group_size = group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.bfloat16, device=device))
        self.register_buffer("offsets", torch.zeros(out_features, groups, dtype=torch.bfloat16, device=device))

    def codes(self) -> torch.Tensor:
        return unpack_nibbles(self.qweight)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if dtype == torch.bfloat16 and self.qweight.device.type == "cpu" and kernels.ops() is not None:
            w = kernels.dequant_int4(*self.kernel_tensors(), self.group_size)  # (the same bf16 values, ~20x faster)
            if w is not None:
                return w
        n, g = self.out_features, self.group_size
        q = self.codes().view(n, -1, g).to(dtype) - 8
        return (q * self.scales.to(dtype)[..., None] + self.offsets.to(dtype)[..., None]).view(n, self.in_features)

    def _pack(self):
        if self._packed is None:
            with _lock:
                q = self.codes().to(torch.int32)
                sz = torch.stack([self.scales, self.offsets], -1).to(torch.bfloat16)  # (N, groups, 2)
                pad = -self.out_features % 16  # the kernel takes outputs in multiples of 16
                if pad:
                    q = F.pad(q, (0, 0, 0, pad), value=8)
                    sz = F.pad(sz, (0, 0, 0, 0, 0, pad))
                self._packed = (torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1),
                                sz.transpose(0, 1).contiguous())
        return self._packed

    def kernel_tensors(self):
        if self._own is None:
            scale = self.scales.float()
            self._own = [self.qweight.contiguous(), scale.contiguous(), (self.offsets.float() - 8 * scale).contiguous()]
        return self._own

    def _kernel(self, x2):
        if kernels.ops() is not None:
            if x2.shape[0] <= kernels.MAX_ROWS:
                w, s, h = self.kernel_tensors()
                y = kernels.linear_int4(x2, w, s, h, self.group_size)
                if y is not None:
                    return y
            elif x2.shape[0] > PREFILL_ROWS:  # lmforge's dequantization + oneDNN's bf16 product: 1.7-2.7x aten's
                return None
        # (without lmforge's kernels, aten's packed kernel at every size: unpacking the nibbles with torch ops
        # costs more than the product)
        packed, sz = self._pack()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16).contiguous(), packed, self.group_size, sz)
        return y[:, : self.out_features] if y.shape[1] != self.out_features else y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group={self.group_size}"


class DynamicInt8Linear(QuantLinear):
    """int8 weights (per channel) x int8 activations (per token, computed at run time), int32 accumulation."""

    kind = "dynamic-int8"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None) -> None:
        super().__init__(in_features, out_features, bias, device)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.float32, device=device))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.qweight.to(dtype) * self.scales.to(dtype)[:, None]

    def _kernel(self, x2):
        if not int_mm_ok():
            return None
        if self._packed is None:
            self._packed = self.qweight.t().contiguous()  # (K, N): _int_mm's fast layout
        xf = x2.float()
        sx = (xf.abs().amax(1, keepdim=True) / 127).clamp(min=1e-8)
        xq = torch.round(xf / sx).to(torch.int8)
        m = xq.shape[0]
        if m <= 16:  # _int_mm takes at least 17 rows on the CPU's fast path; pad (cheap at this size)
            xq = F.pad(xq, (0, 0, 0, 17 - m))
        return (torch._int_mm(xq, self._packed)[:m].float() * sx) * self.scales


LAYERS = {"int8": Int8Linear, "int4": Int4Linear, "dynamic-int8": DynamicInt8Linear}


def _onednn() -> bool:
    from .fast import _onednn_available

    return _onednn_available()


def int_mm_ok() -> bool:
    """Whether torch._int_mm gives exact int32 products here (it did not on some AMD CPUs: pytorch#136746)."""
    global _int_mm_ok
    if _int_mm_ok is None:
        try:
            g = torch.Generator().manual_seed(0)
            a = torch.randint(-127, 128, (33, 96), generator=g, dtype=torch.int8)
            b = torch.randint(-127, 128, (96, 40), generator=g, dtype=torch.int8)
            _int_mm_ok = bool(torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long()))
        except Exception:
            _int_mm_ok = False
    return _int_mm_ok


# ---- building the layers -------------------------------------------------------------------------------

def empty_layer(linear: nn.Module, kind: str, group_size: int | None, device=None) -> QuantLinear:
    """A quantized layer of `linear`'s shape with empty buffers (on `linear`'s device: meta when loading)."""
    device = device or linear.weight.device
    args = (linear.in_features, linear.out_features, linear.bias is not None)
    if kind == "int4":
        return Int4Linear(*args, group_size=group_size, device=device)
    return LAYERS[kind](*args, device=device)


@torch.no_grad()
def from_codes(linear: nn.Module, kind: str, qweight: torch.Tensor, scales: torch.Tensor,
               offsets: torch.Tensor | None = None, group_size: int | None = None) -> QuantLinear:
    """The quantized layer of `linear` with the given integers and scales (RTN or GPTQ chose them)."""
    layer = empty_layer(linear, kind, group_size, device="cpu")
    layer.qweight.copy_(pack_nibbles(qweight) if kind == "int4" else qweight)
    layer.scales.copy_(scales)
    if offsets is not None:
        layer.offsets.copy_(offsets)
    if linear.bias is not None:
        layer.bias.copy_(linear.bias.detach().float())
    return layer.to(linear.weight.device)


@torch.no_grad()
def quantize_rtn(linear: nn.Module, kind: str, group_size: int = 32, symmetric: bool = False) -> QuantLinear:
    """Round-to-nearest quantization of one linear layer."""
    w = linear.weight.detach().float().cpu()
    if kind in ("int8", "dynamic-int8"):
        scales = int8_scales(w)
        q = int8_codes(w, scales)
        return from_codes(linear, kind, q, scales if kind == "int8" else scales.float())
    n, k = w.shape
    wg = w.view(n, k // group_size, group_size)
    scale, offset = int4_params(wg, symmetric)
    q = int4_codes(wg, scale, offset).view(n, k)
    return from_codes(linear, kind, q, scale, offset, group_size)


def quantizable(model: nn.Module, head: bool) -> list[str]:
    """Names of the linear layers a quantization replaces: every projection of the blocks, and the LM head when
    `head` (task heads stay in float)."""
    names = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if type(module) in (nn.Linear, Linear) and leaf not in TASK_HEADS and (head or leaf != "lm_head"):
            names.append(name)
    return names


def check_layout(spec: Any) -> dict[str, Any]:
    if not (isinstance(spec, dict) and isinstance(spec.get("layers"), dict) and spec["layers"]
            and all(v in KINDS for v in spec["layers"].values())):
        raise ConfigError(f"quant={spec!r} needs a non-empty 'layers' object mapping layer names to {choices(KINDS)}")
    if "int4" in spec["layers"].values() and spec.get("group_size") not in GROUP_SIZES:
        raise ConfigError(f"quant.group_size={spec.get('group_size')!r} must be one of {choices(GROUP_SIZES)}")
    return spec


def swap(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


def apply_quant_layout(model: nn.Module, spec: dict[str, Any]) -> None:
    """Replace the layers named in `spec["layers"]` by empty quantized layers (a checkpoint fills them)."""
    check_layout(spec)
    modules = dict(model.named_modules())
    for name, kind in spec["layers"].items():
        linear = modules.get(name)
        if linear is None or not isinstance(linear, nn.Linear):
            raise ConfigError(f"quant.layers names {name!r}, which is not a linear layer of this model")
        swap(model, name, empty_layer(linear, kind, spec.get("group_size")))


def quant_layers(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


@torch.no_grad()
def dequantize_model(model: nn.Module) -> nn.Module:
    """Put float `Linear`s (the dequantized weights) back in place of quantized ones (export, fine-tuning)."""
    for name, layer in quant_layers(model).items():
        plain = Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        plain.weight = nn.Parameter(layer.dequantize(torch.float32), requires_grad=False)
        if layer.bias is not None:
            plain.bias = nn.Parameter(layer.bias.detach().float().clone(), requires_grad=False)
        swap(model, name, plain)
    config = getattr(model, "config", None)
    if config is not None and config.quant is not None:  # a quantized head is its own weight now, not the embedding
        untie = config.tie_embeddings and "lm_head" in config.quant["layers"]
        model.config = config.replace(quant=None, **({"tie_embeddings": False} if untie else {}))
    return model


__all__ = ["QuantLinear", "Int8Linear", "Int4Linear", "DynamicInt8Linear", "KINDS", "GROUP_SIZES", "DECODE_ROWS",
           "quantize_rtn", "from_codes", "apply_quant_layout", "quantizable", "quant_layers", "dequantize_model",
           "int8_scales", "int8_codes", "int4_params", "int4_codes", "pack_nibbles", "unpack_nibbles",
           "check_int4_shape", "check_layout", "swap", "int_mm_ok"]
