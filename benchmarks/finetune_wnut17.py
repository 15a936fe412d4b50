"""WNUT-17 emerging-entity NER with the pretrained all-MiniLM-L6-v2: entity-level F1 on dev (CoNLL semantics, as
seqeval), within a 30-minute budget on 2 CPU cores, beside bert-large-cased's published 58.9.

    flock /tmp/lmforge-bench.lock python benchmarks/finetune_wnut17.py [--shared ../shared/data] [--out bench-out/wnut17]
        [--budget 1800]

One `lmforge finetune ner` run: labels on the first sub-token of each word, full fine-tuning, batch 16, evaluation
(entity F1 on the whole dev set) every --eval-every steps, the best checkpoint's dev report printed by type.
Note: all-MiniLM-L6-v2 is uncased, and in WNUT-17 capitalisation is a strong cue; bert-large-cased (335M) keeps it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from lmforge.finetune.ner import finetune_ner
from lmforge.finetune.runs import FinetuneConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import minilm, need, parser  # noqa: E402

REFERENCE = ("bert-large-cased, dev (Hugging Face examples, 335M parameters)", 0.589)


def main() -> None:
    ap = parser(__doc__, "bench-out/wnut17")
    ap.add_argument("--budget", type=float, default=1800, help="seconds, end to end")
    ap.add_argument("--reserve", type=float, default=120, help="seconds kept for loading and the final evaluation")
    ap.add_argument("--epochs", type=float, default=10)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=213)
    ap.add_argument("--class-weights", default="none")
    args = ap.parse_args()
    data = need(Path(args.shared) / "wnut17")
    out = Path(args.out)
    start = time.perf_counter()
    result = finetune_ner(model=str(minilm()), train=str(data / "train.conll"), dev=str(data / "dev.conll"),
                          out=str(out / "run"), overwrite=True, class_weights=args.class_weights,
                          options=FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                                 warmup_steps=200, eval_every=args.eval_every, eval_batches=0,
                                                 save_every=args.eval_every, max_length=128, progress=False,
                                                 max_time=args.budget - args.reserve))
    seconds = time.perf_counter() - start
    dev = result["dev"]
    print(f"\nWNUT-17 dev ({dev['sentences']} sentences, {dev['gold_entities']} entities), entity-level micro "
          "precision / recall / F1")
    print(f"{'model':74s} {'P':>6s} {'R':>6s} {'F1':>6s}")
    print(f"{'all-MiniLM-L6-v2 (22.7M, uncased), lmforge finetune ner':74s} {dev['precision']:6.3f} {dev['recall']:6.3f} "
          f"{dev['f1']:6.3f}")
    print(f"{'reference: ' + REFERENCE[0]:74s} {'':6s} {'':6s} {REFERENCE[1]:6.3f}")
    print(f"{result['steps']} steps (best at {result['best_step']}), {seconds / 60:.1f} min end to end; target F1 >= 0.40 "
          f"within {args.budget / 60:.0f} min: {'met' if dev['f1'] >= 0.40 and seconds <= args.budget else 'NOT met'}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"dev": dev, "steps": result["steps"], "best_step": result["best_step"],
                                                  "seconds": seconds, "lr": args.lr, "epochs": args.epochs}, indent=2))


if __name__ == "__main__":
    main()
