"""Does an exported model still say the same thing? `lmforge export check` and `parity_report`.

    report = parity_report("runs/gpt", ["Once upon a time", "def add(a, b):"], formats=("hf", "onnx", "gguf"))
    print(report.table())

The model is loaded in fp32 and run in PyTorch eager: that is the reference. Each format is exported from it into a
scratch folder and run by every runtime that reads it, on the same token ids:

- `hf`: the Hugging Face folder (`convert.to_hf`) loaded by transformers' `AutoModelForCausalLM`;
- `onnx`: the ONNX export run by ONNX Runtime, fp32 and int8 (`export.onnx`; teacher-forced logits through the
  KV-cache graph, greedy decoding through lmforge's engine);
- `gguf`: a GGUF file per type (`convert.to_gguf`) loaded back into lmforge (dequantized), and the same file run by
  llama.cpp itself when llama-cpp-python is installed.

For each runtime: max |delta logit| over every position and vocabulary entry, KL(reference || runtime) in nats per
token (mean and max), top-1 agreement, whether the greedy continuation (a fixed number of tokens, end-of-sequence
ignored) is identical or at which token it first diverges, and greedy tokens/s at batch 1 (prompt included).

A runtime is anything with `logits(ids)`, `greedy(ids, n)` and `close()` (`Runtime`); `FORMATS` maps a format
name to the function that exports the model and returns its runtimes, so a new format is one entry there.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from . import io as lio
from .errors import ConfigError, LmforgeError
from .export.onnx import REQUIRES as ONNX_REQUIRES
from .generate import generate
from .loading import load
from .model import Transformer

GGUF_TYPES_DEFAULT = ("f32", "q8_0", "q4_0")


# ---- comparing logits -----------------------------------------------------------------------------------------

def logit_stats(reference: torch.Tensor, other: torch.Tensor) -> dict[str, Any]:
    """How far `other` is from `reference`, both (T, vocab) logits of the same tokens: max |delta|, KL(reference ||
    other) per position in nats (as a list), and top-1 agreement per position (as a list of bools)."""
    if reference.shape != other.shape:
        raise LmforgeError(f"logits of shape {tuple(other.shape)} cannot be compared with the reference's "
                           f"{tuple(reference.shape)} (a different vocabulary size?)")
    lp, lq = F.log_softmax(reference.double(), -1), F.log_softmax(other.double(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)
    return {"max_abs": (reference.float() - other.float()).abs().max().item(), "kl": kl.tolist(),
            "top1": (reference.argmax(-1) == other.argmax(-1)).tolist()}


def summarize(stats: Sequence[dict[str, Any]]) -> dict[str, float]:
    """`logit_stats` of several sequences pooled over all their positions: max_abs, kl_mean, kl_max, kl_p99, top1."""
    kl = sorted(k for s in stats for k in s["kl"])
    top1 = [t for s in stats for t in s["top1"]]
    return {"max_abs": max(s["max_abs"] for s in stats), "kl_mean": sum(kl) / len(kl), "kl_max": kl[-1],
            "kl_p99": kl[min(len(kl) - 1, math.ceil(0.99 * len(kl)) - 1)], "top1": sum(top1) / len(top1),
            "tokens": len(kl)}


# ---- runtimes -------------------------------------------------------------------------------------------------

class Runtime:
    """One way of running an exported model: `logits(ids)` -> (len(ids), vocab) float32 logits, `greedy(ids, n)` ->
    exactly `n` new token ids (end-of-sequence ignored)."""

    name = "runtime"
    format = ""
    path: Path | None = None  # the exported file or folder (its size goes into the report)
    detail = ""

    def logits(self, ids: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def greedy(self, ids: list[int], n: int) -> list[int]:
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> list[list[int]] | None:
        """The runtime's own token ids of each text (special tokens parsed, none added), or None when it takes
        token ids only."""
        return None

    def close(self) -> None:
        pass


class TorchRuntime(Runtime):
    """An lmforge `Transformer` (or anything `lmforge.generate` accepts as a model that returns logits when called
    on a (1, T) id tensor), decoded by lmforge's engine."""

    def __init__(self, name: str, model, *, format: str = "", path: Path | None = None, detail: str = ""):  # noqa: A002
        self.name, self.model, self.format, self.path, self.detail = name, model, format, path, detail

    def logits(self, ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            out = self.model(torch.tensor([ids]))
        return (out.logits if hasattr(out, "logits") else out)[0].float()

    def greedy(self, ids: list[int], n: int) -> list[int]:
        return list(generate(self.model, list(ids), max_new_tokens=n, do_sample=False, ignore_eos=True))

    def tokenize(self, texts: list[str]) -> list[list[int]] | None:
        tok = getattr(self.model, "tokenizer", None)
        return None if tok is None else [tok.encode(t) for t in texts]

    def close(self) -> None:
        self.model = None


class TransformersRuntime(Runtime):
    """A Hugging Face folder loaded by transformers' AutoModelForCausalLM (fp32), decoded by its `generate`."""

    def __init__(self, name: str, folder: Path, *, detail: str = ""):
        from transformers import AutoModelForCausalLM

        self.name, self.format, self.path, self.detail = name, "hf", folder, detail
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.tokenizer = None
        if (folder / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(folder)

    def tokenize(self, texts: list[str]) -> list[list[int]] | None:
        if self.tokenizer is None:
            return None
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    def logits(self, ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(torch.tensor([ids])).logits[0].float()

    def greedy(self, ids: list[int], n: int) -> list[int]:
        x = torch.tensor([ids])
        with torch.inference_mode():
            out = self.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False, pad_token_id=0, eos_token_id=None)
        return out[0, len(ids):].tolist()

    def close(self) -> None:
        self.model = None


class LlamaCppRuntime(Runtime):
    """A GGUF file run by llama.cpp (llama-cpp-python) with its KV cache in f32, so that what differs from lmforge
    is llama.cpp's own arithmetic (its quantized kernels for quantized files)."""

    def __init__(self, name: str, path: Path, *, n_ctx: int, detail: str = ""):
        from .convert.gguf.llamacpp import open_llama

        self.name, self.format, self.path, self.detail = name, "gguf", path, detail
        self._context = open_llama(path, n_ctx=n_ctx, logits_all=True)
        self.llm = self._context.__enter__()

    def logits(self, ids: list[int]) -> torch.Tensor:
        import numpy as np

        self.llm.reset()
        self.llm.eval(list(ids))
        return torch.from_numpy(np.array(self.llm.scores[:len(ids)], dtype=np.float32))

    def greedy(self, ids: list[int], n: int) -> list[int]:
        import numpy as np

        self.llm.reset()
        self.llm.eval(list(ids))
        out: list[int] = []
        for step in range(n):
            out.append(int(np.argmax(self.llm.scores[self.llm.n_tokens - 1])))
            if step < n - 1:
                self.llm.eval([out[-1]])
        return out

    def tokenize(self, texts: list[str]) -> list[list[int]] | None:
        return [self.llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]

    def close(self) -> None:
        self._context.__exit__(None, None, None)


# ---- formats: export, then the runtimes that read the export --------------------------------------------------

@dataclass
class CheckOptions:
    """What the formats need besides the model: a scratch folder, the GGUF types, the longest sequence."""

    workdir: Path
    gguf_types: tuple[str, ...] = GGUF_TYPES_DEFAULT
    llamacpp: bool | None = None  # None: when llama-cpp-python is importable
    onnx_quantize: tuple[str | None, ...] = (None, "int8")
    n_ctx: int = 512
    notes: list[str] = field(default_factory=list)


def hf_runtimes(model, options: CheckOptions) -> Iterator[Runtime]:
    from .convert import to_hf

    folder = to_hf(model, options.workdir / "hf", dtype="fp32", overwrite=True)
    yield TransformersRuntime("transformers (hf)", folder, detail="convert.to_hf -> AutoModelForCausalLM, fp32")


def gguf_runtimes(model, options: CheckOptions) -> Iterator[Runtime]:
    from .convert.gguf import from_gguf, llamacpp_available, to_gguf

    use_llamacpp = llamacpp_available() if options.llamacpp is None else options.llamacpp
    if options.llamacpp is None and not use_llamacpp:
        options.notes.append('llama.cpp rows skipped: llama-cpp-python is not installed (pip install '
                             '"lmforge[llamacpp]")')
    for kind in options.gguf_types:
        done = to_gguf(model, options.workdir / f"model.{kind}.gguf", type=kind, tokenizer=model.tokenizer is not None,
                       overwrite=True)
        types = ", ".join(f"{k} {v}" for k, v in done.tensor_types.items())
        yield TorchRuntime(f"gguf {kind} (lmforge)", from_gguf(done.path), format="gguf",
                           path=done.path, detail=f"to_gguf -> lmforge.load, dequantized ({types})")
        if use_llamacpp:
            yield LlamaCppRuntime(f"gguf {kind} (llama.cpp)", done.path, n_ctx=options.n_ctx,
                                  detail=f"llama-cpp-python, f32 KV cache ({types})")


class OnnxRuntime(TorchRuntime):
    """An ONNX export run by ONNX Runtime (`export.onnx.OnnxModel`): teacher-forced logits through its KV-cache
    graph (a prefill of the first token, then one cached step per token), greedy decoding through lmforge's
    engine."""

    def logits(self, ids: list[int]) -> torch.Tensor:
        return self.model.token_logits(ids)


def onnx_runtimes(model, options: CheckOptions) -> Iterator[Runtime]:
    from .export.onnx import export_onnx, load_onnx

    for quantize in options.onnx_quantize:
        done = export_onnx(model, options.workdir / f"onnx-{quantize or 'fp32'}", quantize=quantize, overwrite=True)
        yield OnnxRuntime(f"ONNX Runtime {quantize or 'fp32'}", load_onnx(done.path), format="onnx", path=done.path,
                          detail=f"export_onnx{f' (quantize={quantize})' if quantize else ''} -> load_onnx")


FORMATS: dict[str, Callable[[Any, CheckOptions], Iterator[Runtime]]] = {
    "hf": hf_runtimes,
    "onnx": onnx_runtimes,
    "gguf": gguf_runtimes,
}


REQUIRES = {"hf": ("transformers",), "onnx": ONNX_REQUIRES}  # module names = PyPI names
EXTRAS = {"hf": "hf", "onnx": "onnx"}


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """`hf,onnx,gguf` (or a sequence of names) -> the names, checked against FORMATS."""
    names = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise ConfigError(f"--formats {','.join(names) if names else repr(formats)}: "
                          f"{'unknown format ' + repr(unknown[0]) if unknown else 'no format given'}; choose among "
                          f"{', '.join(FORMATS)} (comma-separated)")
    for name in names:
        missing = [m for m in REQUIRES.get(name, ()) if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"--formats {name} needs {', '.join(missing)}, which is not installed: pip install "
                              f"'lmforge[{EXTRAS[name]}]' (or leave {name} out of --formats)")
    return tuple(dict.fromkeys(names))


def check_choices(gguf_types: Sequence[str], onnx_quantize: Sequence[str | None]) -> None:
    """Refuse unknown GGUF types and ONNX quantizations before anything is loaded or exported."""
    from .convert.gguf import GGUF_TYPES
    from .export.onnx.quantize import METHODS

    for kind in gguf_types:
        if kind not in GGUF_TYPES:
            raise ConfigError(f"--gguf-types: unknown GGUF type {kind!r}; choose among {', '.join(GGUF_TYPES)}")
    for method in onnx_quantize:
        if method is not None and method not in METHODS:
            raise ConfigError(f"--onnx: unknown ONNX Runtime variant {method!r}; choose among fp32, "
                              f"{', '.join(METHODS)}")


# ---- the report ----------------------------------------------------------------------------------------------

@dataclass
class RuntimeResult:
    name: str
    format: str
    detail: str
    size_mb: float | None
    max_abs: float
    kl_mean: float
    kl_max: float
    kl_p99: float
    top1: float
    tokens: int
    same_tokens: int | None  # prompts the runtime's own tokenizer splits into the reference's ids (None: it has none)
    greedy_identical: int  # prompts whose greedy continuation equals the reference's
    first_divergence: list[int | None]  # per prompt: index of the first differing new token, None if identical
    tokens_per_s: float
    seconds: float  # wall time of this runtime's greedy runs


@dataclass
class ParityReport:
    model: str
    prompts: list[str]
    prompt_tokens: list[int]
    new_tokens: int
    threads: int
    results: list[RuntimeResult]
    notes: list[str]
    torch_version: str = torch.__version__

    def table(self) -> str:
        """The report as a Markdown table (also what `lmforge export check` prints)."""
        ref = self.results[0].tokens_per_s
        n = len(self.prompts)
        lines = [f"parity of {self.model} on {n} prompts ({sum(self.prompt_tokens)} tokens), greedy {self.new_tokens} "
                 f"new tokens each, {self.threads} threads; reference: {self.results[0].name}", "",
                 "| runtime | size MB | same tokens | max abs dlogit | KL mean | KL max | top-1 | greedy identical | "
                 "first divergence | tokens/s | vs PyTorch |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.results:
            diverged = [d for d in r.first_divergence if d is not None]
            lines.append(
                f"| {r.name} | {'' if r.size_mb is None else f'{r.size_mb:.1f}'} | "
                f"{'-' if r.same_tokens is None else f'{r.same_tokens}/{n}'} | {r.max_abs:.3g} | {r.kl_mean:.3g} | "
                f"{r.kl_max:.3g} | {r.top1:.3f} | {r.greedy_identical}/{n} | "
                f"{'-' if not diverged else 'token ' + str(min(diverged))} | {r.tokens_per_s:.1f} | "
                f"{r.tokens_per_s / ref:.2f}x |")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def figure(self):
        """A matplotlib figure: KL divergence, top-1 agreement and greedy tokens/s per runtime."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [r.name for r in self.results][::-1]
        results = self.results[::-1]
        colours = ["tab:green" if r.greedy_identical == len(self.prompts) else "tab:red" for r in results]
        fig, axes = plt.subplots(1, 3, figsize=(14, 0.45 * len(names) + 1.8), sharey=True)
        floor = 1e-12
        bars = axes[0].barh(names, [max(r.kl_mean, floor) for r in results], color=colours)
        axes[0].bar_label(bars, labels=[f"{r.kl_mean:.2g}" for r in results], fontsize=8, padding=2)
        axes[0].set_xscale("log")
        axes[0].set_xlabel(f"KL(reference || runtime), nats/token (mean; 0 drawn at {floor:g})")
        axes[1].barh(names, [r.top1 for r in results], color=colours)
        axes[1].set_xlim(0, 1)
        axes[1].set_xlabel("top-1 agreement")
        bars = axes[2].barh(names, [r.tokens_per_s for r in results], color="tab:blue")
        axes[2].bar_label(bars, labels=[f"{r.tokens_per_s:.0f}" for r in results], fontsize=8, padding=2)
        axes[2].set_xlabel("greedy tokens/s, batch 1")
        fig.suptitle(f"{self.model}: parity with PyTorch eager (green: greedy continuation identical on every "
                     f"prompt, red: diverged)", fontsize=10)
        return fig

    def write(self, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """report.json, report.md and parity.png into the folder `out` (built aside, then swapped in)."""
        path = lio.check_output(out, what="a parity report", overwrite=overwrite, ours=_is_report)
        with lio.atomic_dir(path) as tmp:
            lio.write_json(tmp / "report.json", self.to_json())
            lio.write_text(tmp / "report.md", self.table() + "\n")
            lio.save_figure(self.figure(), tmp / "parity.png")
        return path


def _is_report(path: Path) -> bool:
    return (path / "report.json").is_file()


def _size_mb(path: Path | None) -> float | None:
    if path is None or not path.exists():
        return None
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def _measure(runtime: Runtime, texts: list[str], prompts: list[list[int]], reference: list[torch.Tensor],
             ref_greedy: list[list[int]] | None, new_tokens: int) -> tuple[RuntimeResult, list[list[int]]]:
    stats, continuations, seconds = [], [], 0.0
    runtime.greedy(prompts[0], new_tokens)  # warm-up: the first calls of a runtime pay one-off costs
    for ids, ref in zip(prompts, reference):
        stats.append(logit_stats(ref, runtime.logits(ids)))
        start = time.perf_counter()
        continuations.append(runtime.greedy(ids, new_tokens))
        seconds += time.perf_counter() - start
    ref_greedy = ref_greedy or continuations
    first = [next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b),
                  None if len(ref) == len(got) else min(len(ref), len(got)))
             for ref, got in zip(ref_greedy, continuations)]
    s = summarize(stats)
    own = runtime.tokenize(texts)
    same = None if own is None else sum(list(a) == list(b) for a, b in zip(own, prompts))
    result = RuntimeResult(runtime.name, runtime.format, runtime.detail, _size_mb(runtime.path), s["max_abs"],
                           s["kl_mean"], s["kl_max"], s["kl_p99"], s["top1"], s["tokens"], same,
                           sum(d is None for d in first), first, len(prompts) * new_tokens / max(seconds, 1e-9),
                           seconds)
    return result, continuations


def parity_report(
    model,
    prompts: Sequence[str],
    *,
    formats: str | Sequence[str] = ("hf", "gguf"),
    gguf_types: Sequence[str] = GGUF_TYPES_DEFAULT,
    onnx_quantize: Sequence[str | None] = (None, "int8"),
    llamacpp: bool | None = None,
    new_tokens: int = 16,
    workdir: str | os.PathLike | None = None,
    runtimes: Sequence[Runtime] = (),
    progress: bool = True,
) -> ParityReport:
    """Export `model` (a `Transformer`, or anything `lmforge.load` reads) to each format, run every runtime of each
    on `prompts`, and compare with PyTorch eager in fp32 (see the module docstring).

    `gguf_types`: the GGUF types to export (each run by lmforge and, with `llamacpp`, by llama.cpp; None runs it when
    llama-cpp-python is installed); `onnx_quantize`: None for fp32, "int8" / "int8-dynamic" for ONNX Runtime's
    quantized graphs. `runtimes` adds runtimes of your own (already built) to the table; `workdir` keeps the exported
    files (default: a temporary folder, deleted afterwards).
    """
    names = parse_formats(formats)
    check_choices(gguf_types, onnx_quantize)
    prompts = [p for p in prompts]
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ConfigError("parity_report needs a non-empty list of non-empty prompt strings")
    if not isinstance(new_tokens, int) or new_tokens < 1:
        raise ConfigError(f"--new-tokens {new_tokens!r}: give a positive number of tokens to decode greedily")
    label = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    if isinstance(model, (str, os.PathLike)):
        model = load(model, dtype="fp32")
    elif getattr(model, "dtype", torch.float32) != torch.float32:
        model = copy.deepcopy(model).float()  # the reference is fp32; the caller's model is left as it is
    if not isinstance(model, Transformer):
        raise ConfigError(f"export check starts from the PyTorch model (an lmforge checkpoint or run, a Hugging Face "
                          f"folder or a .gguf file); got {getattr(model, 'runtime', None) or type(model).__name__} "
                          f"({label}): check the model it was exported from")
    model.eval()
    if not isinstance(label, str) or label == type(model).__name__:
        label = f"an lmforge model ({model.num_parameters() / 1e6:.1f}M parameters)"
    config = model.config
    if config.arch != "decoder" or config.head != "lm":
        raise ConfigError(f"export check compares language models (arch=decoder, head=lm); this model is "
                          f"arch={config.arch}, head={config.head}")
    if model.tokenizer is None:
        raise ConfigError("export check needs the model's tokenizer to read the prompts; this checkpoint has none")
    ids = [model.tokenizer.encode(p) for p in prompts]
    longest = max(len(i) for i in ids) + new_tokens
    if longest > config.context_length:
        raise ConfigError(f"the longest prompt plus --new-tokens is {longest} tokens, past the model's context of "
                          f"{config.context_length}; shorten the prompts or lower --new-tokens")
    say = print if progress else (lambda *a, **k: None)
    with tempfile.TemporaryDirectory(prefix="lmforge-check-") as scratch:
        options = CheckOptions(Path(workdir) if workdir is not None else Path(scratch), tuple(gguf_types), llamacpp,
                               tuple(onnx_quantize), n_ctx=max(64, longest + 8))
        options.workdir.mkdir(parents=True, exist_ok=True)
        reference = TorchRuntime("PyTorch eager (reference)", model, detail="lmforge, fp32")
        ref_logits = [reference.logits(i) for i in ids]
        results: list[RuntimeResult] = []
        result, ref_greedy = _measure(reference, prompts, ids, ref_logits, None, new_tokens)
        results.append(result)
        say(f"[check] {result.name}: {result.tokens_per_s:.1f} tokens/s")
        groups: list[Iterable[Runtime]] = [runtimes] + [FORMATS[fmt](model, options) for fmt in names]
        for group in groups:  # each format exports lazily: one runtime in memory at a time
            for runtime in group:
                try:
                    result, _ = _measure(runtime, prompts, ids, ref_logits, ref_greedy, new_tokens)
                finally:
                    runtime.close()
                results.append(result)
                say(f"[check] {result.name}: max |dlogit| {result.max_abs:.3g}, KL {result.kl_mean:.3g}, top-1 "
                    f"{result.top1:.3f}, greedy identical {result.greedy_identical}/{len(ids)}, "
                    f"{result.tokens_per_s:.1f} tokens/s")
    return ParityReport(label, prompts, [len(i) for i in ids], new_tokens, torch.get_num_threads(), results,
                        options.notes)


__all__ = ["parity_report", "ParityReport", "RuntimeResult", "Runtime", "TorchRuntime", "TransformersRuntime",
           "LlamaCppRuntime", "OnnxRuntime", "CheckOptions", "FORMATS", "logit_stats", "summarize", "parse_formats"]
