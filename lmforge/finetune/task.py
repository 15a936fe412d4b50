"""What a fine-tuning task is, as types: its data (`TaskData`), what it adds to the training loop (`TaskParts`) and
the spec that ties them together (`TaskSpec`); its arguments are in `lmforge.finetune.args`.

A task module (classify, ner, seq2seq, sft) fills in a `TaskSpec` subclass: how to read its files, which texts train
a tokenizer for a preset, which labels its head predicts, and `setup`, which turns a built model and the data into
an objective, a dev metric and a final report. `lmforge.finetune.runs` runs every spec through the same skeleton:
load or build the model, swap the head, apply the method, train, report.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Sequence

from ..model import Transformer
from ..tokenizer import Tokenizer
from ..train.objectives import Objective
from .options import FinetuneConfig, TaskArgs
from .data import split_dev
from .objectives import Rows, TaskObjective, class_weight_tensor


@dataclass
class TaskData:
    """A task's training and dev items, where the dev items came from, and the files a resume must find unchanged."""

    train: list
    dev: list
    dev_source: str
    files: list[str]


@dataclass
class TaskContext:
    """What `TaskSpec.setup` works with: the built (or resumed) model, its tokenizer and labels, and the run."""

    model: Transformer
    tokenizer: Tokenizer
    data: TaskData
    args: TaskArgs
    train: FinetuneConfig
    notes: list[str]
    resumed: bool = False

    @property
    def labels(self) -> list[str]:
        return self.model.config.label_names

    @property
    def max_length(self) -> int:
        return min(self.train.max_length, self.model.config.context_length)


@dataclass
class TaskParts:
    """What a task adds to the one training loop."""

    objective: Objective
    finish: Callable[[Transformer, Path], dict[str, Any]]  # the final report on the best checkpoint
    evaluate: Callable[[Transformer], dict[str, Any]] | None = None  # dev metric: {"metric": name, "value": x, ...}
    higher_is_better: bool = True
    test: Callable[[Transformer, str], tuple[dict[str, Any], str]] | None = None  # --test FILE: (report, headline)


class TaskSpec:
    """One fine-tuning task. Subclasses set the class attributes and implement `read`, `texts` and `setup` (and
    `labels` for a task with its own head)."""

    name: ClassVar[str]  # run.json's objective: classify | ner | seq2seq | sft
    command: ClassVar[str]  # "finetune classify"
    head: ClassVar[str] = "lm"  # the head the task trains: classify | tag, or lm (the model's own)
    noun: ClassVar[str] = ""  # what a model of this task is called in messages: "a classifier"
    title: ClassVar[str]  # what the task is called in messages: "classification"
    archs: ClassVar[tuple[str, ...]]  # the architectures it fine-tunes
    required: ClassVar[tuple[str, ...]] = ("model", "train", "out")
    example: ClassVar[str]  # an example command line after `lmforge <command>`
    lm_head_hint: ClassVar[str] = ""  # for lm tasks: what a model must be when it came with another head
    preset_objective: ClassVar[str] = "clm"  # the objective a preset is built for (its special token ids)
    args: ClassVar[type[TaskArgs]] = TaskArgs

    def read(self, args: TaskArgs, seed: int) -> TaskData:
        raise NotImplementedError

    def texts(self, data: TaskData) -> Iterable[str]:
        """The training texts, for a tokenizer trained from scratch (a preset without --tokenizer)."""
        raise NotImplementedError

    def labels(self, data: TaskData, args: TaskArgs) -> list[str]:
        """The labels a new head predicts (tasks with head classify | tag)."""
        raise NotImplementedError

    def base_model(self, args: TaskArgs, train: FinetuneConfig, notes: list[str]) -> Transformer | None:
        """The model to fine-tune when the task makes it itself (distillation's student from its teacher); None:
        --model is loaded or built as usual."""
        return None

    def head_options(self, data: TaskData, args: TaskArgs) -> dict[str, Any]:
        """More arguments of the head swap (`model.heads.with_head`) where a head needs them (relation types)."""
        return {}

    def setup(self, ctx: TaskContext) -> TaskParts:
        raise NotImplementedError


def data_files(args: TaskArgs, *names: str) -> list[str]:
    """The data files among `args`' fields `names` that were given (the first is the training file)."""
    return [getattr(args, n) for n in names if getattr(args, n, None)]


