"""The compression report: compressed models against their original on held-out text, measured in one run.

For the original (fp32) and each entry (a quantization method applied in memory, or a compressed model from disk
given with `include`, e.g. a pruned, factorised or distilled run): the size of its weights (what safetensors
stores) and the ratio, decode tokens/s at batch 1 and 8 (a 32-token prompt, 64 new tokens, prompt included, as
llama.cpp's figures) and prefill tokens/s (one 256-token prompt), each with its ratio to the original measured
in the same run; perplexity and its change in %; the KL divergence from the original's next-token distribution to
the entry's, per token (mean, median, p99), and how often both models rank the same token first (llama.cpp
reports KL and top-token agreement because perplexity hides damage: errors in both directions cancel in it).

The original's distributions are kept as its top-k log-probabilities (k = 64 by default, `reference_topk.safetensors`
in the report folder), not whole logit files; the KL is computed over those k tokens plus one bucket for the
rest of the vocabulary, which is a lower bound on the full KL (merging outcomes never increases a KL divergence)
and equals it when k is the vocabulary size.

Entries are `Entry` objects (a name, how the model is made, what it is); a new compression method adds itself by
giving the report a model (`include`), with nothing else to change here.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import io as lio
from ..errors import ConfigError, choices
from ..model.fast import fast_inference
from .quantize import ALGOS, quantize, token_windows

METHOD_KINDS = ("int8", "int4", "dynamic-int8", "bf16")


@dataclass
class Entry:
    """One row of the report: `make()` returns the model to measure."""

    name: str
    make: Callable[[], nn.Module]
    what: str = ""
    seconds: float = 0.0
    results: dict[str, Any] = field(default_factory=dict)


def parse_method(text: str, group_size: int) -> dict[str, Any]:
    """'int8' | 'int8-gptq' | 'int4-rtn' | 'int4-gptq-g128' | 'int4-rtn-g64-sym' | 'int4-gptq-act' | 'dynamic-int8'
    | 'bf16' -> quantize() options."""
    text = text.strip()
    base = next((k for k in sorted(METHOD_KINDS, key=len, reverse=True) if text == k or text.startswith(k + "-")), None)
    if base is None:
        raise ConfigError(f"--methods: {text!r} is not a method; use {choices(METHOD_KINDS)}, with -rtn | -gptq, -gNN "
                          "(int4 group size), -sym, -act (GPTQ act-order), e.g. int8,int4-rtn,int4-gptq-g128")
    opts: dict[str, Any] = {"method": base, "algo": "rtn", "group_size": group_size, "symmetric": False,
                            "act_order": False}
    for part in filter(None, text[len(base):].split("-")):
        if part in ALGOS:
            opts["algo"] = part
        elif part.startswith("g") and part[1:].isdigit():
            opts["group_size"] = int(part[1:])
        elif part == "sym":
            opts["symmetric"] = True
        elif part == "act":
            opts["act_order"] = True
        else:
            raise ConfigError(f"--methods: {text!r} has an unknown part {part!r}; parts are rtn | gptq | gNN | sym | act")
    if base == "bf16" and text != "bf16":
        raise ConfigError(f"--methods: {text!r}: bf16 takes no options")
    return opts


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights a checkpoint stores (each tensor once; a tied head is the embedding)."""
    seen, total = set(), 0
    state = model.state_dict_to_save() if hasattr(model, "state_dict_to_save") else model.state_dict()
    for t in state.values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def memory_bytes(model: nn.Module) -> int:
    """Bytes the weights take in memory once the model has run: the stored tensors plus what quantized layers build
    for their kernels (the int4 layers' packed copy, dynamic int8's transposed weight)."""
    extra = 0
    for m in model.modules():
        packed = getattr(m, "_packed", None)
        for t in (packed if isinstance(packed, tuple) else (packed,)):
            if isinstance(t, torch.Tensor):
                extra += t.numel() * t.element_size()
    return weight_bytes(model) + extra


