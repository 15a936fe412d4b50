"""The pretraining recipe for the other two objectives: masked LM (encoder) and seq2seq (encoder-decoder).

    python benchmarks/pretrain_objectives.py [--shared ../shared/data] [--out bench-out/objectives] [--steps 2000]

- masked LM: a 4-layer, 128-wide post-norm BERT (bert-mini with those sizes) on Tiny Shakespeare with a 2,000-token
  WordPiece tokenizer, 15% masking (80/10/10), context 64, batch 12; once without and once with next-sentence
  prediction;
- seq2seq: a 3+3-layer, 256-wide Transformer (transformer-small) on Multi30k en->de (29,000 pairs, a shared
  4,000-token BPE), batch 32;
both with the Tiny Shakespeare schedule (lr 1e-3, cosine to 1e-4, 100 warm-up steps, beta2 0.99). References:
ln(vocab), the loss of a uniform guess, and the unigram entropy of the predicted tokens, the loss of the best
model that ignores context; the table shows the loss at the first step, at the end of training (mean of the
last logged steps) and on the whole validation split (masked-LM loss only, also for the NSP run).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

import lmforge
from lmforge.data.prepare import prepare_corpus, prepare_pairs
from lmforge.evaluate import perplexity
from lmforge.tokenizer import train_tokenizer, train_tokenizer_files
from lmforge.train.logs import read_metrics
from lmforge.train.options import TrainConfig
from lmforge.train.pretrain import pretrain

SCHEDULE = dict(lr=1e-3, min_lr=1e-4, warmup_steps=100, beta2=0.99, weight_decay=0.1, eval_every=500,
                eval_batches=20, save_every=0, log_every=50, seed=1337, progress=False)


def run(name: str, data: Path, out: Path, model: str, sets: list[str], **train) -> dict:
    start = time.perf_counter()
    summary = pretrain(data=str(data), out=str(out), model=model, set_=sets, train=TrainConfig(**SCHEDULE, **train),
                       overwrite=True)
    seconds = time.perf_counter() - start
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r.get("split") == "train"]
    net = lmforge.load(out / "last")
    val = perplexity(net, str(data), "val", batch_size=32)
    dtype = np.dtype(json.loads((data / "manifest.json").read_text())["dtype"])
    targets = np.memmap(data / ("train.tgt.bin" if (data / "train.tgt.bin").exists() else "train.bin"), dtype=dtype)
    p = np.bincount(targets).astype(np.float64)
    p = p[p > 0] / p.sum()
    return {"run": name, "parameters": net.num_parameters(), "vocab": net.config.vocab_size,
            "unigram_loss": float(-(p * np.log(p)).sum()),
            "first_loss": rows[0]["loss"], "last_loss": sum(r["loss"] for r in rows[-4:]) / 4,
            "val_loss": val["loss"], "val_ppl": val["ppl"], "tok_per_s": summary["tok_per_s"], "seconds": seconds,
            "uniform_loss": math.log(net.config.vocab_size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    ap.add_argument("--out", default="bench-out/objectives")
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    shakespeare = shared / "tinyshakespeare/input.txt"
    multi30k = shared / "multi30k"
    for path in (shakespeare, multi30k / "train.en.gz"):
        if not path.exists():
            sys.exit(f"{path} not found; pass --shared pointing at the shared data folder")
    out.mkdir(parents=True, exist_ok=True)
    results = []

    tok = train_tokenizer_files([str(shakespeare)], out / "tok-enc", kind="wordpiece", vocab_size=2000,
                                arch="encoder", progress=False)
    prepare_corpus([str(shakespeare)], tok, out / "data-enc", overwrite=True, progress=False)
    bert = ["n_layer=4", "d_model=128", "n_head=4", "dropout=0.0"]
    for name, extra in (("masked LM", {}), ("masked LM + NSP", {"nsp": True})):
        print(f"{name} ...", flush=True)
        results.append(run(name, out / "data-enc", out / name.replace(" + ", "-").replace(" ", "-"), "bert-mini",
                           bert, max_steps=args.steps, batch_size=12, context=64, **extra))

    def pairs(split: str):
        with gzip.open(multi30k / f"{split}.en.gz", "rt") as en, gzip.open(multi30k / f"{split}.de.gz", "rt") as de:
            return [(a.strip(), b.strip()) for a, b in zip(en, de)]

    train_pairs = pairs("train")
    tok = train_tokenizer([t for pair in train_pairs for t in pair], "bpe", 4000, "encoder_decoder", progress=False)
    tok.save(out / "tok-mt")
    prepare_pairs(iter(train_pairs), tok, out / "data-mt", val_fraction=0.035, overwrite=True, progress=False)
    print("seq2seq ...", flush=True)
    results.append(run("seq2seq (en->de)", out / "data-mt", out / "seq2seq", "transformer-small", ["dropout=0.1"],
                       max_steps=args.steps, batch_size=32, context=64, label_smoothing=0.0))

    print(f"\n{'run':18s} {'params':>9s} {'vocab':>6s} {'ln(vocab)':>9s} {'unigram':>8s} {'loss@1':>7s} {'loss@end':>9s} "
          f"{'val loss':>9s} {'val ppl':>8s} {'tok/s':>7s} {'s':>5s}")
    for r in results:
        print(f"{r['run']:18s} {r['parameters']:9,d} {r['vocab']:6d} {r['uniform_loss']:9.3f} {r['unigram_loss']:8.3f} "
              f"{r['first_loss']:7.3f} {r['last_loss']:9.3f} {r['val_loss']:9.3f} {r['val_ppl']:8.2f} "
              f"{r['tok_per_s']:7.0f} {r['seconds']:5.0f}")
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
