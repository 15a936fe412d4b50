"""The arguments of every fine-tuning command, as dataclasses, and the entry functions made from them.

This module imports nothing heavy (no torch): `lmforge finetune <task> --help`, `lmforge predict --help` and
`lmforge eval <x> --help` are built from it. A task's logic is in its own module (classify, ner, seq2seq, sft),
which the entry function imports when it runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from ..config import check_options
from ..errors import ConfigError
from .options import FinetuneConfig, MethodConfig, ModelSource, TaskArgs, option

Pooling = Literal["cls", "mean", "last"]
DEFAULT_TEMPLATE = "{source}\n"


# ---- the tasks' arguments ---------------------------------------------------------------------------

@dataclass
class ClassifyArgs(TaskArgs):
    train: str | None = option(None, "training file (.tsv, .csv or .jsonl) with a text column and a label column")
    dev: str | None = option(None, "dev file (default: a seeded --dev-fraction of the training file)")
    test: str | None = option(None, "test file scored with the best checkpoint at the end")
    text_column: str = option("text", "column of the text")
    text_pair_column: str | None = option(None, "column of the second text of a pair (e.g. the hypothesis of NLI)")
    label_column: str = option("label", "column of the label (labels are discovered in the training file)")
    pooling: Pooling | None = option(None, "how a sequence becomes one vector: cls (first token), mean, last (default: "
                                           "the model's; last for decoders)")
    class_weights: Literal["none", "balanced"] = option("none", "balanced weighs each class by n / (classes * count) "
                                                                "in the loss")
    stride: int | None = option(None, "cut long texts into --max-length windows overlapping by this many tokens "
                                      "(logits averaged)")
    metric: Literal["accuracy", "macro_f1"] = option("accuracy", "dev metric for the best checkpoint and early "
                                                                 "stopping (--patience)")
    word_vectors: str | None = option(None, "GloVe / word2vec text file to initialise the token embeddings (models "
                                            "from scratch)")

    @property
    def columns(self) -> list[str]:
        return [self.text_column] + ([self.text_pair_column] if self.text_pair_column else [])


@dataclass
class NerArgs(TaskArgs):
    train: str | None = option(None, "training CoNLL file")
    dev: str | None = option(None, "dev CoNLL file (default: a seeded --dev-fraction of the training sentences)")
    test: str | None = option(None, "test CoNLL file scored with the best checkpoint at the end")
    class_weights: Literal["none", "balanced"] = option("none", "balanced weighs each tag by n / (tags * count) in "
                                                                "the loss")
    stride: int | None = option(None, "cut long sentences into --max-length windows overlapping by this many tokens")
    word_vectors: str | None = option(None, "GloVe / word2vec text file to initialise the token embeddings (models "
                                            "from scratch)")


@dataclass
class Seq2SeqArgs(TaskArgs):
    model: str | None = option(None, "checkpoint or run folder, Hugging Face folder or hub id, or a preset "
                                     "(transformer-small, transformer-base, gpt-mini) to train from scratch")
    train_src: str | None = option(None, "training source file")
    train_tgt: str | None = option(None, "training target file, aligned line by line with --train-src")
    dev_src: str | None = option(None, "dev source file")
    dev_tgt: str | None = option(None, "dev target file (default for both: a seeded --dev-fraction of the training "
                                       "pairs)")
    prompt_template: str = option(DEFAULT_TEMPLATE, "decoder-only models: the prompt holding {source}; the target "
                                                    "follows it")
    metric: Literal["bleu", "loss"] = option("bleu", "dev metric for the best checkpoint and early stopping: BLEU "
                                                     "of greedy decoding, or the loss")
    eval_samples: int = option(200, "dev pairs decoded at each evaluation (0 = all)")
    num_beams: int = option(1, "beams for decoding the whole dev set with the best checkpoint at the end")
    dev_fraction: float = option(0.05, "share of the training pairs held out as dev when no dev files are given")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_beams < 1 or self.eval_samples < 0:
            raise ConfigError("--num-beams must be >= 1 and --eval-samples >= 0")


@dataclass
class SftArgs(TaskArgs):
    model: str | None = option(None, "decoder checkpoint or run folder, Hugging Face folder or hub id (or a preset, "
                                     "from scratch)")
    train: str | None = option(None, 'JSONL file of {"messages": [{"role": "user", "content": ...}, {"role": '
                                     '"assistant", ...}]}')
    dev: str | None = option(None, "dev JSONL file (default: a seeded --dev-fraction of the training conversations)")
    dev_fraction: float = option(0.05, "share of the training conversations held out as dev when --dev is not given")
    samples: int = option(8, "dev conversations answered by the best checkpoint at the end (samples.jsonl)")
    sample_tokens: int = option(64, "new tokens at most per sample reply")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples < 0 or self.sample_tokens < 1:
            raise ConfigError(f"--samples must be >= 0 and --sample-tokens >= 1 (got {self.samples}, "
                              f"{self.sample_tokens})")


@dataclass
class QaArgs(TaskArgs):
    train: str | None = option(None, "training file: SQuAD JSON (data / paragraphs / qas) or JSONL of {question, "
                                     "context, answers: [{text, answer_start}]}")
    dev: str | None = option(None, "dev file (default: --dev-titles, else a seeded --dev-fraction of the training "
                                   "questions)")
    test: str | None = option(None, "test file scored with the best checkpoint at the end")
    dev_titles: str | None = option(None, "hold out these articles of --train as dev (titles separated by |): a "
                                          "split by article, so no dev paragraph is seen in training")
    stride: int = option(64, "overlap in tokens between the windows of a long context")
    max_answer_tokens: int = option(30, "longest answer span, in tokens")
    eval_samples: int = option(300, "dev questions scored at each evaluation (0 = all; the final report uses all)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stride < 0 or self.max_answer_tokens < 1 or self.eval_samples < 0:
            raise ConfigError("--stride and --eval-samples must be >= 0 and --max-answer-tokens >= 1")


@dataclass
class RelationsArgs(TaskArgs):
    train: str | None = option(None, "training file: SpERT JSON, a list of {tokens, entities: [{type, start, end}], "
                                     "relations: [{type, head, tail}]} (CoNLL04, SciERC, ...)")
    dev: str | None = option(None, "dev file (default: a seeded --dev-fraction of the training sentences)")
    test: str | None = option(None, "test file scored with the best checkpoint at the end")
    relation_weight: float = option(1.0, "weight of the relation loss beside the entity-tagging loss")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.relation_weight > 0:
            raise ConfigError(f"--relation-weight={self.relation_weight} must be > 0")


# ---- inference options (predict, eval) --------------------------------------------------------------

@dataclass
class InferOptions:
    """How a fine-tuned model reads its inputs; defaults come from the training run."""

    max_length: int | None = field(default=None, metadata={"help": "tokens per input (default: the training run's)"})
    stride: int | None = field(default=None, metadata={"help": "windows over long inputs, overlapping by this many "
                                                                "tokens (default: the training run's)"})
    batch_size: int = field(default=64, metadata={"help": "inputs per forward pass"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})

    def __post_init__(self) -> None:
        check_options(self, {"max_length": 4, "stride": 0, "batch_size": 1})

    def resolved(self, info: dict[str, Any]) -> tuple[int, int | None]:
        """--max-length and --stride, from the run where not given."""
        return (training_option(info, "max_length", self.max_length, 128),
                training_option(info, "stride", self.stride, None))


def run_info(path: str | Path) -> dict[str, Any]:
    """run.json of a run folder, or of the run a checkpoint folder (best/, last/) belongs to; {} when none."""
    from ..checkpoint import read_run_info

    return read_run_info(path)


def training_option(info: dict[str, Any], name: str, given: Any, default: Any) -> Any:
    if given is not None:
        return given
    value = info.get("args", {}).get(name, info.get("train", {}).get(name))
    return default if value is None else value


@dataclass
class DecodeOptions:
    """How a seq2seq checkpoint decodes --src for eval bleu / eval rouge."""

    num_beams: int = field(default=1, metadata={"help": "beams of the beam search (1 = greedy)"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "new tokens at most per output"})
    batch_size: int = field(default=64, metadata={"help": "sources per batch"})
    save_outputs: str | None = field(default=None, metadata={"help": "write the decoded outputs to this file"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --save-outputs file"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})

    def __post_init__(self) -> None:
        check_options(self, {"num_beams": 1, "max_new_tokens": 1, "batch_size": 1})


# ---- entry functions -----------------------------------------------------------------------------------

def entry_function(args: type[TaskArgs], spec: str, name: str, summary: str) -> Callable[..., dict[str, Any]]:
    """The entry function of a task (`lmforge.finetune.<task>.finetune_<task>` and the `lmforge finetune <task>`
    command): keyword-only parameters made from the fields of the task's arguments (their types, defaults and help),
    then the method, model-source and training options; the docstring's Args section is the fields' help. One
    definition of a task's arguments serves the Python API, the command line and run.json. `spec` ("module:NAME")
    is imported when the function runs, so building the command line imports nothing heavy."""
    hints = typing.get_type_hints(args)
    visible = [f for f in dataclasses.fields(args) if not f.metadata.get("hidden")]
    params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                default=f.default_factory() if f.default_factory is not dataclasses.MISSING
                                else f.default) for f in visible]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=t | None)
               for n, t in (("method", MethodConfig), ("source", ModelSource), ("options", FinetuneConfig))]
    signature = inspect.Signature(params, return_annotation=dict[str, Any])
    module, _, attr = spec.partition(":")

    def entry(**kwargs: Any) -> dict[str, Any]:
        from .runs import run_task

        bound = signature.bind(**kwargs)
        bound.apply_defaults()
        return run_task(getattr(importlib.import_module(module), attr), bound.arguments)

    entry.__signature__ = signature  # type: ignore[attr-defined]
    entry.__annotations__ = {p.name: p.annotation for p in params} | {"return": dict[str, Any]}
    entry.__doc__ = f"{summary}\n\nArgs:\n" + "".join(f"    {f.name}: {f.metadata['help']}\n" for f in visible)
    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = module
    return entry


finetune_classify = entry_function(ClassifyArgs, "lmforge.finetune.classify:CLASSIFY", "finetune_classify",
                                   "Fine-tune a sequence classifier (single texts or pairs) on a CSV, TSV or JSONL file.")
finetune_ner = entry_function(NerArgs, "lmforge.finetune.ner:NER", "finetune_ner", "Fine-tune a token classifier (NER, "
                              "BIO tags) on CoNLL files (token<TAB>tag, blank line between sentences).")
finetune_seq2seq = entry_function(Seq2SeqArgs, "lmforge.finetune.seq2seq:SEQ2SEQ", "finetune_seq2seq",
                                  "Train or fine-tune a seq2seq model on aligned source/target files (one sentence per "
                                  "line, .gz allowed).")
finetune_qa = entry_function(QaArgs, "lmforge.finetune.qa:QA", "finetune_qa", "Fine-tune an extractive question "
                             "answering reader (answer spans, SQuAD format).")
finetune_relations = entry_function(RelationsArgs, "lmforge.finetune.relations:RELATIONS", "finetune_relations",
                                    "Fine-tune joint entity and relation extraction (entity tags + a relation "
                                    "classifier over entity pairs) on SpERT-format JSON such as CoNLL04.")
finetune_sft = entry_function(SftArgs, "lmforge.finetune.sft:SFT", "finetune_sft", "Supervised fine-tuning of a decoder "
                              "on chat conversations, with the loss on assistant turns only.")

__all__ = ["ClassifyArgs", "NerArgs", "QaArgs", "RelationsArgs", "finetune_qa", "finetune_relations",
           "Seq2SeqArgs", "SftArgs", "InferOptions", "DecodeOptions", "training_option", "run_info", "entry_function",
           "finetune_classify", "finetune_ner", "finetune_seq2seq", "finetune_sft", "DEFAULT_TEMPLATE", "Pooling"]
