"""`lmforge finetune classify`: sequence classification of single texts or text pairs.

The model gets a classification head (pooling cls | mean | last; BERT's pooler with cls where the checkpoint has
one); labels are discovered in the training file and stored, by name, in the model's config. Long texts are
truncated to --max-length, or with --stride cut into overlapping windows whose logits are averaged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer as HFTokenizer

from .. import metrics
from ..errors import ConfigError, DataError
from ..model import Transformer
from ..tokenizer import Tokenizer
from .data import Example, check_known_labels, discover_labels, read_examples
from .objectives import Rows, collate, sorted_chunks, task_logits
from .args import ClassifyArgs, finetune_classify
from .runs import eval_mode
from .task import LabelledTask, TaskData



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


class ClassifyTask(LabelledTask):
    name, command, head, noun, title = "classify", "finetune classify", "classify", "a classifier", "classification"
    archs = ("encoder", "decoder")
    example = "--model ./minilm --train train.tsv --dev dev.tsv --out runs/clf"
    args = ClassifyArgs
    item, items = "text", "examples"
    encode, score = staticmethod(encode_examples), staticmethod(score)

    def read_file(self, path: str, args: ClassifyArgs) -> list[Example]:
        return read_examples(path, args.columns, args.label_column)

    def texts(self, data: TaskData) -> Iterable[str]:
        return (t for ex in data.train for t in ex.texts)

    def labels(self, data: TaskData, args: ClassifyArgs) -> list[str]:
        # every label of the training file, also one that the held-out dev split took all of (without --dev)
        labels = discover_labels([ex.label for ex in (data.train if args.dev else data.train + data.dev)])
        if len(labels) < 2:
            raise DataError(f"{args.train}: only one label ({labels[0]!r}) in column {args.label_column!r}; "
                            "classification needs at least two")
        return labels

    def check_known(self, items: list[Example], labels: Sequence[str], path: str) -> None:
        check_known_labels(items, labels, path)

    def dev_metric(self, model: Transformer, rows: Rows, items: list[Example], batch_size: int,
                   args: ClassifyArgs) -> dict[str, Any]:
        labels = model.config.label_names
        pred = [labels[i] for i in example_logits(model, rows, len(items), batch_size).argmax(-1).tolist()]
        report = metrics.classification_report([ex.label for ex in items], pred, labels)
        return {"metric": args.metric, "value": report[args.metric], "accuracy": report["accuracy"],
                "macro_f1": report["macro_f1"]}

    def report(self, report: dict[str, Any], split: str, labels: Sequence[str], out: Path | None) -> str:
        if out is None:
            return f"{split} accuracy {report['accuracy']:.4f}"
        metrics.plot_confusion(report["confusion"], labels, out / f"confusion_{split}.png", f"{out.name}: {split}")
        print(metrics.format_classification(report), flush=True)
        return f"{split} accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}"


CLASSIFY = ClassifyTask()
__all__ = ["finetune_classify", "predict_labels", "score", "encode_examples", "example_logits", "CLASSIFY",
           "ClassifyArgs"]
