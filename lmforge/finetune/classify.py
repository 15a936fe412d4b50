"""`lmforge finetune classify`: sequence classification of single texts or text pairs.

The model gets a classification head (pooling cls | mean | last; BERT's pooler with cls where the checkpoint has
one); labels are discovered in the training file and stored, by name, in the model's config. Long texts are
truncated to --max-length, or with --stride cut into overlapping windows whose logits are averaged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer as HFTokenizer

from .. import metrics
from ..errors import ConfigError, DataError
from ..model import Transformer
from ..tokenizer import Tokenizer
from .data import Example, check_known_labels, discover_labels, read_examples
from ..model.heads import check_arch, with_head
from ..model.word_vectors import init_embeddings
from .objectives import Rows, TaskObjective, class_weight_tensor, collate, sorted_chunks, task_logits
from .runs import (FinetuneConfig, MethodConfig, ModelSource, Task, adapt, base_model, command, eval_mode,
                   resumed_model, train_and_dev)

Pooling = Literal["cls", "mean", "last"]
COMMAND = "finetune classify"


def truncating_backend(tokenizer: Tokenizer, max_length: int, stride: int | None) -> HFTokenizer:
    """A copy of the tokenizer that truncates to max_length (keeping the overflow in windows with `stride`
    tokens of overlap)."""
    backend = HFTokenizer.from_str(tokenizer.backend.to_str())
    backend.no_padding()
    if stride is not None and not 0 <= stride < max_length // 2:
        raise ConfigError(f"--stride={stride} must be >= 0 and less than half of --max-length={max_length}")
    backend.enable_truncation(max_length, stride=stride or 0, strategy="longest_first")
    return backend


def encode_examples(tokenizer: Tokenizer, examples: Sequence[Example], *, max_length: int, stride: int | None,
                    labels: Sequence[str] | None, use_types: bool) -> tuple[Rows, int]:
    """Rows of token ids (with segment ids for pairs) and each row's example; also how many were truncated."""
    if stride is not None and any(len(ex.texts) > 1 for ex in examples):
        raise ConfigError("--stride (windows over long texts) works on single texts, not pairs; drop --stride "
                          "or --text-pair-column")
    backend = truncating_backend(tokenizer, max_length, stride)
    index = {label: i for i, label in enumerate(labels or [])}
    inputs = [ex.texts[0] if len(ex.texts) == 1 else (ex.texts[0], ex.texts[1]) for ex in examples]
    rows = Rows(types=[] if use_types else None)
    truncated = 0
    for i, (ex, enc) in enumerate(zip(examples, backend.encode_batch(inputs, add_special_tokens=True))):
        truncated += bool(enc.overflowing)
        for window in [enc] + (list(enc.overflowing) if stride is not None else []):
            rows.ids.append(np.asarray(window.ids, dtype=np.int64))
            if rows.types is not None:
                rows.types.append(np.asarray(window.type_ids, dtype=np.int64))
            rows.labels.append(index.get(ex.label, 0) if ex.label is not None else 0)
            rows.owner.append(i)
    return rows, truncated


def example_logits(model: Transformer, rows: Rows, n_examples: int, batch_size: int = 64) -> torch.Tensor:
    """(examples, labels) logits, averaged over the windows of each example."""
    pad = model.config.pad_id
    device = next(model.parameters()).device
    sums = torch.zeros(n_examples, model.config.num_labels)
    counts = torch.zeros(n_examples)
    owners = torch.tensor(rows.owner, dtype=torch.long)
    for chunk in sorted_chunks(rows.lengths, batch_size):
        batch = {k: v.to(device) for k, v in collate(rows, chunk, pad).items()}
        logits = task_logits(model, batch).float().cpu()
        sums.index_add_(0, owners[chunk], logits)
        counts.index_add_(0, owners[chunk], torch.ones(len(chunk)))
    return sums / counts.clamp(min=1)[:, None]


def predict_labels(model: Transformer, examples: Sequence[Example], *, max_length: int, stride: int | None = None,
                   batch_size: int = 64) -> tuple[list[str], torch.Tensor]:
    """Predicted label names and class probabilities of examples."""
    labels = model.config.label_names
    rows, _ = encode_examples(model.tokenizer, examples, max_length=max_length, stride=stride, labels=None,
                              use_types=model.config.type_vocab_size > 0)
    with eval_mode(model):
        probs = torch.softmax(example_logits(model, rows, len(examples), batch_size), dim=-1)
    return [labels[i] for i in probs.argmax(-1).tolist()], probs


def score(model: Transformer, examples: Sequence[Example], *, max_length: int, stride: int | None = None,
          batch_size: int = 64) -> dict[str, Any]:
    """The classification report of a model on labelled examples."""
    pred, _ = predict_labels(model, examples, max_length=max_length, stride=stride, batch_size=batch_size)
    labels = model.config.label_names
    return metrics.classification_report([ex.label for ex in examples], pred, labels)


def _columns(args: dict[str, Any]) -> list[str]:
    return [args["text_column"]] + ([args["text_pair_column"]] if args.get("text_pair_column") else [])


