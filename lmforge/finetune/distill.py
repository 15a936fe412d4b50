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
from typing import Any

from ..errors import ConfigError
from .args import entry_function
from .distill_args import DistillArgs

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
