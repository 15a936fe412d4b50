"""An opt-in fast path for inference on the CPU: linear layers through lmforge's decode kernels or oneDNN.

On the CPU, PyTorch runs fp32 `F.linear` through MKL, which multiplies a matrix by one vector (every decoding
step) on a single thread, at about half the memory bandwidth that two threads reach; oneDNN's linear kernel
uses all threads and is about 2x faster for decoding and prefill alike. Inside `fast_inference()` (which
`lmforge.generate` and the scoring helpers enter), `Linear` layers whose input needs no gradient call
oneDNN's linear (`torch.ops.mkldnn._linear_pointwise`, the kernel torch.compile uses on the CPU) on the dense
weights, with no copy or repacking. Results equal `F.linear` up to float rounding (about 1e-6 relative);
outside the context, whenever a gradient is needed, and for small layers (under 1 MB of weights, where a
single thread is as fast and never waits for a second one) layers are plain `nn.Linear`. fp32 inputs of at most
`kernels.MAX_ROWS` rows (decoding) go to lmforge's own matrix-vector kernel first (`lmforge.model.kernels`, about
1.5x oneDNN's bandwidth), and RMSNorm to its one-pass kernel, where those are built.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels

_state = threading.local()
_available: bool | None = None
MIN_WEIGHT = 1 << 18  # smaller layers (< 1 MB in fp32) stay on F.linear: a thread team costs more than it saves


def _onednn_available() -> bool:
    global _available
    if _available is None:
        try:
            ok = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            if ok:
                x, w = torch.ones(2, 4), torch.ones(3, 4)
                ok = bool(torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "").eq(4).all())
        except Exception:  # an unusual build: keep F.linear
            ok = False
        _available = ok
    return _available


@contextlib.contextmanager
def thread_flag(state: threading.local, value: bool) -> Iterator[None]:
    """`state.on` set to `value` within the block (in this thread), what it was restored after."""
    before = getattr(state, "on", False)
    state.on = value
    try:
        yield
    finally:
        state.on = before


def fast_inference(enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """Within this block (in this thread), CPU linear layers that need no gradient run through lmforge's kernels or
    oneDNN."""
    return thread_flag(_state, enabled)


def active() -> bool:
    """Whether this thread is inside `fast_inference()`."""
    return getattr(_state, "on", False)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, through lmforge's decode kernel or oneDNN inside `fast_inference()` when the inputs allow it."""
    if (getattr(_state, "on", False) and x.device.type == "cpu" and x.dtype == weight.dtype
            and x.dtype in (torch.float32, torch.bfloat16)
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        if x.dtype == torch.float32 and x.numel() <= kernels.MAX_ROWS * x.shape[-1]:
            y = kernels.linear_f32(x.reshape(-1, x.shape[-1]), weight)
            if y is not None:
                if bias is not None:
                    y += bias
                return y.view(*x.shape[:-1], weight.shape[0])
        if weight.numel() >= MIN_WEIGHT and weight.is_contiguous() and _onednn_available():
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same state-dict keys) that takes the fast path inside `fast_inference()`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


__all__ = ["fast_inference", "active", "linear", "Linear"]
