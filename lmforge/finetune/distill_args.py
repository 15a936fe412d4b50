"""The arguments of `lmforge distill` (light: no torch), shared by the entry function (`finetune.distill`) and the
work (`finetune.distill_task`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ConfigError
from .args import ClassifyArgs
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


__all__ = ["DistillArgs", "StudentInit"]
