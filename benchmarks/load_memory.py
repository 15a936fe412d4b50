"""Peak resident memory while loading a Hugging Face checkpoint: lmforge vs transformers.

Builds GPT-2 124M with `transformers` (random weights, fp32, `save_pretrained`, plus a small trained tokenizer),
then, for each loader, starts a fresh Python process that imports its libraries, records its resident set size
(the baseline, with the kernel's peak counter reset to it), loads the folder, and reports the peak resident set
size (VmHWM, as ru_maxrss but not inherited from the parent) minus the baseline, both right after loading and
after one forward pass (which touches every weight, so memory-mapped weights count in full). The figure compared with the weight bytes is the larger of the two. Target: <= 1.3x the weight bytes.

    flock /tmp/lmforge-bench.lock python benchmarks/load_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOADERS = {
    "lmforge.load (fp32, as stored)": "lmforge",
    "lmforge.load(dtype='bf16')": "lmforge-bf16",
    "transformers AutoModelForCausalLM.from_pretrained": "transformers",
    "lmforge.load + lmforge.convert.to_hf (export)": "lmforge-export",
}


def build(folder: Path) -> None:
    """GPT-2 124M saved by transformers, with a small trained tokenizer."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config())  # 124M: 12 x 768, 50257 tokens, 1024 positions
    model.save_pretrained(folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = ["The quick brown fox jumps over the lazy dog. " * 4, "Hugging Face checkpoints load in lmforge."] * 50
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                         bos_token="<|endoftext|>").save_pretrained(folder)


def _nbytes(slice_) -> int:
    n = 1
    for d in slice_.get_shape():
        n *= d
    return n * {"F32": 4, "F16": 2, "BF16": 2}.get(slice_.get_dtype(), 8)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    """Peak resident set size of this process: VmHWM, the kernel's high-water mark of this address space. (Not
    ru_maxrss: Linux carries that over from the parent at fork, so a child would report the parent's peak.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak measured is the load's alone."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(kind: str, folder: str) -> None:
    """Runs in a fresh process: import, baseline, load, forward; prints JSON."""
    import gc

    import torch

    torch.set_num_threads(2)
    if kind.startswith("lmforge"):
        import lmforge
    else:
        import transformers
        transformers.logging.set_verbosity_error()
    ids = torch.randint(0, 600, (1, 64))
    gc.collect()
    reset = _reset_peak()
    baseline = _rss() if reset else max(_rss(), _peak())
    t0 = time.perf_counter()
    if kind in ("lmforge", "lmforge-export"):
        model = lmforge.load(folder)
    elif kind == "lmforge-bf16":
        model = lmforge.load(folder, dtype="bf16")
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    seconds = time.perf_counter() - t0
    after_load = _peak()
    with torch.no_grad():
        model(ids)
    if kind == "lmforge-export":  # writing a Hugging Face copy streams one tensor at a time
        out = tempfile.mkdtemp(prefix="lmforge-export-")
        lmforge.convert.to_hf(model, Path(out) / "hf")
        shutil.rmtree(out)
    after_forward = _peak()
    print(json.dumps({"baseline": baseline, "load_peak": after_load - baseline,
                      "forward_peak": after_forward - baseline, "rss_after": _rss() - baseline,
                      "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", help="reuse (or create) the GPT-2 124M folder here instead of a temporary one")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    tmp = None
    if args.folder:
        folder = Path(args.folder)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="lmforge-load-memory-"))
        folder = tmp / "gpt2-124m"
    try:
        if not (folder / "model.safetensors").exists():
            print(f"building GPT-2 124M with transformers in {folder} ...", flush=True)
            build(folder)
        weight_bytes = _stored_bytes(folder)
        rows = []
        for label, kind in LOADERS.items():
            out = subprocess.run([sys.executable, __file__, "--child", kind, str(folder)], capture_output=True,
                                 text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((label, result))
        mib = 1 << 20
        print(f"\nGPT-2 124M, fp32 safetensors: {weight_bytes / mib:.1f} MiB of weights "
              f"({weight_bytes / 4 / 1e6:.1f}M parameters stored)\n")
        header = ("loader", "peak during load", "peak incl. forward (and export)", "ratio to weights", "RSS after",
                  "load time")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for label, r in rows:
            peak = max(r["load_peak"], r["forward_peak"])
            print(f"| {label} | {r['load_peak'] / mib:.0f} MiB | {r['forward_peak'] / mib:.0f} MiB | "
                  f"{peak / weight_bytes:.2f}x | {r['rss_after'] / mib:.0f} MiB | {r['seconds']:.2f} s |")
        lm = max(rows[0][1]["load_peak"], rows[0][1]["forward_peak"]) / weight_bytes
        print(f"\nlmforge.load peak / weight bytes = {lm:.2f}x (target <= 1.3x): {'PASS' if lm <= 1.3 else 'FAIL'}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _stored_bytes(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return sum(_nbytes(f.get_slice(k)) for k in f.keys())


if __name__ == "__main__":
    main()
