"""lmforge's own CPU kernels (kernels.cpp) for decoding and for attention in training, built once on first use, with
PyTorch's as the fallback.

At batch 1 a decoding step reads every weight once, so its speed is the matrix-vector product's memory bandwidth.
PyTorch's CPU kernels reach 44-73% of a plain read of the same bytes on the machines measured
(benchmarks/decode_floor.py); lmforge's stream each weight row once with AVX-512 (fp32, int8 per-row and lmforge's
int4 layout, for at most `MAX_ROWS` rows of activations) at 80-95% of it, and an fp32 RMSNorm in one pass. For
training on short sequences, a causal-attention forward and backward (`causal_attention`, docs/performance.md). They are
compiled by `torch.utils.cpp_extension` the first time a process needs them (about 10 s, cached under
`TORCH_EXTENSIONS_DIR`, default `~/.cache/torch_extensions`) and checked against PyTorch's result before use.
Where they cannot run (no C++ compiler, a CPU without AVX-512, a GPU tensor, a gradient, more rows) every caller
keeps PyTorch's kernel; `LMFORGE_KERNELS=0` turns them off.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any, Iterator

import torch

MAX_ROWS = 8  # rows of activations (tokens x batch) the kernels take; more go to PyTorch's matrix-matrix kernels
_lock = threading.Lock()
_ops: Any = None  # None: not tried yet; False: unavailable here; else torch.ops.lmforge_kernels
_ready = False  # the kernels are loaded and usable (a plain bool: torch.compile reads it without tracing `ops`)
_off = 0  # > 0 inside `disabled()`


_ON, _OFF = ("1", "on", "true", "yes", ""), ("0", "off", "false", "no")


def enabled() -> bool:
    """LMFORGE_KERNELS: 1 | on | true | yes (the default) or 0 | off | false | no; anything else is said once on
    stderr and counts as on."""
    value = os.environ.get("LMFORGE_KERNELS", "1").strip().lower()
    if value not in _ON + _OFF and not getattr(enabled, "warned", False):
        enabled.warned = True  # type: ignore[attr-defined]
        print(f"lmforge: LMFORGE_KERNELS={value!r} is not one of {', '.join(_ON[:-1] + _OFF)}; the kernels stay on",
              file=sys.stderr)
    return value not in _OFF


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within this block (in every thread), PyTorch's kernels only: the reference that tests and benchmarks compare
    lmforge's kernels with."""
    global _off
    _off += 1
    try:
        yield
    finally:
        _off -= 1


def ops() -> Any:
    """`torch.ops.lmforge_kernels` when the kernels are built and usable on this CPU, else None."""
    global _ops
    if _off:
        return None
    if _ops is None:
        with _lock:
            if _ops is None:
                _ops = _load() if enabled() else False
                global _ready
                _ready = bool(_ops)
    return _ops or None


