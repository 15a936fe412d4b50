"""Where training time goes on this CPU: matrix-multiply throughput by dtype, and the step time of the
Tiny Shakespeare models in fp32 / bf16 autocast, eager / torch.compile (each block compiled).

    python benchmarks/train_step.py

The reference for each step time is the eager fp32 step of the same model in the same run.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from lmforge import ModelConfig, build_model
from lmforge.model import cross_entropy
from lmforge.train.options import TrainConfig
from lmforge.device import native_bf16
from lmforge.train.trainer import build_optimizer


def timed(fn, repeats: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(dtype: torch.dtype, m: int, k: int, n: int) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    return 2 * m * k * n / timed(lambda: a @ b, 200) / 1e9


def step_ms(name: str, bf16: bool, compiled: bool) -> float:
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name(name, vocab_size=71)).train()
    if compiled:
        for block in model.decoder.layers:
            block.compile()
    opt = build_optimizer(model, TrainConfig(), torch.device("cpu"))
    x, y = torch.randint(0, 71, (12, 64)), torch.randint(0, 71, (12, 64))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step():
        with autocast():
            loss = cross_entropy(model(x), y) / y.numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return 1000 * timed(step, 100, warmup=15)


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {native_bf16(torch.device('cpu'))}")
    print("\nmatrix multiply (768x128 @ 128x512, a training-step shape; 2048^3)")
    for dtype in (torch.float32, torch.bfloat16):
        print(f"  {str(dtype):15s} {matmul_gflops(dtype, 768, 128, 512):7.0f} GFLOP/s   "
              f"{matmul_gflops(dtype, 2048, 2048, 2048):7.0f} GFLOP/s")
    print(f"\n{'model':11s} {'dtype':5s} {'mode':8s} {'ms/step':>8s} {'vs eager fp32':>14s}")
    for name in ("gpt-nano", "llama-nano"):
        base = None
        for bf16 in (False, True):
            for compiled in (False, True):
                ms = step_ms(name, bf16, compiled)
                base = base or ms
                print(f"{name:11s} {'bf16' if bf16 else 'fp32':5s} {'compile' if compiled else 'eager':8s} "
                      f"{ms:8.1f} {base / ms:13.2f}x", flush=True)


if __name__ == "__main__":
    main()