# ---- speed --------------------------------------------------------------------------------------------------

def best_time(fn: Callable[[], Any], repeats: int = 3) -> float:
    """The shortest wall time of `repeats` calls of `fn`."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def decode_speed(model: nn.Module, batch: int = 1, prompt: int = 32, new: int = 64, repeats: int = 3) -> float:
    """Tokens/s of greedy generation: batch x `new` tokens after a `prompt`-token prompt, prompt included."""
    from ..generate import generate

    vocab, context = model.config.vocab_size, model.config.context_length
    prompt = min(prompt, context // 2)
    new = min(new, context - prompt)  # (a short context: fewer tokens, same measure)
    ids = torch.randint(0, vocab, (batch, prompt), generator=torch.Generator().manual_seed(1))
    generate(model, ids, max_new_tokens=4, ignore_eos=True)  # warm-up (packs int4 weights, oneDNN primitives)
    return batch * new / best_time(lambda: generate(model, ids, max_new_tokens=new, ignore_eos=True), repeats)


def prefill_speed(model: nn.Module, tokens: int = 256, repeats: int = 3) -> float:
    """Tokens/s of the forward pass over one prompt of `tokens` tokens (the first step of decoding)."""
    tokens = min(tokens, model.config.context_length)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(2))

    def run():
        with torch.inference_mode(), fast_inference():
            model.last_logits(model.decode(ids))

    run()
    return tokens / best_time(run, repeats)


# ---- quality ------------------------------------------------------------------------------------------------

@torch.inference_mode()
def _log_probs(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    with fast_inference():
        logits = model(window[None])[0].float()
    return torch.log_softmax(logits, -1)


def reference_topk(model: nn.Module, windows: torch.Tensor, k: int = 64) -> dict[str, torch.Tensor]:
    """The original's top-k log-probabilities and token ids at every position, and its log-probs of the targets."""
    values, indices, nll = [], [], []
    for w in windows:
        lp = _log_probs(model, w)[:-1]
        top = lp.topk(min(k, lp.shape[-1]), -1)
        values.append(top.values)
        indices.append(top.indices.to(torch.int32))
        nll.append(-lp.gather(-1, w[1:, None])[:, 0])
    return {"logprobs": torch.cat(values), "ids": torch.cat(indices), "nll": torch.cat(nll)}