def _load() -> Any:
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels.cpp")
    try:
        if not hasattr(torch.ops, "lmforge_kernels") or not hasattr(torch.ops.lmforge_kernels, "linear_f32"):
            import platform

            if platform.machine().lower() not in ("x86_64", "amd64"):
                return False
            from torch.utils import cpp_extension

            try:  # the first build takes a while: say so (a changed source rebuilds quietly)
                folder = cpp_extension._get_build_directory("lmforge_kernels", False)
                if not any(f.endswith(".so") for f in os.listdir(folder)):
                    print("lmforge: building its CPU kernels (once, about 10-40 s)...", file=sys.stderr)
            except Exception:
                pass
            cpp_extension.load(name="lmforge_kernels", sources=[source], extra_cflags=["-O3", "-fopenmp"],
                               extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
        k = torch.ops.lmforge_kernels
        if not k.avx512():
            return False
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(2, 96, generator=g), torch.randn(37, 96, generator=g)
        ok = torch.allclose(k.linear_f32(x, w), x @ w.T, rtol=1e-4, atol=1e-4)
        return k if ok else False
    except Exception as e:  # no compiler, an unusual platform: PyTorch's kernels it is
        print(f"lmforge: CPU kernels unavailable ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
              "using PyTorch's (set LMFORGE_KERNELS=0 to skip trying)", file=sys.stderr)
        return False


def _fits(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dim() == 2 and 1 <= x.shape[0] <= MAX_ROWS
            and not (torch.is_grad_enabled() and x.requires_grad))


def linear_f32(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """x (M, K) @ weight (N, K)^T for fp32 tensors and M <= MAX_ROWS, or None where the kernel does not apply."""
    if (x.dtype != torch.float32 or weight.dtype != torch.float32 or not _fits(x)
            or (torch.is_grad_enabled() and weight.requires_grad)):
        return None
    k = ops()
    if k is None:
        return None
    if not weight.is_contiguous():  # (a view: copying it every call would cost more than the kernel saves)
        return None
    y = k.linear_f32(x.contiguous(), weight)
    return y if y.numel() else None


def linear_int8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor | None:
    """x (M, K) float @ (qweight int8 (N, K) * scales fp32 (N))^T, or None."""
    if not _fits(x):
        return None
    k = ops()
    if k is None:
        return None
    y = k.linear_int8(x.float().contiguous(), qweight, scales)
    return y if y.numel() else None


def linear_int4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, shifts: torch.Tensor,
                group_size: int) -> torch.Tensor | None:
    """x (M, K) float @ W^T for lmforge's int4 layout (qweight uint8 (N, K/2)) with fp32 `scales` and `shifts`
    (offset - 8 scale) (N, K/group): W = q * scale + shift per group. None where the kernel does not apply."""
    if not _fits(x):
        return None
    k = ops()
    if k is None:
        return None
    y = k.linear_int4(x.float().contiguous(), qweight, scales, shifts, group_size)
    return y if y.numel() else None


def dequant_int4(qweight: torch.Tensor, scales: torch.Tensor, shifts: torch.Tensor, group_size: int
                 ) -> torch.Tensor | None:
    """lmforge's int4 layout (as `linear_int4` takes it) dequantized to a bf16 (N, K) weight, or None."""
    k = ops()
    if k is None or qweight.device.type != "cpu":
        return None
    w = k.dequant_int4(qweight, scales, shifts, group_size)
    return w if w.numel() else None


def to_hugepages(model: torch.nn.Module) -> None:
    """Copy `model`'s large CPU weights (2 MB and more) onto transparent huge pages, in place and once per model (same
    values; parameters keep their identity): decoding streams them with far fewer TLB misses. Whatever the order of
    imports (PyTorch's own THP_MEM_ALLOC_ENABLE applies only when set before torch's first allocation)."""
    k = ops()
    if k is None or getattr(model, "_lmforge_hugepages", False):
        return
    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for name, t in list(table.items()):
                    if (t is None or id(t) in seen or t.device.type != "cpu" or not t.is_contiguous()
                            or t.numel() * t.element_size() < (2 << 20)):
                        continue
                    seen.add(id(t))
                    h = k.hugepage_copy(t.detach())
                    if not h.numel():
                        continue
                    if isinstance(t, torch.nn.Parameter):
                        t.data = h
                    else:
                        table[name] = h
                        seen.add(id(h))
            if hasattr(module, "_own"):  # (quantized layers: what their kernels read is taken again)
                module._own = module._packed = None
    model._lmforge_hugepages = True


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """RMSNorm over the last dimension for fp32 CPU tensors without gradients, or None."""
    if (x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu"
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return None
    k = ops()
    if k is None:
        return None
    y = k.rms_norm(x.contiguous(), weight, float(eps))
    return y if y.numel() else None


# ---- causal self-attention for training --------------------------------------------------------------------------

ATTENTION_MAX_T = 256  # longer sequences keep PyTorch's flash kernel (benchmarks/attention.py: equal speed at 256)
_attention_units = 2  # (batch x key/value heads) units the kernel needs, one per thread: set by load_for_training


def attention_fits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> bool:
    """Whether `causal_attention` takes these (B, H, T, D) fp32 CPU tensors: causal self-attention over the same
    T <= ATTENTION_MAX_T positions, no dropout, H a multiple of the key/value heads, at least one (batch, key/value
    head) unit per thread (as `load_for_training` counted them), and the kernels loaded (`load_for_training`).
    Plain Python on shapes and flags, so torch.compile traces it into guards."""
    if not _ready or _off or dropout or q.device.type != "cpu" or q.dim() != 4:
        return False
    B, H, T, _ = q.shape
    return (q.dtype == k.dtype == v.dtype == torch.float32 and k.shape[2] == T and T <= ATTENTION_MAX_T
            and H % k.shape[1] == 0 and B * k.shape[1] >= _attention_units)


def load_for_training(device: torch.device) -> None:
    """Load (building once) the kernels before a CPU training run, so its first step, compiled or not, sees them."""
    global _attention_units
    if device.type == "cpu":
        _attention_units = torch.get_num_threads()
        ops()


@torch.library.custom_op("lmforge::causal_attention", mutates_args=())
def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    out = _ops.causal_attention(q, k, v, scale)
    return out[0], out[1]


@_causal_attention.register_fake
def _(q, k, v, scale):
    B, H, T, D = q.shape
    return q.new_empty(B, T, H, D).transpose(1, 2), q.new_empty(B, H, T)


@torch.library.custom_op("lmforge::causal_attention_backward", mutates_args=())
def _causal_attention_backward(g: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                               lse: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out = _ops.causal_attention_backward(g, q, k, v, o, lse, scale)
    return out[0], out[1], out[2]


@_causal_attention_backward.register_fake
def _(g, q, k, v, o, lse, scale):
    B, H, T, D = q.shape
    K = k.shape[1]
    return (q.new_empty(B, T, H, D).transpose(1, 2), q.new_empty(B, T, K, D).transpose(1, 2),
            q.new_empty(B, T, K, D).transpose(1, 2))


def _setup(ctx, inputs, output):
    q, k, v, scale = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1])
    ctx.scale = scale


def _backward(ctx, grad, _grad_lse):
    q, k, v, o, lse = ctx.saved_tensors
    if grad.stride(-1) != 1:
        grad = grad.contiguous()
    dq, dk, dv = _causal_attention_backward(grad, q, k, v, o, lse, ctx.scale)
    return dq, dk, dv, None


_causal_attention.register_autograd(_backward, setup_context=_setup)


class _CausalAttention(torch.autograd.Function):
    """The same kernels without the custom operator's dispatch (~0.1 ms a call): the eager path. (Both call the
    loaded library itself, not `ops()`: a backward run inside `disabled()` still has its forward's kernel.)"""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        o, lse = _ops.causal_attention(q, k, v, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, grad):
        q, k, v, o, lse = ctx.saved_tensors
        if grad.stride(-1) != 1:
            grad = grad.contiguous()
        dq, dk, dv = _ops.causal_attention_backward(grad, q, k, v, o, lse, ctx.scale)
        return dq, dk, dv, None


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + causal mask) v for tensors `attention_fits` accepts, with its gradient: lmforge's
    kernel, (B, H, T, D) laid out as (B, T, H, D). Under torch.compile a custom operator (opaque to the compiler),
    else an autograd function (less overhead a call)."""
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    scale = q.shape[-1] ** -0.5
    if torch.compiler.is_compiling():
        return _causal_attention(q, k, v, scale)[0]
    return _CausalAttention.apply(q, k, v, scale)


__all__ = ["MAX_ROWS", "enabled", "disabled", "ops", "linear_f32", "linear_int8", "linear_int4", "dequant_int4",
           "rms_norm", "to_hugepages", "attention_fits", "causal_attention", "load_for_training"]