def build(args: dict[str, Any], train: FinetuneConfig, resumed: dict | None) -> Task:
    columns = _columns(args)
    examples, dev, dev_source = train_and_dev(args, lambda path: read_examples(path, columns, args["label_column"]),
                                              train.seed)
    notes: list[str] = []
    if resumed:
        model, tokenizer = resumed_model(resumed, Path(args["out"]))
        labels = model.config.labels
        method = resumed["method"]
    else:
        # every label of the training file, also one that the held-out dev split took all of (without --dev)
        labels = discover_labels([ex.label for ex in (examples if args.get("dev") else examples + dev)])
        if len(labels) < 2:
            raise DataError(f"{args['train']}: only one label ({labels[0]!r}) in column {args['label_column']!r}; "
                            "classification needs at least two")
        base = base_model(args, lambda: (t for ex in examples for t in ex.texts), train, notes)
        check_arch(base.config, ("encoder", "decoder"), "classification", f"--model {args['model']}")
        model = with_head(base, "classify", labels, pooling=args.get("pooling"), seed=train.seed)
        tokenizer = model.tokenizer
        del base
        if args.get("word_vectors"):
            notes.append(init_embeddings(model, tokenizer, args["word_vectors"])["note"])
        method = adapt(model, args)
    check_known_labels(dev, labels, args.get("dev") or args["train"])
    max_length = min(train.max_length, model.config.context_length)
    use_types = model.config.type_vocab_size > 0
    stride = args.get("stride")
    train_rows, cut = encode_examples(tokenizer, examples, max_length=max_length, stride=stride, labels=labels,
                                      use_types=use_types)
    dev_rows, _ = encode_examples(tokenizer, dev, max_length=max_length, stride=stride, labels=labels,
                                  use_types=use_types)
    if cut:
        notes.append(f"{cut:,} training text(s) are longer than --max-length={max_length} tokens and were "
                     f"{'cut into windows' if stride is not None else 'truncated (use --stride for windows)'}")
    notes.append(f"classify: {len(examples):,} training and {len(dev):,} dev examples ({dev_source}); labels: "
                 f"{', '.join(labels)}")
    pad = model.config.pad_id
    weights = class_weight_tensor(args["class_weights"], train_rows.labels, len(labels))
    objective = TaskObjective("classify", train_rows, dev_rows, pad, train.seed, train.batch_size, weights,
                              train.label_smoothing)
    metric = args["metric"]

    def evaluate(net: Transformer) -> dict[str, Any]:
        logits = example_logits(net, dev_rows, len(dev), train.batch_size * 2)
        pred = [labels[i] for i in logits.argmax(-1).tolist()]
        report = metrics.classification_report([ex.label for ex in dev], pred, labels)
        return {"metric": metric, "value": report[metric], "accuracy": report["accuracy"],
                "macro_f1": report["macro_f1"]}

    def finish(best: Transformer, out: Path) -> dict[str, Any]:
        report = score(best, dev, max_length=max_length, stride=stride, batch_size=train.batch_size * 2)
        metrics.plot_confusion(report["confusion"], labels, out / "confusion_dev.png", f"{out.name}: dev")
        print(metrics.format_classification(report), flush=True)
        return {"dev": report, "headline": f"dev accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}"}

    def test(best: Transformer, path: str) -> tuple[dict[str, Any], str]:
        examples = read_examples(path, columns, args["label_column"])
        check_known_labels(examples, labels, path)
        report = score(best, examples, max_length=max_length, stride=stride, batch_size=train.batch_size * 2)
        return report, f"test accuracy {report['accuracy']:.4f}"

    files = [args["train"]] + [p for p in (args.get("dev"), args.get("word_vectors")) if p]
    return Task("classify", model, tokenizer, objective, evaluate, True, finish, method, files, notes, test)


def finetune_classify(
    *,
    model: str | None = None,
    train: str | None = None,
    dev: str | None = None,
    test: str | None = None,
    out: str | None = None,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    pooling: Pooling | None = None,
    class_weights: Literal["none", "balanced"] = "none",
    stride: int | None = None,
    dev_fraction: float = 0.1,
    metric: Literal["accuracy", "macro_f1"] = "accuracy",
    word_vectors: str | None = None,
    resume: str | None = None,
    overwrite: bool = False,
    method: MethodConfig | None = None,
    source: ModelSource | None = None,
    options: FinetuneConfig | None = None,
) -> dict[str, Any]:
    """Fine-tune a sequence classifier (single texts or pairs) on a CSV, TSV or JSONL file.

    Args:
        model: checkpoint or run folder, Hugging Face folder or hub id, or a preset to train from scratch
        train: training file (.tsv, .csv or .jsonl) with a text column and a label column
        dev: dev file (default: a seeded --dev-fraction of the training file)
        test: test file scored with the best checkpoint at the end
        out: run folder
        text_column: column of the text
        text_pair_column: column of the second text of a pair (e.g. the hypothesis of NLI)
        label_column: column of the label (labels are discovered in the training file)
        pooling: how a sequence becomes one vector: cls (first token), mean, last (default: the model's; last for decoders)
        class_weights: balanced weighs each class by n / (classes * count) in the loss
        stride: cut long texts into --max-length windows overlapping by this many tokens (logits averaged)
        dev_fraction: share of the training file held out as dev when --dev is not given
        metric: dev metric for the best checkpoint and early stopping (--patience)
        word_vectors: GloVe / word2vec text file to initialise the token embeddings (models from scratch)
        resume: a run folder to continue exactly where it stopped
        overwrite: replace a run that already exists in --out
    """
    return command(COMMAND, locals(), build, ("model", "train", "out"),
                   "--model ./minilm --train train.tsv --dev dev.tsv --out runs/clf")


__all__ = ["finetune_classify", "predict_labels", "score", "encode_examples", "example_logits"]
