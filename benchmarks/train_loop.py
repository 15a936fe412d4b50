"""What the training loop costs beside the model's work: `Trainer._step` against the bare step of
benchmarks/train_step.py, interleaved in one process (so other jobs on a shared machine slow both alike), and
optionally a torch.profiler table of each.

    python benchmarks/train_loop.py [--models gpt-nano,llama-nano] [--rounds 8] [--threads 1] [--profile]
        [--data bench-out/shakespeare/data] [--reference]

Both run nanoGPT's CPU recipe shape (batch 12 x context 64, bf16 autocast where native, AdamW fused, clip 1.0) on
the same model preset; the Trainer reads its batches from prepared Tiny Shakespeare (prepared here from
../shared/data unless --data points at a prepared folder), the bare step reuses one random batch. Prints per model
the median step time of each and their ratio (the issue's target: the loop within 10% of the bare step).

--reference adds a third step to the same rounds: one iteration of nanoGPT's recipe as benchmarks/nanogpt_ref.py
runs it (eager fp32, its own batch sampling, learning-rate schedule, clipping, AdamW and the loss's .item()), on the
same data; it prints nanoGPT's median step against the Trainer's, the speed ratio of issue 15's Tiny Shakespeare
targets (gpt-nano >= 1.5x, llama-nano >= 1.3x) measured so that a host changing speed slows both alike. (The
2000-iteration runs of benchmarks/tinyshakespeare.py, one after the other, give the losses.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lmforge as _first  # noqa: F401  (before torch: lmforge's huge-pages setting precedes torch's first allocation)
import torch

sys.path.insert(0, str(Path(__file__).parent))

RECIPE = dict(batch_size=12, context=64, lr=1e-3, min_lr=1e-4, warmup_steps=100, beta2=0.99, weight_decay=0.1,
              grad_clip=1.0)


def prepared(data: str | None, shared: Path, tmp: Path) -> Path:
    if data:
        return Path(data)
    from lmforge.data.prepare import prepare_corpus
    from lmforge.tokenizer import train_tokenizer_files

    src = shared / "tinyshakespeare" / "input.txt"
    if not src.exists():
        sys.exit(f"{src} not found; pass --shared or --data")
    tok = train_tokenizer_files([str(src)], tmp / "tokenizer", kind="char", vocab_size=None, byte_fallback=False,
                                progress=False)
    prepare_corpus([str(src)], tok, tmp / "data", val_fraction=0.1, overwrite=True, progress=False)
    return tmp / "data"


def stepper(trainer, first: int):
    """A function running the trainer's next step each call."""
    step = [first]

    def run():
        trainer._step(step[0])
        step[0] += 1

    return run


