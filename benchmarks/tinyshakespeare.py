"""Tiny Shakespeare, character level, nanoGPT's CPU recipe: lmforge against nanoGPT's loop in the same run.

    python benchmarks/tinyshakespeare.py [--input ../shared/data/tinyshakespeare/input.txt] [--out bench-out/shakespeare]

Recipe (nanoGPT README, CPU): 4 layers, 4 heads, 128 wide, context 64, batch 12, lr 1e-3 cosine to 1e-4, 100
warm-up steps, 2000 iterations, dropout 0, beta2 0.99, weight decay 0.1, grad clip 1; data split 90/10.

Runs, on the same token files:
1. reference: nanoGPT's recipe in plain PyTorch (benchmarks/nanogpt_ref.py), eager fp32 as nanoGPT runs on a CPU;
2. lmforge, the same recipe and the same architecture (preset gpt-nano), 2000 iterations (`lmforge pretrain`,
   dtype auto: bf16 matrix multiplies where the CPU has them) - speed and parity;
3. lmforge, the same recipe and shape (4 layers, 4 heads, 128 wide) with a Llama block (preset llama-nano:
   rotary positions, RMSNorm, SwiGLU sized to the same parameter count), 2000 iterations - quality;
4. lmforge llama-nano with the reference's time for its 2000 iterations: as many iterations as fit
   (the cosine schedule stretched to them).
Val loss is measured the same way for all three: mean loss over the whole val split in non-overlapping windows.
Prints a table, writes results.json and curves.png to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import lmforge as _first  # noqa: F401  (before torch: lmforge's huge-pages setting precedes torch's first allocation)
import torch

sys.path.insert(0, str(Path(__file__).parent))
import nanogpt_ref  # noqa: E402
import train_step  # noqa: E402

import lmforge  # noqa: E402
from lmforge.data.prepare import prepare_corpus  # noqa: E402
from lmforge.evaluate import perplexity  # noqa: E402
from lmforge.tokenizer import train_tokenizer_files  # noqa: E402
from lmforge.train.logs import read_metrics  # noqa: E402
from lmforge.train.options import TrainConfig  # noqa: E402
from lmforge.train.pretrain import pretrain  # noqa: E402

RECIPE = dict(batch_size=12, context=64, lr=1e-3, min_lr=1e-4, warmup_steps=100, beta2=0.99, weight_decay=0.1,
              grad_clip=1.0)


def run_lmforge(data: Path, out: Path, model: str, steps: int, dtype: str, log_every: int = 10,
                max_time: float | None = None, compile: str = "auto") -> dict:
    train = TrainConfig(max_steps=steps, eval_every=0, eval_batches=0, save_every=0, log_every=log_every, seed=1337,
                        dtype=dtype, progress=False, max_time=max_time, compile=compile, **RECIPE)
    start = time.perf_counter()
    summary = pretrain(data=str(data), out=str(out), model=model, set_=["dropout=0.0"], train=train, overwrite=True)
    wall = time.perf_counter() - start
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r.get("split") == "train" and r["step"] > log_every]
    rates = [r["tok_per_s"] for r in rows]
    val = perplexity(lmforge.load(out / "last"), str(data), "val", context=64, batch_size=64)["loss"]
    return {"iters": summary["steps"], "wall_s": wall, "train_s": summary["seconds"], "mfu": summary.get("mfu"),
            "compile": summary.get("compile"),
            "median_ms_per_step": 1000 * 768 / statistics.median(rates), "tok_per_s": statistics.median(rates),
            "val_loss": val, "parameters": lmforge.load(out / "last").num_parameters(), "curve": [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl")
                                       if r.get("split") == "train"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"))
    ap.add_argument("--out", default="bench-out/shakespeare")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--dtype", default="auto", help="lmforge's autocast dtype (auto | fp32 | bf16)")
    ap.add_argument("--compile", default="auto", help="lmforge's --compile (auto | on | off); ms/step is the median "
                    "of the logged steps, so a compiled run's first (compiling) steps do not count")
    ap.add_argument("--compile-models", default="gpt-nano,llama-nano",
                    help="the lmforge models --compile applies to (the others: auto)")
    args = ap.parse_args()
    src = Path(args.input)
    if not src.exists():
        sys.exit(f"Tiny Shakespeare not found at {src}; pass --input path/to/input.txt")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads())

    tok = train_tokenizer_files([str(src)], out / "tokenizer", kind="char", vocab_size=None, byte_fallback=False,
                                progress=False)
    prepare_corpus([str(src)], tok, out / "data", val_fraction=0.1, overwrite=True, progress=False)
    train_ids = np.memmap(out / "data" / "train.bin", dtype=np.uint16)
    val_ids = np.memmap(out / "data" / "val.bin", dtype=np.uint16)
    print(f"data: {len(train_ids):,} train / {len(val_ids):,} val characters, vocabulary {tok.vocab_size}")

    print(f"[1/4] reference: nanoGPT's recipe, eager fp32, {args.iters} iterations", flush=True)
    t0 = time.perf_counter()
    model, ref_losses, ref_times = nanogpt_ref.train(train_ids, tok.vocab_size, iters=args.iters)
    ref_wall = time.perf_counter() - t0
    ref = {"iters": args.iters, "wall_s": ref_wall, "train_s": sum(ref_times),
           "median_ms_per_step": 1000 * statistics.median(ref_times[10:]),
           "tok_per_s": 768 / statistics.median(ref_times[10:]),
           "val_loss": nanogpt_ref.val_loss(model, val_ids), "curve": list(enumerate(ref_losses, 1))}
    print(f"      val loss {ref['val_loss']:.4f}, {ref['median_ms_per_step']:.1f} ms/step, {ref_wall:.0f}s", flush=True)

    print(f"[2/4] lmforge, same recipe and architecture (gpt-nano), {args.iters} iterations (dtype {args.dtype})",
          flush=True)
    def mode(model: str) -> str:
        return args.compile if model in args.compile_models.split(",") else "auto"

    same = run_lmforge(out / "data", out / "run-gpt-nano", "gpt-nano", args.iters, args.dtype, compile=mode("gpt-nano"))
    print(f"      val loss {same['val_loss']:.4f}, {same['median_ms_per_step']:.1f} ms/step, {same['wall_s']:.0f}s", flush=True)

    print(f"[3/4] lmforge, same recipe and shape, Llama block (llama-nano), {args.iters} iterations", flush=True)
    llama = run_lmforge(out / "data", out / "run-llama-nano", "llama-nano", args.iters, args.dtype,
                        compile=mode("llama-nano"))
    print(f"      val loss {llama['val_loss']:.4f}, {llama['median_ms_per_step']:.1f} ms/step", flush=True)

    # The time the reference needs for its iterations (the shorter of its wall-clock and its median step time x
    # iterations), and as many lmforge steps as fit in it at lmforge's median step time, less 5% for what a run
    # also pays (start-up, the final checkpoint). The run is also capped at that time (--max-time), so a slower
    # stretch of the machine stops it early, with the schedule unfinished, instead of letting it overrun.
    budget_s = min(ref["median_ms_per_step"] * args.iters / 1000, ref["wall_s"])
    budget_steps = int(budget_s * 1000 / llama["median_ms_per_step"] * 0.95)
    print(f"[4/4] llama-nano in the reference's time for {args.iters} iterations ({budget_s:.0f}s at its median step): "
          f"{budget_steps} iterations", flush=True)
    timed = run_lmforge(out / "data", out / "run-timed", "llama-nano", budget_steps, args.dtype,
                        max_time=budget_s - (llama["wall_s"] - llama["train_s"]) - 1, compile=mode("llama-nano"))
    print(f"      val loss {timed['val_loss']:.4f}, trained in {timed['train_s']:.0f}s (budget {budget_s:.0f}s)", flush=True)

    # the bare step (forward, backward, clip, AdamW on a fixed batch: benchmarks/train_step.py) of each model in the
    # same run and dtype: what the loop around it costs
    from lmforge.device import native_bf16

    bf16 = args.dtype == "bf16" or (args.dtype == "auto" and native_bf16(torch.device("cpu")))
    for r, name in ((same, "gpt-nano"), (llama, "llama-nano")):
        r["bare_ms"] = train_step.step_ms(name, bf16, mode(name) == "on")  # (compiled like the run)
        r["loop_vs_bare"] = r["median_ms_per_step"] / r["bare_ms"]
        print(f"      {name}: bare step {r['bare_ms']:.1f} ms, the loop's median step {r['median_ms_per_step']:.1f} ms "
              f"({r['loop_vs_bare']:.2f}x), MFU {100 * (r['mfu'] or 0):.1f}%", flush=True)
    ref["parameters"] = sum(p.numel() for p in model.parameters())
    rows = [("nanoGPT recipe (reference)", ref), ("lmforge gpt-nano", same), ("lmforge llama-nano", llama),
            ("lmforge llama-nano, ref's time", timed)]
    print()
    print(f"{'run':32s} {'params':>8s} {'iters':>6s} {'ms/step':>8s} {'tok/s':>8s} {'train s':>8s} {'val loss':>9s} "
          f"{'speed vs ref':>13s}")
    for name, r in rows:
        print(f"{name:32s} {r['parameters']:8,d} {r['iters']:6d} {r['median_ms_per_step']:8.1f} {r['tok_per_s']:8.0f} "
              f"{r['train_s']:8.1f} {r['val_loss']:9.4f} {r['tok_per_s'] / ref['tok_per_s']:12.2f}x")
    print()
    checks = {
        "same architecture: val loss within 0.02 of the reference": abs(same["val_loss"] - ref["val_loss"]) <= 0.02,
        "val loss <= 1.88 after the recipe's iterations (llama-nano)": llama["val_loss"] <= 1.88,
        "throughput >= 20,000 tokens/s (gpt-nano and llama-nano)": min(same["tok_per_s"], llama["tok_per_s"]) >= 20000,
        "the loop within 10% of the bare step (gpt-nano and llama-nano)": max(same["loop_vs_bare"],
                                                                            llama["loop_vs_bare"]) <= 1.10,
        "gpt-nano >= 1.5x and llama-nano >= 1.3x the reference's tokens/s": same["tok_per_s"] >= 1.5 * ref["tok_per_s"]
        and llama["tok_per_s"] >= 1.3 * ref["tok_per_s"],
        "in the reference's wall-clock: lower val loss": timed["val_loss"] < ref["val_loss"]
        and timed["wall_s"] <= ref["wall_s"],
    }
    for what, ok in checks.items():
        print(f"  [{'x' if ok else ' '}] {what}")
    timed["budget_s"] = budget_s
    results = {"reference": ref, "lmforge_gpt_nano": same, "lmforge_llama_nano": llama, "lmforge_llama_nano_same_time": timed,
               "checks": checks,
               "threads": torch.get_num_threads(), "torch": torch.__version__}
    (out / "results.json").write_text(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "curve"}
                                                      if isinstance(v, dict) and "curve" in v else v)
                                                  for k, v in results.items()}, indent=2))
    plot(rows, out / "curves.png")
    print(f"\nresults: {out / 'results.json'}   curves: {out / 'curves.png'}")


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    for name, r in rows:
        steps, losses = zip(*r["curve"])
        seconds = np.asarray(steps) * r["median_ms_per_step"] / 1000
        width = max(1, len(losses) // 40) | 1  # centred moving average over ~1/40 of the run
        smooth = np.convolve(losses, np.ones(width) / width, mode="valid")
        ax.plot(seconds[width // 2: width // 2 + len(smooth)], smooth, label=f"{name} (val {r['val_loss']:.3f})")
    ax.set_xlabel("training time (s, median step time x steps)")
    ax.set_ylabel("train loss (smoothed)")
    ax.set_title("Tiny Shakespeare, char level, nanoGPT CPU recipe")
    ax.set_ylim(top=min(3.5, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