def train_and_dev(args: TaskArgs, read: Callable[[str], list], seed: int, files: list[str]) -> TaskData:
    """The training items and the dev items: from --dev, else a seeded --dev-fraction of the training file."""
    items = read(args.train)
    if args.dev:
        return TaskData(items, read(args.dev), args.dev, files)
    items, dev = split_dev(items, args.dev_fraction, seed)
    return TaskData(items, dev, f"{args.train} (held-out {args.dev_fraction:.0%})", files)


class LabelledTask(TaskSpec):
    """A task whose head predicts labels (a label per text, or a tag per word): rows encoded with label indices, the
    weighted cross-entropy of `TaskObjective`, the dev metric during training, the report on the best checkpoint and
    on --test. Subclasses say how items are read, encoded, checked and scored."""

    item: ClassVar[str]  # what a training item is called in notes: "text", "sentence"
    items: ClassVar[str]  # ... in the summary line: "examples", "sentences"
    label_word: ClassVar[str] = "labels"

    def read_file(self, path: str, args: TaskArgs) -> list:
        raise NotImplementedError

    def check_known(self, items: list, labels: Sequence[str], path: str) -> None:
        """A one-line error when `items` (from `path`) carry a label the model does not know."""
        raise NotImplementedError

    def encode(self, tokenizer: Tokenizer, items: list, *, max_length: int, stride: int | None,
               labels: Sequence[str], use_types: bool) -> tuple[Rows, int]:
        """Rows with label indices, and how many items did not fit in --max-length."""
        raise NotImplementedError

    def label_ids(self, rows: Rows) -> Sequence[int]:
        """Every label index the loss sees (for class weights)."""
        return rows.labels

    def dev_metric(self, model: Transformer, rows: Rows, items: list, batch_size: int, args: TaskArgs
                   ) -> dict[str, Any]:
        raise NotImplementedError

    def score(self, model: Transformer, items: list, *, max_length: int, stride: int | None, batch_size: int
              ) -> dict[str, Any]:
        raise NotImplementedError

    def report(self, report: dict[str, Any], split: str, labels: Sequence[str], out: Path | None) -> str:
        """Print (and plot, for dev) a report; returns its headline."""
        raise NotImplementedError

    def read(self, args: TaskArgs, seed: int) -> TaskData:
        return train_and_dev(args, lambda path: self.read_file(path, args), seed,
                             data_files(args, "train", "dev", "word_vectors"))

    def setup(self, ctx: TaskContext) -> TaskParts:
        args, train, labels = ctx.args, ctx.train, ctx.labels
        items, dev = ctx.data.train, ctx.data.dev
        self.check_known(dev, labels, args.dev or args.train)
        stride, batch_size = args.stride, train.batch_size * 2
        encode = functools.partial(self.encode, ctx.tokenizer, max_length=ctx.max_length, stride=stride,
                                   labels=labels, use_types=ctx.model.config.type_vocab_size > 0)
        (train_rows, cut), (dev_rows, _) = encode(items), encode(dev)
        if cut:
            ctx.notes.append(f"{cut:,} training {self.item}(s) are longer than --max-length={ctx.max_length} tokens "
                             f"and were {'cut into windows' if stride is not None else 'truncated (use --stride for windows)'}")
        ctx.notes.append(f"{self.name}: {len(items):,} training and {len(dev):,} dev {self.items} "
                         f"({ctx.data.dev_source}); {self.label_word}: {', '.join(labels)}")
        weights = class_weight_tensor(args.class_weights, self.label_ids(train_rows), len(labels))
        objective = TaskObjective(self.name, train_rows, dev_rows, ctx.model.config.pad_id, train.seed,
                                  train.batch_size, weights, train.label_smoothing)
        score = functools.partial(self.score, max_length=ctx.max_length, stride=stride, batch_size=batch_size)

        def evaluate(net: Transformer) -> dict[str, Any]:
            return self.dev_metric(net, dev_rows, dev, batch_size, args)

        def finish(best: Transformer, out: Path) -> dict[str, Any]:
            report = score(best, dev)
            return {"dev": report, "headline": self.report(report, "dev", labels, out)}

        def test(best: Transformer, path: str) -> tuple[dict[str, Any], str]:
            items = self.read_file(path, args)
            self.check_known(items, labels, path)
            report = score(best, items)
            return report, self.report(report, "test", labels, None)

        return TaskParts(objective, finish, evaluate, test=test)


__all__ = ["TaskData", "TaskContext", "TaskParts", "TaskSpec", "LabelledTask", "data_files", "train_and_dev"]