def compare(model: nn.Module, windows: torch.Tensor, ref: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Perplexity, KL(original || model) per token (top-k + rest bucket) and top-1 agreement."""
    kls, same, nll = [], [], []
    at = 0
    for w in windows:
        lp = _log_probs(model, w)[:-1]
        n = lp.shape[0]
        p_lp, p_ids = ref["logprobs"][at: at + n], ref["ids"][at: at + n].long()
        at += n
        q_lp = lp.gather(-1, p_ids)
        p = p_lp.exp()
        p_rest = (1 - p.sum(-1)).clamp(min=0)
        q_rest = (1 - q_lp.exp().sum(-1)).clamp(min=1e-12)
        kl = (p * (p_lp - q_lp)).sum(-1) + torch.where(p_rest > 1e-9, p_rest * (p_rest.clamp(min=1e-12).log()
                                                                                 - q_rest.log()), 0.0)
        kls.append(kl.clamp(min=0))
        same.append(lp.argmax(-1) == p_ids[:, 0])
        nll.append(-lp.gather(-1, w[1:, None])[:, 0])
    kl, nll_t = torch.cat(kls).double(), torch.cat(nll).double()
    return {"ppl": math.exp(nll_t.mean().item()), "kl_mean": kl.mean().item(), "kl_median": kl.median().item(),
            "kl_p99": torch.quantile(kl, 0.99).item(), "top1": torch.cat(same).double().mean().item(),
            "tokens": int(kl.numel())}


# ---- the report ---------------------------------------------------------------------------------------------

def build_entries(original: nn.Module, methods: list[str], include: list[str], *, group_size: int, calib: Any,
                  progress: bool, calib_samples: int = 32, calib_context: int = 512) -> list[Entry]:
    from ..loading import load

    entries = []
    for text in methods:
        opts = parse_method(text, group_size)
        if opts["algo"] == "gptq" and calib is None:
            raise ConfigError(f"--methods {text} needs calibration text: give --calib (text, or prepared data whose "
                              "train split is used), or --data as a prepared folder with a train split")

        def make(opts=opts):
            model = copy.deepcopy(original)
            if opts["method"] == "bf16":
                return model.to(torch.bfloat16)
            return quantize(model, opts["method"], group_size=opts["group_size"], algo=opts["algo"], calib=calib,
                            symmetric=opts["symmetric"], act_order=opts["act_order"], progress=progress,
                            calib_samples=calib_samples, calib_context=calib_context)
        entries.append(Entry(text, make, "bf16 weights and activations" if opts["method"] == "bf16" else
                             f"{opts['method']} {opts['algo'].upper()}" + (f" g{opts['group_size']}"
                                                                           if opts["method"] == "int4" else "")))
    for path in include:
        p = Path(path)
        name = f"{p.parent.name}/{p.name}" if p.name in ("best", "last") and p.parent.name else (p.name or str(path))
        entries.append(Entry(name, lambda path=path: load(path), f"from {path}"))  # (a run's best/: "run/best")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"--methods/--include name the same entry twice ({', '.join(names)}); give each once")
    return entries


def run_report(original: nn.Module, data: Any, entries: list[Entry], *, windows: int = 16, context: int = 512,
               topk: int = 64, speed: bool = True, batch8: bool = True, progress: bool = True,
               reference_name: str = "fp32") -> dict[str, Any]:
    """Measure the original and every entry; returns {"rows": [...], "reference": ...} (see the module docstring)."""
    from tqdm import tqdm

    context = min(context, original.config.context_length)
    eval_windows = token_windows(original, data, count=windows, context=context, split="val")
    ref_entry = Entry(reference_name, lambda: original, "the original")
    rows = []
    ref = None
    bar = tqdm(total=1 + len(entries), desc="report", unit="model", disable=not progress)
    for entry in [ref_entry, *entries]:
        start = time.time()
        model = entry.make()
        entry.seconds = time.time() - start
        if model.config.vocab_size != original.config.vocab_size:
            raise ConfigError(f"{entry.name} has a vocabulary of {model.config.vocab_size} tokens, the original "
                              f"{original.config.vocab_size}; the report compares models of the same tokenizer")
        r: dict[str, Any] = {"name": entry.name, "what": entry.what, "make_seconds": round(entry.seconds, 1),
                             "bytes": weight_bytes(model)}
        if ref is None:
            ref = reference_topk(model, eval_windows, topk)
        r.update(compare(model, eval_windows, ref))
        if speed:
            r["decode_b1"] = decode_speed(model, 1)
            if batch8:
                r["decode_b8"] = decode_speed(model, 8, repeats=2)
            r["prefill"] = prefill_speed(model)
        r["memory_bytes"] = memory_bytes(model)
        rows.append(r)
        bar.update()
        if model is not original:
            del model
    bar.close()
    base = rows[0]
    for r in rows:
        r["size_ratio"] = base["bytes"] / r["bytes"]
        r["ppl_change_pct"] = 100 * (r["ppl"] / base["ppl"] - 1)
        for key in ("decode_b1", "decode_b8", "prefill"):
            if key in r:
                r[key + "_ratio"] = r[key] / base[key]
    return {"rows": rows, "reference": ref, "windows": int(eval_windows.shape[0]), "context": context, "topk": topk}


def markdown_table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    speed = "decode_b1" in rows[0]
    head = ["model", "size MB", "smaller", "memory MB"]
    if speed:
        head += ["decode b1 tok/s", "x", *(["decode b8 tok/s", "x"] if "decode_b8" in rows[0] else []),
                 "prefill tok/s", "x"]
    head += ["ppl", "ppl change", "KL mean", "KL median", "KL p99", "same top-1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        memory = r.get("memory_bytes", r["bytes"])
        cells = [r["name"], f"{r['bytes'] / 1e6:.1f}", f"{r['size_ratio']:.2f}x", f"{memory / 1e6:.1f}"]
        if speed:
            cells += [f"{r['decode_b1']:.1f}", f"{r['decode_b1_ratio']:.2f}x"]
            if "decode_b8" in r:
                cells += [f"{r['decode_b8']:.1f}", f"{r['decode_b8_ratio']:.2f}x"]
            cells += [f"{r['prefill']:.0f}", f"{r['prefill_ratio']:.2f}x"]
        cells += [f"{r['ppl']:.3f}", f"{r['ppl_change_pct']:+.2f}%", f"{r['kl_mean']:.5f}", f"{r['kl_median']:.5f}",
                  f"{r['kl_p99']:.4f}", f"{100 * r['top1']:.2f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"][1:]
    speed = "decode_b1" in result["rows"][0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        x = r["decode_b1_ratio"] if speed else r["size_ratio"]
        s = 40 + 400 * r["bytes"] / result["rows"][0]["bytes"]
        axes[0].scatter(x, max(r["kl_mean"], 1e-6), s=s, alpha=0.6)
        axes[0].annotate(r["name"], (x, max(r["kl_mean"], 1e-6)), fontsize=8, xytext=(4, 4), textcoords="offset points")
        axes[1].scatter(r["size_ratio"], r["ppl_change_pct"], s=60, alpha=0.7)
        axes[1].annotate(r["name"], (r["size_ratio"], r["ppl_change_pct"]), fontsize=8, xytext=(4, 4),
                         textcoords="offset points")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("decode speed-up at batch 1 (x the original)" if speed else "size reduction (x)")
    axes[0].set_ylabel("mean KL to the original (nats/token)")
    axes[0].set_title("quality loss vs speed-up (marker area = size)")
    axes[0].axvline(1.0, color="grey", lw=0.8, ls=":")
    axes[1].set_xlabel("size reduction (x the original)")
    # symlog: -1% and +1e6% (a collapsed factorisation) on one readable axis, linear within +-1%
    axes[1].set_yscale("symlog", linthresh=1.0)
    axes[1].set_ylabel("perplexity change (%, symmetric log scale)")
    axes[1].set_title("perplexity change vs size")
    axes[1].axhline(0.0, color="grey", lw=0.8, ls=":")
    fig.suptitle(title, fontsize=10)
    lio.save_figure(fig, path)


def write_report(result: dict[str, Any], out: Path, title: str, meta: dict[str, Any]) -> None:
    from ..tensor_io import save_safetensors

    ref = result.pop("reference")
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors({"logprobs": ref["logprobs"].contiguous(), "ids": ref["ids"].contiguous()},
                     out / "reference_topk.safetensors")
    table = markdown_table(result)
    lio.write_json(out / "report.json", {**meta, **result})
    lio.write_text(out / "report.md", f"# {title}\n\n{table}\n\n{_notes(result, meta)}\n")
    plot(result, out / "report.png", title)


def _notes(result: dict[str, Any], meta: dict[str, Any]) -> str:
    return (f"Held-out text: {meta.get('data')} ({result['windows']} windows of {result['context']} tokens); KL and "
            f"top-1 against the original's top-{result['topk']} log-probabilities (+ one bucket for the rest). "
            "Speeds: best of 3 (2 for batch 8) on this machine, ratios to the original measured in the same run; "
            f"{meta.get('threads')} threads. Size: bytes of the stored weights.")


__all__ = ["best_time", "Entry", "parse_method", "run_report", "write_report", "markdown_table", "reference_topk",
           "compare", "decode_speed", "prefill_speed", "weight_bytes", "memory_bytes", "build_entries"]
