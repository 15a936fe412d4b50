"""SST-2 from scratch: a small encoder pretrained by lmforge with masked LM on the SST-2 training sentences only, then
fine-tuned as a classifier; beside it, the same classifier fine-tuned from random weights (no pretraining).

    flock /tmp/lmforge-bench.lock python benchmarks/sst2_scratch.py [--shared ../shared/data] [--out bench-out/sst2-scratch]
        [--mlm-minutes 15] [--clf-minutes 8]

1. `lmforge tokenizer train`: an 8,000-token byte-level BPE (encoder specials) on the 67,349 training sentences;
2. `lmforge prepare`: one document per sentence (1% held out);
3. `lmforge pretrain --model bert-mini`: 4 layers, 256 wide, pre-norm, context 64, masked LM (15%, 80/10/10);
4. `lmforge finetune classify --model <the MLM run>` with cls pooling, and the same from a random initialisation.
References: published from-scratch CNN/BiLSTM dev accuracies of about 0.82-0.87 (see ../shared/data/README.md).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

from lmforge.data.prepare import prepare_corpus
from lmforge.finetune.classify import finetune_classify
from lmforge.finetune.runs import FinetuneConfig, ModelSource
from lmforge.tokenizer import train_tokenizer
from lmforge.train.options import TrainConfig
from lmforge.train.pretrain import pretrain

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import need, parser  # noqa: E402

SHAPE = ["n_layer=4", "d_model=256", "n_head=4", "d_ff=1024", "norm_position=pre", "dropout=0.1",
         "context_length=64"]


def sentences(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r[0], r[1].strip()) for r in rows[1:]]


def main() -> None:
    ap = parser(__doc__, "bench-out/sst2-scratch")
    ap.add_argument("--mlm-minutes", type=float, default=15)
    ap.add_argument("--mlm-steps", type=int, default=4000)
    ap.add_argument("--mlm-lr", type=float, default=1e-3)
    ap.add_argument("--clf-minutes", type=float, default=8)
    ap.add_argument("--clf-epochs", type=float, default=2.0)
    ap.add_argument("--clf-lr", type=float, default=1e-4)
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    data = need(Path(args.shared) / "sst2")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    start = time.perf_counter()
    texts = [t for _, t in sentences(data / "train.tsv")]
    (out / "sentences.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    tok = train_tokenizer(texts, "bpe", 8000, "encoder", progress=False)
    tok.save(out / "tok")
    prepare_corpus([str(out / "sentences.txt")], tok, out / "data", doc_split="line", val_fraction=0.01,
                   overwrite=True, progress=False)
    timings["tokenizer + prepare"] = time.perf_counter() - start

    start = time.perf_counter()
    mlm = pretrain(data=str(out / "data"), out=str(out / "mlm"), model="bert-mini", set_=SHAPE, overwrite=True,
                   train=TrainConfig(max_steps=args.mlm_steps, max_time=args.mlm_minutes * 60, batch_size=64,
                                     context=64, lr=args.mlm_lr, min_lr=args.mlm_lr / 10, warmup_steps=300, beta2=0.99,
                                     weight_decay=0.01, eval_every=1000, eval_batches=20, save_every=1000,
                                     log_every=50, progress=False))
    timings["masked-LM pretraining"] = time.perf_counter() - start

    def classify(name: str, model: str, extra: dict) -> dict:
        begin = time.perf_counter()
        result = finetune_classify(
            model=model, train=str(data / "train.tsv"), dev=str(data / "dev.tsv"), out=str(out / name),
            text_column="text_a", label_column="label", pooling="cls", overwrite=True, **extra,
            options=FinetuneConfig(epochs=args.clf_epochs, max_time=args.clf_minutes * 60, batch_size=32,
                                   lr=args.clf_lr, warmup_steps=200, eval_every=500, eval_batches=0, save_every=500,
                                   max_length=64, progress=False))
        timings[f"fine-tuning ({name})"] = time.perf_counter() - begin
        return result

    pretrained = classify("clf-pretrained", str(out / "mlm"), {})
    baseline = None if args.skip_baseline else classify(
        "clf-random-init", "bert-mini", {"source": ModelSource(tokenizer=str(out / "tok"), set_=SHAPE)})

    print("\nSST-2 dev accuracy (872 sentences), 4-layer 256-wide encoder, no outside data")
    print(f"{'model':50s} {'accuracy':>9s} {'macro-F1':>9s} {'steps':>6s}")
    print(f"{'MLM-pretrained on SST-2 train, then fine-tuned':50s} {pretrained['dev']['accuracy']:9.4f} "
          f"{pretrained['dev']['macro_f1']:9.4f} {pretrained['steps']:6d}")
    if baseline:
        print(f"{'random init, fine-tuned (baseline, same run)':50s} {baseline['dev']['accuracy']:9.4f} "
              f"{baseline['dev']['macro_f1']:9.4f} {baseline['steps']:6d}")
    print(f"{'reference: CNN / BiLSTM from scratch (published)':50s} {'0.82-0.87':>9s}")
    print(f"masked LM: {mlm['steps']} steps, val loss {mlm['val_loss']:.3f} (ppl {mlm['val_ppl']:.1f})")
    for k, v in timings.items():
        print(f"  {k}: {v / 60:.1f} min")
    print(f"target: >= 0.80: {'met' if pretrained['dev']['accuracy'] >= 0.80 else 'NOT met'}")
    (out / "results.json").write_text(json.dumps({
        "pretrained": {"accuracy": pretrained["dev"]["accuracy"], "macro_f1": pretrained["dev"]["macro_f1"],
                       "steps": pretrained["steps"]},
        "random_init": baseline and {"accuracy": baseline["dev"]["accuracy"], "macro_f1": baseline["dev"]["macro_f1"],
                                     "steps": baseline["steps"]},
        "mlm": {"steps": mlm["steps"], "val_loss": mlm["val_loss"]}, "timings_s": timings}, indent=2))


if __name__ == "__main__":
    main()
