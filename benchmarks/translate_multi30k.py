"""Multi30k English->German with an encoder-decoder Transformer trained from scratch on 2 CPU cores within 60 minutes;
sacreBLEU on the 1,014 validation sentences.

    flock /tmp/lmforge-bench.lock python benchmarks/translate_multi30k.py [--shared ../shared/data] [--out bench-out/multi30k]
        [--minutes 30] [--steps 6000] [--beams 4]

One `lmforge finetune seq2seq --model transformer-small` run: a shared byte-level BPE tokenizer trained on the training
files inside the run, a 3+3-layer 256-wide pre-norm Transformer, batch 64 sentence pairs bucketed by length, label
smoothing 0.1, bf16 autocast; greedy BLEU on 300 validation sentences every --eval-every steps chooses the best
checkpoint, which then translates the whole validation set with beam search (--beams). The training budget is
--minutes; the table gives the wall-clock of each part.
Reference: Transformer-base, about 35 BLEU on Multi30k test2016 (rough, GPU, many epochs; ../shared/data/README.md).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from lmforge.finetune.runs import FinetuneConfig, ModelSource
from lmforge.finetune.seq2seq import finetune_seq2seq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import need, parser  # noqa: E402

REFERENCE = ("Transformer-base (published, test2016, rough)", 35.0)


def main() -> None:
    ap = parser(__doc__, "bench-out/multi30k")
    ap.add_argument("--minutes", type=float, default=30, help="training budget (minutes)")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=800)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=2000)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="model config override, e.g. d_model=384")
    args = ap.parse_args()
    data = need(Path(args.shared) / "multi30k")
    out = Path(args.out)
    start = time.perf_counter()
    result = finetune_seq2seq(
        model="transformer-small", train_src=str(data / "train.en.gz"), train_tgt=str(data / "train.de.gz"),
        dev_src=str(data / "val.en.gz"), dev_tgt=str(data / "val.de.gz"), out=str(out / "run"), overwrite=True,
        source=ModelSource(vocab_size=args.vocab_size, set_=[f"dropout={args.dropout}", *args.sets]), num_beams=args.beams, eval_samples=300,
        options=FinetuneConfig(max_steps=args.steps, max_time=args.minutes * 60, batch_size=args.batch_size,
                               lr=args.lr, min_lr=args.lr / 20, warmup_steps=args.warmup, beta2=0.98,
                               weight_decay=0.01, label_smoothing=0.1, max_length=64, eval_every=args.eval_every,
                               eval_batches=20, save_every=args.eval_every, progress=False))
    seconds = time.perf_counter() - start
    bleu = result["dev"]["bleu"]
    print(f"\nMulti30k en->de, validation (1,014 sentences), sacreBLEU {result['dev']['signature']}")
    print(f"{'model':58s} {'BLEU':>6s}")
    print(f"{'transformer-small from scratch, lmforge, ' + str(args.beams) + ' beams':58s} {bleu:6.2f}")
    print(f"{'reference: ' + REFERENCE[0]:58s} {REFERENCE[1]:6.1f}")
    print(f"training {result['seconds'] / 60:.1f} min ({result['steps']} steps, best at {result['best_step']}), "
          f"{seconds / 60:.1f} min end to end (tokenizer, training, BLEU evaluations, beam decoding)")
    print(f"target: BLEU >= 20 with <= 60 min of training: "
          f"{'met' if bleu >= 20 and result['seconds'] <= 3600 else 'NOT met'}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"bleu": bleu, "dev": result["dev"], "steps": result["steps"],
                                                  "best_step": result["best_step"], "train_seconds": result["seconds"],
                                                  "seconds": seconds, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
