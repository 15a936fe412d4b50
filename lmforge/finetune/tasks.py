"""Every fine-tuning task, by name (run.json's objective) and by the head it trains."""

from __future__ import annotations

from .classify import CLASSIFY
from .ner import NER
from .qa import QA
from .relations import RELATIONS
from .seq2seq import SEQ2SEQ
from .sft import SFT
from .task import TaskSpec

TASKS: dict[str, TaskSpec] = {t.name: t for t in (CLASSIFY, NER, SEQ2SEQ, SFT, QA, RELATIONS)}


def task_of(head: str, objective: str | None = None) -> TaskSpec:
    """The task a model serves: the one its run trained (`objective`), else the one its head belongs to (a model
    with a language-model head and no run is taken as seq2seq: a source in, an output out)."""
    if objective in TASKS:
        return TASKS[objective]
    return next((t for t in TASKS.values() if t.head == head and head != "lm"), SEQ2SEQ)


__all__ = ["TASKS", "task_of"]
