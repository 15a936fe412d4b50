"""Causal self-attention for training on the CPU: lmforge's kernel against PyTorch's SDPA, forward and backward.

    flock /tmp/lmforge-bench.lock python benchmarks/attention.py [--threads 2] [--rounds 5]

For each shape (batch, query heads, key/value heads, length, head size) times one forward and backward of causal
attention in fp32, as a training step runs it (inputs laid out (B, T, heads, D) as the projections leave them, a
gradient for the output): `F.scaled_dot_product_attention(is_causal=True)` (PyTorch's CPU flash kernel, what nanoGPT
and lmforge used before) and `lmforge.model.kernels.causal_attention`, interleaved in rounds so that a host changing
speed slows both alike. Prints the median of each, their ratio and the largest difference of the outputs and
gradients. The first shape is nanoGPT's Tiny Shakespeare recipe (batch 12, 4 heads of 32, context 64).
"""

from __future__ import annotations

import argparse
import statistics
import time

import lmforge as _first  # noqa: F401
import torch
import torch.nn.functional as F

from lmforge.model import kernels

SHAPES = [(12, 4, 4, 64, 32), (12, 4, 4, 64, 32, "fwd"), (8, 5, 5, 256, 64), (4, 8, 8, 128, 32), (8, 9, 3, 128, 64),
          (16, 8, 8, 256, 32)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20, help="timed calls a round")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kernels.load_for_training(torch.device("cpu"))
    if kernels.ops() is None:
        raise SystemExit("lmforge's kernels are not available here (x86-64 with AVX-512 and a C++ compiler)")
    load = open("/proc/loadavg").read().split()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}")
    print(f"{'B x H/K x T x D':22s} {'pass':>8s} {'SDPA us':>9s} {'lmforge us':>11s} {'speed-up':>9s} {'max diff':>9s}")
    for shape in SHAPES:
        B, H, K, T, D = shape[:5]
        forward_only = len(shape) > 5
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, T, n, D, generator=g).transpose(1, 2).requires_grad_() for n in (H, K, K))
        grad = torch.randn(B, H, T, D, generator=g)
        gqa = {"enable_gqa": True} if H != K else {}

        def sdpa():
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
            return y if forward_only else (y, *torch.autograd.grad(y, (q, k, v), grad))

        def ours():
            y = kernels.causal_attention(q, k, v)
            return y if forward_only else (y, *torch.autograd.grad(y, (q, k, v), grad))

        a, b = sdpa(), ours()
        with torch.no_grad():
            diff = max(float((x - y).abs().max()) for x, y in zip(a, b)) if not forward_only else float((a - b).abs().max())
        times: dict[str, list[float]] = {"sdpa": [], "ours": []}
        for _ in range(args.rounds):
            for name, fn in (("sdpa", sdpa), ("ours", ours)):
                for _ in range(args.calls):
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
        s, o = statistics.median(times["sdpa"]), statistics.median(times["ours"])
        label = f"{B} x {H}/{K} x {T} x {D}"
        print(f"{label:22s} {'fwd' if forward_only else 'fwd+bwd':>8s} {1e6 * s:9.0f} {1e6 * o:11.0f} {s / o:8.2f}x "
              f"{diff:9.1e}", flush=True)


if __name__ == "__main__":
    main()
