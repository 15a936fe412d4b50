"""The work of `lmforge distill` (see `lmforge.finetune.distill`): the task-distillation spec (classification with a
teacher) and next-token distillation of a decoder on a prepared corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoint import resolve_checkpoint
from ..errors import ConfigError, LmforgeError
from ..loading import load as load_checkpoint
from ..model import Transformer
from ..train.distill import Distillation, student_from_teacher
from .classify import ClassifyTask
from .distill_args import DistillArgs
from .options import FinetuneConfig
from .runs import load_base
from .task import TaskContext, TaskParts

CORPUS_COMMAND = "distill"


def load_teacher(path: str | None, what: str = "--teacher") -> Transformer:
    if not path:
        raise ConfigError("distill needs --teacher (a fine-tuned classifier run, or a decoder checkpoint with --data)")
    teacher = load_checkpoint(path, dtype="fp32")
    for field in ("lora",):
        if getattr(teacher.config, field):
            from ..model.lora import merge_lora

            tokenizer = teacher.tokenizer
            teacher = merge_lora(teacher)
            teacher.tokenizer = tokenizer
    if teacher.tokenizer is None:
        raise ConfigError(f"{what} {path} has no tokenizer; the student reads the teacher's tokens")
    return teacher.eval()


def tokenizer_folder(path: str) -> str | None:
    """The folder holding the tokenizer.json of a checkpoint, run or Hugging Face folder (for a preset student)."""
    try:
        folder = resolve_checkpoint(path)
    except LmforgeError:
        folder = Path(path)
    return str(folder) if (Path(folder) / "tokenizer.json").exists() else None


def make_student(args: DistillArgs, teacher: Transformer, *, objective: str, context: int | None, seed: int,
                 notes: list[str]) -> Transformer:
    """The student: the teacher's every other layer, or a preset (with the teacher's tokenizer), or a checkpoint."""
    if args.student_init:
        student = student_from_teacher(teacher, args.student_init)
        notes.append(f"student: layers {', '.join(str(i) for i in range(0, teacher.config.n_layer, 2))} of the "
                     f"teacher's {teacher.config.n_layer} ({student.num_parameters() / 1e6:.2f}M parameters, teacher "
                     f"{teacher.num_parameters() / 1e6:.2f}M)")
        return student
    tokenizer = args.tokenizer or tokenizer_folder(args.teacher)
    student = load_base(args.student, tokenizer=tokenizer, set_=args.set_, objective=objective, context=context,
                        seed=seed, notes=notes)
    if student.tokenizer is None or student.tokenizer.sha256 != teacher.tokenizer.sha256:
        raise ConfigError(f"--student {args.student} does not use the teacher's tokenizer; the student reads the "
                          "teacher's tokens: use a preset (it takes the teacher's tokenizer) or a model of the same "
                          "tokenizer")
    return student


class DistillTask(ClassifyTask):
    """Classification with a teacher: the classify task, its objective wrapped in `Distillation`."""

    name, command = "distill", "finetune distill"
    required = ("teacher", "train", "out")
    example = "--teacher runs/clf --student-init every-other-layer --train train.tsv --dev dev.tsv --out runs/clf-small"
    args = DistillArgs

    def base_model(self, args: DistillArgs, train: FinetuneConfig, notes: list[str]) -> Transformer | None:
        teacher = load_teacher(args.teacher)
        return make_student(args, teacher, objective="mlm" if teacher.config.arch == "encoder" else "clm",
                            context=train.max_length, seed=train.seed, notes=notes)

    def setup(self, ctx: TaskContext) -> TaskParts:
        args: DistillArgs = ctx.args  # type: ignore[assignment]
        parts = super().setup(ctx)
        teacher = load_teacher(args.teacher)
        if teacher.config.head != "classify":
            raise ConfigError(f"--teacher {args.teacher} has a {teacher.config.head} head; task distillation needs a "
                              "classifier (fine-tune one with `lmforge finetune classify`)")
        if teacher.tokenizer.sha256 != ctx.tokenizer.sha256:
            raise ConfigError("the student's tokenizer is not the teacher's; the teacher must read the student's batches")
        names = teacher.config.label_names
        missing = [label for label in ctx.labels if label not in names]
        if missing:
            raise ConfigError(f"the teacher does not know the label(s) {', '.join(missing)} of {args.train}; its labels "
                              f"are {', '.join(names)}")
        label_map = [names.index(label) for label in ctx.labels]
        objective = Distillation(parts.objective, teacher, temperature=args.temperature, alpha=args.alpha,
                                 cosine=args.cosine, label_map=label_map)
        ctx.notes.append(f"distilling from {args.teacher} ({teacher.num_parameters() / 1e6:.2f}M parameters): T="
                         f"{args.temperature:g}, alpha={args.alpha:g} soft / {1 - args.alpha:g} hard"
                         + (f", cosine {args.cosine:g}" if args.cosine else ""))
        return TaskParts(objective, parts.finish, parts.evaluate, parts.higher_is_better, parts.test)


DISTILL = DistillTask()


# ---- next-token distillation of a decoder on a corpus -------------------------------------------------------

def distill_corpus(params: dict[str, Any]) -> dict[str, Any]:
    """`lmforge distill --data`: a decoder student on a decoder teacher's next-token distributions, in a pretraining
    run folder (run.json, last/, best/, metrics, loss plot; --resume continues exactly)."""
    from ..config import ModelConfig
    from ..data.batches import PreparedData
    from ..data.prepare import check_tokenizer
    from ..model.meta import check_fits_in_memory
    from ..train.objectives import CausalLM
    from ..train.pretrain import _data_digest, _run
    from ..train.runs import check_out_folder, clear_run, new_run, read_run, record_run, write_run

    options = params.get("options") or FinetuneConfig()
    if not isinstance(options, FinetuneConfig):
        raise ConfigError(f"options= takes a FinetuneConfig; got {type(options).__name__}")
    if params.get("resume"):
        run = Path(params["resume"])
        info, train = read_run(run, options, FinetuneConfig, command=CORPUS_COMMAND)
        args = DistillArgs.from_dict(info["args"])
        prepared = PreparedData(info["data"])
        tokenizer = prepared.tokenizer()
        if tokenizer.sha256 != info["tokenizer_sha256"] or _data_digest(prepared) != info.get("data_sha256"):
            raise LmforgeError(f"{info['data']} changed since the run started; restore it to resume exactly")
        teacher = load_teacher(args.teacher)
        net = Transformer(ModelConfig.from_dict(info["model_config"]))
        objective = _corpus_objective(prepared, teacher, args, train, net.config.context_length, CausalLM)
        return _run(net, objective, train, run, tokenizer, resume=True, ready=lambda: record_run(run, info))
    args = DistillArgs.from_call({k: v for k, v in params.items() if k not in ("options",)})
    if not args.out:
        raise ConfigError("distill --data needs --out (the run folder)")
    if args.train or args.dev:
        raise ConfigError("--data (next-token distillation on a corpus) and --train/--dev (task distillation) are two "
                          "modes; give one")
    out = Path(args.out)
    check_out_folder(out, args.overwrite, CORPUS_COMMAND)
    torch.manual_seed(options.seed)
    teacher = load_teacher(args.teacher)
    if teacher.config.arch != "decoder" or teacher.config.head != "lm":
        raise ConfigError(f"--data distils next-token predictions: the teacher must be a decoder language model; "
                          f"{args.teacher} is {'a' if teacher.config.arch[0] not in 'aeiou' else 'an'} "
                          f"{teacher.config.arch} with a {teacher.config.head} head")
    prepared = PreparedData(args.data)
    tokenizer = prepared.tokenizer()
    check_tokenizer(prepared.manifest, teacher.tokenizer, args.data, args.teacher)
    notes: list[str] = []
    student = make_student(args, teacher, objective="clm", context=options.context, seed=options.seed, notes=notes)
    if student.config.arch != "decoder":
        raise ConfigError(f"--student {args.student} is not a decoder; next-token distillation trains a decoder")
    check_fits_in_memory(student.config)
    context = options.context or min(student.config.context_length, teacher.config.context_length)
    objective = _corpus_objective(prepared, teacher, args, options, context, CausalLM)
    for note in notes:
        print(note, flush=True)
    clear_run(out)
    with new_run(out):
        write_run(out, CORPUS_COMMAND, "distill-clm", str(Path(args.data).resolve()), student.config, options,
                  args=args.to_dict(), tokenizer_sha256=tokenizer.sha256, data_sha256=_data_digest(prepared))
        return _run(student, objective, options, out, tokenizer, resume=False)


def _corpus_objective(prepared, teacher: Transformer, args: DistillArgs, train: FinetuneConfig, context: int,
                      causal) -> Distillation:
    context = min(train.context or context, teacher.config.context_length)
    inner = causal(prepared.tokens("train"), prepared.tokens("val"), context, train.seed)
    return Distillation(inner, teacher, temperature=args.temperature, alpha=args.alpha, cosine=args.cosine)


__all__ = ["DISTILL", "DistillTask", "distill_corpus", "make_student", "load_teacher"]