def compare(name: str, data: Path, out: Path, rounds: int, profile: bool, reference: bool = False,
            compiled: tuple[str, ...] = (), attention: bool = False) -> dict:
    from lmforge import ModelConfig, build_model
    from lmforge.data.batches import PreparedData
    from lmforge.device import native_bf16
    from lmforge.model import cross_entropy
    from lmforge.train.objectives import make_objective
    from lmforge.train.options import TrainConfig
    from lmforge.train.trainer import Trainer, build_optimizer

    cfg = TrainConfig(max_steps=1_000_000, eval_every=0, eval_batches=1, save_every=0, log_every=10, seed=1337,
                      dtype="auto", progress=False, compile="off", **RECIPE)
    prep = PreparedData(data)
    tok = prep.tokenizer()
    shape = dict(vocab_size=tok.vocab_size, dropout=0.0, context_length=64)
    torch.manual_seed(0)
    trainer = Trainer(build_model(ModelConfig.from_name(name, **shape)), make_objective("clm", prep, tok, 64, 1337),
                      cfg, out / name)
    torch.manual_seed(0)
    bare_model = build_model(ModelConfig.from_name(name, **shape)).train()
    opt = build_optimizer(bare_model, TrainConfig(), torch.device("cpu"))
    x = torch.randint(0, tok.vocab_size, (12, 64))
    y = torch.randint(0, tok.vocab_size, (12, 64))
    bf16 = native_bf16(torch.device("cpu"))

    def bare():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = cross_entropy(bare_model(x), y) / y.numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bare_model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    loop = stepper(trainer, 0)
    fns = {"bare": bare, "loop": loop}
    if attention:  # the same Trainer's steps with PyTorch's SDPA for attention instead of lmforge's kernel
        from lmforge.model import kernels

        sdpa_trainer = Trainer(build_model(ModelConfig.from_name(name, **shape)),
                               make_objective("clm", prep, tok, 64, 1337), cfg, out / f"{name}-sdpa")
        sdpa_step = stepper(sdpa_trainer, 0)

        def loop_sdpa():
            with kernels.disabled():
                sdpa_step()

        fns["loop-sdpa"] = loop_sdpa
    compile_s = {}
    for scope in compiled:  # the same Trainer with --compile on, its forward and loss compiled as one graph or by block
        import lmforge.train.trainer as trainer_module

        trainer_module.COMPILE_SCOPE = scope
        torch.manual_seed(0)
        other = Trainer(build_model(ModelConfig.from_name(name, **shape)),
                        make_objective("clm", prep, tok, 64, 1337), TrainConfig(**{**cfg.__dict__, "compile": "on"}),
                        out / f"{name}-{scope}")
        t = time.perf_counter()
        other._step(0), other._step(1)  # (compiles the forward, then the backward)
        compile_s[scope] = time.perf_counter() - t
        fns[f"compiled-{scope}"] = stepper(other, 2)
    if reference:
        import numpy as np

        import nanogpt_ref

        _, ref_step = nanogpt_ref.make_step(np.memmap(data / "train.bin", dtype=np.uint16), tok.vocab_size)
        ref_it = [0]

        def nanogpt():
            ref_step(ref_it[0]).item()
            ref_it[0] += 1

        fns["nanogpt"] = nanogpt
    for _ in range(20):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            for _ in range(25):
                t = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof

        for key, fn in (("Trainer._step", loop), ("bare step", bare)):
            with prof(activities=[ProfilerActivity.CPU]) as p:
                for _ in range(50):
                    fn()
            print(f"\n{name}, {key}, 50 steps:\n" + p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    b, lp = statistics.median(times["bare"]), statistics.median(times["loop"])
    out = {"bare_ms": 1000 * b, "loop_ms": 1000 * lp, "ratio": lp / b}
    if reference:
        r = statistics.median(times["nanogpt"])
        out.update(nanogpt_ms=1000 * r, speedup=r / lp)
    if attention:
        out["sdpa_ms"] = 1000 * statistics.median(times["loop-sdpa"])
    for scope in compiled:
        c = statistics.median(times[f"compiled-{scope}"])
        out[scope] = {"ms": 1000 * c, "compile_s": compile_s[scope], "vs_eager": lp / c}
        if reference:
            out[scope]["speedup"] = statistics.median(times["nanogpt"]) / c
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt-nano,llama-nano")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's top operators of each")
    ap.add_argument("--reference", action="store_true", help="also time nanoGPT's recipe step in the same rounds")
    ap.add_argument("--compile", default="", help="also time the Trainer with --compile on, its forward and loss "
                    "compiled as one graph (model) and/or block by block (blocks): model,blocks")
    ap.add_argument("--attention", action="store_true", help="also time the Trainer's step with PyTorch's SDPA "
                    "in place of lmforge's CPU attention kernel")
    ap.add_argument("--data", default=None, help="a prepared Tiny Shakespeare folder (default: prepared here)")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = prepared(args.data, Path(args.shared), Path(tmp))
        load = open("/proc/loadavg").read().split()[0] if Path("/proc/loadavg").exists() else "?"
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}")
        head = f"{'model':11s} {'bare ms':>8s} {'loop ms':>8s} {'loop/bare':>9s}  target <= 1.10"
        print(head + (f" {'nanoGPT ms':>10s} {'nanoGPT/loop':>12s}" if args.reference else ""))
        for name in args.models.split(","):
            scopes = tuple(x for x in args.compile.split(",") if x)
            r = compare(name, data, Path(tmp), args.rounds, args.profile, args.reference, scopes, args.attention)
            line = f"{name:11s} {r['bare_ms']:8.2f} {r['loop_ms']:8.2f} {r['ratio']:8.3f}x"
            if args.reference:
                line += f"{'':16s} {r['nanogpt_ms']:10.2f} {r['speedup']:11.2f}x"
            print(line, flush=True)
            if args.attention:
                print(f"  with SDPA's attention: {r['sdpa_ms']:.2f} ms a step (lmforge's kernel "
                      f"{r['sdpa_ms'] / r['loop_ms']:.2f}x faster)", flush=True)
            for scope in scopes:
                c = r[scope]
                line = (f"  compiled ({scope}): {c['ms']:.2f} ms a step, {c['vs_eager']:.2f}x the eager loop, compiling "
                        f"took {c['compile_s']:.1f} s")
                if args.reference:
                    line += f"; nanoGPT / compiled {c['speedup']:.2f}x"
                print(line, flush=True)


if __name__ == "__main__":
    main()
