"""`lmforge demo`: the whole pipeline on a corpus every Python installation has, with no download.

The corpus is the docstrings of the Python standard library (about 1.5 MB of English technical prose, read
with `ast`, nothing imported). The demo trains a byte-level BPE tokenizer, prepares the data, pretrains a small
Llama-style decoder for a few minutes on the CPU, then prints a sample, the validation perplexity, and where
everything is.
"""

from __future__ import annotations

import ast
import json
import sysconfig
import time
from pathlib import Path

from .. import io as lio
from ..errors import LmforgeError

SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip"}


def stdlib_docstrings(min_chars: int = 40) -> list[str]:
    """Docstrings of the standard library's modules, classes and functions, in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if SKIP & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    docs.append(doc)
    if not docs:
        raise LmforgeError(f"found no docstrings under {root}; this Python has no standard library sources "
                           "(pass --corpus FILE to use your own text)")
    return docs


DEMO_FILES = {"corpus.jsonl", "tokenizer", "data", "run"}


def is_demo_folder(folder: Path) -> bool:
    """Whether a folder holds what `lmforge demo` writes (and nothing else)."""
    return {p.name for p in Path(folder).iterdir()} <= DEMO_FILES


def demo(
    *,
    out: str = "lmforge-demo",
    corpus: str | None = None,
    steps: int = 1200,
    prompt: str = "Return the",
    fast: bool = False,
    overwrite: bool = False,
) -> dict:
    """Train a tokenizer and a small Llama-style model on the standard library's docstrings; print a sample and
    the validation perplexity.

    Args:
        out: folder for the corpus, tokenizer, data and run
        corpus: use this text/JSONL file or folder instead of the standard library's docstrings
        steps: training steps (1200 take about 3 minutes on 2 CPU cores)
        prompt: text to continue when sampling at the end
        fast: a tiny configuration that finishes in seconds (for tests)
        overwrite: replace an earlier demo in --out
    """
    from .. import evaluate
    from ..loading import load
    from ..data.prepare import prepare_corpus
    from ..tokenizer import train_tokenizer_files
    from ..train.options import TrainConfig
    from ..train.pretrain import pretrain

    start = time.time()
    root = lio.check_output(out, what="an lmforge demo", overwrite=overwrite, ours=is_demo_folder,
                            inputs=[corpus])
    root.mkdir(parents=True, exist_ok=True)
    if corpus is None:
        docs = stdlib_docstrings()
        if fast:
            docs = docs[:600]
        corpus_path = root / "corpus.jsonl"
        lio.write_text(corpus_path, "".join(json.dumps({"text": d}) + "\n" for d in docs))
        print(f"[1/5] corpus: {len(docs):,} docstrings of the Python standard library "
              f"({sum(map(len, docs)) / 1e6:.2f}M characters) -> {corpus_path}")
    else:
        corpus_path = Path(corpus)
        print(f"[1/5] corpus: {corpus_path}")
    vocab = 1024 if fast else 4096
    tok = train_tokenizer_files([str(corpus_path)], root / "tokenizer", kind="bpe", vocab_size=vocab, progress=False,
                                overwrite=True)
    print(f"[2/5] tokenizer: byte-level BPE, {tok.vocab_size:,} tokens -> {root / 'tokenizer'}")
    manifest = prepare_corpus([str(corpus_path)], tok, root / "data", overwrite=True, progress=False)
    splits = manifest["splits"]
    print(f"[3/5] data: {splits['train']['tokens']:,} train / {splits['val']['tokens']:,} val tokens "
          f"({manifest['stats']['chars_per_token']} characters per token) -> {root / 'data'}")
    size = (["n_layer=2", "d_model=64", "n_head=2", "n_kv_head=1"] if fast else
            ["n_layer=4", "d_model=192", "n_head=6", "n_kv_head=2"])
    size += ["tie_embeddings=true", "dropout=0.0"]
    train = TrainConfig(max_steps=20 if fast else steps, batch_size=8 if fast else 16, context=64 if fast else 128,
                        lr=2e-3, min_lr=2e-4, warmup_steps=5 if fast else 100, weight_decay=0.1, beta2=0.99,
                        eval_every=0, eval_batches=0, save_every=0, log_every=5 if fast else 20, seed=1337)
    print(f"[4/5] pretraining a {size[1].split('=')[1]}-wide, {size[0].split('=')[1]}-layer Llama-style decoder "
          f"(RoPE, RMSNorm, SwiGLU, grouped-query attention) for {train.max_steps} steps")
    summary = pretrain(data=str(root / "data"), out=str(root / "run"), model="llama-tiny", set_=size, train=train,
                       overwrite=True)
    model = load(root / "run")
    ppl = evaluate.perplexity(model, str(root / "data"), "val")
    from ..generate import generate

    text = generate(model, prompt, max_new_tokens=60, do_sample=True, temperature=0.8, top_k=50, seed=0)
    print(f"[5/5] sample (temperature 0.8, top-k 50):\n\n{prompt}{text}\n")
    seconds = time.time() - start
    print(f"val perplexity {ppl['ppl']:.2f} (loss {ppl['loss']:.3f} nats/token on {ppl['tokens']:,} tokens)")
    print(f"checkpoint: {root / 'run' / 'best'}   loss plot: {root / 'run' / 'loss.png'}   "
          f"metrics: {root / 'run' / 'metrics.csv'}")
    print(f"total time {seconds:.0f}s. Next: lmforge sample {root / 'run'} \"{prompt}\"  |  "
          f"lmforge eval perplexity {root / 'run'} --data {root / 'data'}")
    return {"summary": summary, "perplexity": ppl, "sample": text, "seconds": seconds}
