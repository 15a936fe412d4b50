"""Where training time goes on this CPU: matrix-multiply throughput by dtype, and the step time of the
Tiny Shakespeare models in fp32 / bf16 autocast, eager / torch.compile (compiled as `--compile on` compiles it: the
whole forward and loss for a small model, each block for a larger one; lmforge's CPU attention kernel as in training).

    python benchmarks/train_step.py
    python benchmarks/train_step.py --models gpt-mini --batch 8 --context 256   # a model where compute dominates

The reference for each step time is the eager fp32 step of the same model in the same run. MFU: the model's
FLOPs per token (lmforge.model.flops, as `lmforge info`) x tokens/s over the measured matrix-multiply peak of the
step's dtype (lmforge.train.speed, the figure training logs use); compile time is the first two compiled steps.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import lmforge as _first  # noqa: F401  (before torch: lmforge's huge-pages setting precedes torch's first allocation)
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


LAST_COMPILE_S = [0.0]


def step_ms(name: str, bf16: bool, compiled: bool, batch: int = 12, context: int = 64) -> float:
    from lmforge.model import kernels
    from lmforge.train.trainer import compile_scope

    kernels.load_for_training(torch.device("cpu"))  # (as the Trainer does)
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name(name, vocab_size=71, dropout=0.0)).train()

    def loss_of(x, y):
        return cross_entropy(model(x), y) / y.numel()

    if compiled and compile_scope(model, False) == "model":
        loss_of = torch.compile(loss_of)
    elif compiled:
        for block in model.decoder.layers:
            block.compile()
    opt = build_optimizer(model, TrainConfig(), torch.device("cpu"))
    x, y = torch.randint(0, 71, (batch, context)), torch.randint(0, 71, (batch, context))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step():
        with autocast():
            loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if compiled:
        start = time.perf_counter()
        step(), step()
        LAST_COMPILE_S[0] = time.perf_counter() - start
    return 1000 * timed(step, 100, warmup=15)


def main() -> None:
    import argparse

    from lmforge.model.flops import flops_per_token
    from lmforge.train.speed import peak_flops

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt-nano,llama-nano")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--context", type=int, default=64)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {native_bf16(torch.device('cpu'))}")
    print("\nmatrix multiply (768x128 @ 128x512, a training-step shape; 2048^3)")
    for dtype in (torch.float32, torch.bfloat16):
        print(f"  {str(dtype):15s} {matmul_gflops(dtype, 768, 128, 512):7.0f} GFLOP/s   "
              f"{matmul_gflops(dtype, 2048, 2048, 2048):7.0f} GFLOP/s")
    cpu = torch.device("cpu")
    peaks = {dt: peak_flops(cpu, dt) for dt in (torch.float32, torch.bfloat16)}
    print(f"\n{'model':11s} {'dtype':5s} {'mode':8s} {'ms/step':>8s} {'tok/s':>8s} {'MFU':>6s} {'vs eager fp32':>14s} "
          f"{'compile s':>9s}   (batch {args.batch} x context {args.context})")
    tokens = args.batch * args.context
    for name in args.models.split(","):
        base = None
        with torch.device("meta"):
            meta = build_model(ModelConfig.from_name(name, vocab_size=71))
        flops = flops_per_token(meta, args.context)["train"]
        for bf16 in (False, True):
            for compiled in (False, True):
                ms = step_ms(name, bf16, compiled, args.batch, args.context)
                base = base or ms
                rate = tokens / (ms / 1000)
                mfu = flops * rate / peaks[torch.bfloat16 if bf16 else torch.float32]
                print(f"{name:11s} {'bf16' if bf16 else 'fp32':5s} {'compile' if compiled else 'eager':8s} "
                      f"{ms:8.1f} {rate:8.0f} {100 * mfu:5.1f}% {base / ms:13.2f}x "
                      f"{LAST_COMPILE_S[0] if compiled else 0:9.1f}", flush=True)


if __name__ == "__main__":
    main()
