"""`lmforge distill`: knowledge distillation with the one training loop (the objective is
`lmforge.train.distill.Distillation`).

Two modes:
- task distillation (`--train`, `--dev`): a classifier student trained on a classifier teacher's soft targets and the
  hard labels, through the fine-tuning skeleton of `lmforge finetune classify` (its data, head, dev accuracy, best
  checkpoint, report, --resume);
- next-token distillation (`--data`, a prepared corpus): a decoder student trained on a decoder teacher's next-token
  distributions, in a run folder like `lmforge pretrain`'s (validation loss = the student's own cross-entropy).

The student is a preset (`--student bert-mini`, with the teacher's tokenizer), a checkpoint or run, or the teacher's
every other layer (`--student-init every-other-layer`, DistilBERT's initialisation). This module is light (no torch):
`lmforge distill --help` is built from it; the work is in `distill_task`.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from .args import ClassifyArgs, entry_function
from .options import _hidden, option

StudentInit = Literal["every-other-layer"]


@dataclass
class DistillArgs(ClassifyArgs):
    teacher: str | None = option(None, "the teacher: a fine-tuned classifier run (task distillation) or a decoder "
                                       "checkpoint (--data)")
    student: str | None = option(None, "the student: a preset (bert-mini, gpt-mini; it takes the teacher's tokenizer), "
                                       "or a checkpoint or run folder")
    student_init: StudentInit | None = option(None, "initialise the student from the teacher: every-other-layer (half "
                                                    "the depth, DistilBERT)")
    data: str | None = option(None, "a prepared data folder: next-token distillation of a decoder on its train "
                                    "split (instead of --train)")
    temperature: float = option(2.0, "softmax temperature of the soft targets (the soft loss is scaled by T^2)")
    alpha: float = option(0.5, "weight of the soft-target loss; 1 - alpha weighs the hard labels")
    cosine: float = option(0.0, "weight of the hidden-state cosine loss (DistilBERT's third term; same width only)")
    model: str | None = _hidden(lambda: None)  # the student, as the fine-tuning skeleton calls it

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("teacher", "student", "data"):  # run.json keeps absolute paths, so --resume works from anywhere
            value = getattr(self, name)
            if isinstance(value, str) and value and Path(value).exists():
                setattr(self, name, str(Path(value).resolve()))
        if self.student and self.student_init:
            raise ConfigError("give --student (a preset or checkpoint) or --student-init every-other-layer, not both")
        if self.student and not self.model:
            self.model = self.student
        if not self.model and self.student_init:
            self.model = f"{self.teacher} ({self.student_init})"


_task_entry = entry_function(DistillArgs, "lmforge.finetune.distill_task:DISTILL", "distill", "")


def distill(**kwargs: Any) -> dict[str, Any]:
    from .distill_task import distill_corpus

    bound = _task_entry.__signature__.bind(**kwargs)
    bound.apply_defaults()
    params = dict(bound.arguments)
    if params.get("data") or _corpus_run(params.get("resume")):
        return distill_corpus(params)
    if not params.get("resume") and not (params.get("student") or params.get("student_init")):
        raise ConfigError("distill needs a student: --student (a preset or checkpoint) or --student-init "
                          "every-other-layer")
    return _task_entry(**params)


def _corpus_run(resume: str | None) -> bool:
    if not resume:
        return False
    from .args import run_info

    return run_info(resume).get("command") == "distill"


distill.__signature__ = inspect.signature(_task_entry)  # type: ignore[attr-defined]
distill.__annotations__ = dict(_task_entry.__annotations__)
distill.__doc__ = ("Knowledge distillation: train a student on a teacher's soft targets (temperature T, scaled by "
                   "T^2) and the hard labels; a classifier on --train/--dev, or a decoder on a prepared corpus "
                   "(--data).\n\nArgs:\n" + "".join(
                       f"    {f.name}: {f.metadata['help']}\n" for f in dataclasses.fields(DistillArgs)
                       if not f.metadata.get("hidden")))

__all__ = ["distill", "DistillArgs"]
