"""The run of a fine-tuning task, the same for every task: load or build the model, swap its head, apply the
method, train with the one loop (the task's dev metric choosing the best checkpoint and stopping early), then
report on the best checkpoint. The run folder is that of `lmforge pretrain` (`run.json`, `--resume`, the checks on
`--out`); a task is a `TaskSpec` (see `lmforge.finetune.task`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .. import io as lio
from ..checkpoint import save_adapter
from ..config import PRESETS, ModelConfig, parse_overrides
from ..convert.hub import hub_repo
from ..device import resolve_device
from ..errors import ConfigError, DataError, LmforgeError
from ..loading import load as load_checkpoint
from ..model import Transformer
from ..model.heads import check_arch, with_head
from ..model.lora import merge_lora
from ..model.meta import check_fits_in_memory
from ..model.trainable import apply_method, restore_method
from ..model.word_vectors import init_embeddings
from ..tokenizer import SPECIALS, Tokenizer, train_tokenizer
from ..train.logs import read_metrics
from ..train.runs import build_config, check_out_folder, clear_run, new_run, read_run, record_run, write_run
from ..train.distributed import setup_distributed
from ..train.trainer import Trainer
from .data import sha256_files
from .options import FinetuneConfig, MethodConfig, ModelSource, TaskArgs
from .task import TaskContext, TaskParts, TaskSpec

EXTRA_FILES = ("report.json", "dev_metric.png", "confusion_dev.png", "adapter", "samples.jsonl", "predictions_dev.tsv",
               "predictions_dev.json", "predictions_dev.jsonl")


@dataclass
class Run:
    """A task ready for the loop: its spec, the model and tokenizer, what it adds to the loop, the method summary."""

    spec: TaskSpec
    model: Transformer
    tokenizer: Tokenizer
    parts: TaskParts
    method: dict[str, Any]
    files: list[str]
    notes: list[str]


# ---- models ----------------------------------------------------------------------------------------------

def is_model_path(spec: str) -> bool:
    return Path(spec).exists() or hub_repo(spec) is not None


def load_base(spec: str, *, tokenizer: str | None = None, texts: Callable[[], Iterable[str]] | None = None,
              vocab_size: int = 8000, set_: list[str] | None = None, objective: str = "clm",
              context: int | None = None, seed: int = 1337, notes: list[str] | None = None) -> Transformer:
    """A pretrained model (checkpoint or run folder, Hugging Face folder or hub id) in float32, or a new model of a
    preset with a tokenizer (given with --tokenizer, else trained on the task's training texts)."""
    overrides = parse_overrides(set_)
    if is_model_path(spec):
        model = load_checkpoint(spec, dtype="fp32")
        if tokenizer:
            model.tokenizer = Tokenizer.load(tokenizer)
        if model.tokenizer is None:
            raise ConfigError(f"{spec} has no tokenizer; give one with --tokenizer")
        allowed = {"dropout", "attn_dropout"}
        if set(overrides) - allowed:
            raise ConfigError(f"--set {', '.join(sorted(set(overrides) - allowed))}: a pretrained model keeps its "
                              "shape; only dropout and attn_dropout can change")
        if overrides:
            state = model.state_dict()
            tok = model.tokenizer
            model = Transformer(model.config.replace(**overrides))
            model.load_state_dict(state, strict=False)
            model.tokenizer = tok
        return model
    if spec not in PRESETS:
        raise ConfigError(f"--model {spec}: not a checkpoint or run folder, a Hugging Face folder or hub id, nor a "
                          f"preset ({', '.join(sorted(PRESETS))})")
    arch = PRESETS[spec]["arch"]
    if tokenizer:
        tok = Tokenizer.load(tokenizer)
    else:
        if texts is None:
            raise ConfigError(f"--model {spec} is a preset with no tokenizer; give --tokenizer")
        tok = train_tokenizer(texts(), "bpe", vocab_size, arch if arch in SPECIALS else "decoder", progress=False)
        if notes is not None:
            notes.append(f"trained a {tok.vocab_size:,}-token BPE tokenizer on the training texts")
    task_fields = sorted(set(overrides) & {"head", "num_labels", "labels", "pooling", "lora", "nsp_head"})
    if task_fields:
        raise ConfigError(f"--set {', '.join(task_fields)}: the task sets the head (labels from the training file, "
                          "--pooling, --method lora); drop these overrides")
    config = build_config(spec, overrides, tok, context, objective)
    check_fits_in_memory(config)
    torch.manual_seed(seed)
    model = Transformer(config)
    model.tokenizer = tok
    return model


def resumed_model(info: dict[str, Any], out: Path) -> tuple[Transformer, Tokenizer]:
    """The model of a run being resumed, as it was built (head, adapter, frozen parts); the loop loads its weights."""
    config = ModelConfig.from_dict(info["model_config"])
    model = Transformer(config)
    tokenizer = Tokenizer.load(out / "last")
    model.tokenizer = tokenizer
    restore_method(model, info["method"])
    return model, tokenizer



def build_run(spec: TaskSpec, args: TaskArgs, train: FinetuneConfig, resumed: dict | None) -> Run:
    """The skeleton every task runs through: its data, then the model (resumed as it was built, or loaded or built
    from a preset, checked against the task, given the task's head, its embeddings and its method), then the
    task's own setup."""
    data = spec.read(args, train.seed)
    notes: list[str] = []
    if resumed:
        model, tokenizer = resumed_model(resumed, Path(args.out))
        method = resumed["method"]
    else:
        labels = spec.labels(data, args) if spec.head != "lm" else None
        base = spec.base_model(args, train, notes)
        if base is None:
            base = load_base(args.model, tokenizer=args.tokenizer, texts=lambda: spec.texts(data),
                             vocab_size=args.vocab_size, set_=args.set_, objective=spec.preset_objective,
                             context=train.max_length, seed=train.seed, notes=notes)
        check_arch(base.config, spec.archs, spec.title, f"--model {args.model}")
        if labels is None:
            if base.config.head != "lm":
                raise ConfigError(f"--model {args.model} has a {base.config.head} head; {spec.lm_head_hint}")
            model = base
        else:
            model = with_head(base, spec.head, labels, pooling=getattr(args, "pooling", None), seed=train.seed,
                              **spec.head_options(data, args))
            del base
        tokenizer = model.tokenizer
        if getattr(args, "word_vectors", None):
            notes.append(init_embeddings(model, tokenizer, args.word_vectors)["note"])
        method = apply_method(model, **args.method)
    parts = spec.setup(TaskContext(model, tokenizer, data, args, train, notes, resumed=resumed is not None))
    return Run(spec, model, tokenizer, parts, method, data.files, notes)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Eval mode without gradients, in float32, so that a report, `lmforge eval` and `lmforge predict` give the
    same numbers whether a LoRA adapter is merged or not (the dev metric during training uses the loop's
    autocast: see `execute`)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was)


# ---- runs ------------------------------------------------------------------------------------------------

def run_task(spec: TaskSpec, params: dict[str, Any]) -> dict[str, Any]:
    """The body of every `lmforge finetune <task>` entry function: --resume, or a new run from its parameters."""
    params = dict(params)
    options = params.pop("options", None) or FinetuneConfig()
    for name, cls in (("options", FinetuneConfig), ("method", MethodConfig), ("source", ModelSource)):
        value = options if name == "options" else params.get(name)
        if value is not None and not isinstance(value, cls):
            raise ConfigError(f"{name}= takes a {cls.__name__} (lmforge.finetune.options.{cls.__name__}(...)); got "
                              f"{type(value).__name__}")
    if params.get("resume"):
        defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                    for f in dataclasses.fields(spec.args)} | {"method": MethodConfig(), "source": ModelSource()}
        given = [k for k, v in params.items() if k != "resume" and not _same(v, defaults.get(k))]
        if given:
            raise ConfigError(f"{', '.join('--' + k.rstrip('_').replace('_', '-') for k in given)} cannot be given with "
                              "--resume: the run continues with its own model, data and options (start a new run to "
                              "change them)")
        return resume(spec, params["resume"], options)
    missing = [k for k in spec.required if not params.get(k)]
    if missing:
        flags = ", ".join("--" + k.replace("_", "-") for k in spec.required)
        raise ConfigError(f"{spec.command} needs {flags} (or --resume RUN); missing "
                          f"{', '.join('--' + k.replace('_', '-') for k in missing)}; e.g. lmforge {spec.command} "
                          f"{spec.example}")
    return start(spec, spec.args.from_call(params), options)


def _same(value: Any, default: Any) -> bool:
    """Whether an entry's parameter was left as it was (an empty list or None counts as its default)."""
    if dataclasses.is_dataclass(value) and dataclasses.is_dataclass(default):
        return all(_same(getattr(value, f.name), getattr(default, f.name)) for f in dataclasses.fields(value))
    empty = (None, [], ())
    return value == default or (value in empty and default in empty)


def start(spec: TaskSpec, args: TaskArgs, train: FinetuneConfig) -> dict[str, Any]:
    """A new fine-tuning run in args.out."""
    if not args.out:
        raise LmforgeError(f"{spec.command} needs --out (the run folder), or --resume RUN")
    out = Path(args.out)
    dist = setup_distributed()
    if dist.main:
        check_out_folder(out, args.overwrite, spec.command)
    dist.barrier()
    torch.manual_seed(train.seed)
    run = build_run(spec, args, train, None)
    if dist.main:
        clear_run(out, EXTRA_FILES)  # everything above is checked: only now does an earlier run (--overwrite) go
    with new_run(out, EXTRA_FILES):
        if dist.main:
            write_run(out, spec.command, spec.name, run.files[0] if run.files else None, run.model.config, train,
                      args=args.to_dict(), data_sha256=sha256_files(run.files), method=run.method)
        dist.barrier()
        return execute(run, train, out, args, resume=False)


def resume(spec: TaskSpec, path: str, overrides: FinetuneConfig) -> dict[str, Any]:
    """Continue a killed or finished run exactly where its last checkpoint stopped."""
    folder = Path(path)
    info, train = read_run(folder, overrides, FinetuneConfig, command=spec.command)
    now = sha256_files([p for p in info.get("data_sha256", {}) if Path(p).exists()])
    for file, digest in info.get("data_sha256", {}).items():
        if file not in now:
            raise DataError(f"{file}, a data file of this run, is gone; restore it to resume")
        if now[file] != digest:
            raise DataError(f"{file} changed since the run started; restore the original to resume exactly")
    torch.manual_seed(train.seed)
    args = spec.args.from_dict(info["args"])
    return execute(build_run(spec, args, train, info), train, folder, args, resume=True,
                   ready=lambda: record_run(folder, info))


def execute(run: Run, train: FinetuneConfig, out: Path, args: TaskArgs, resume: bool,
            ready: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train, then write the adapter, plots and report of the best checkpoint."""
    parts = run.parts

    def on_eval(trainer: Trainer, result: dict) -> dict:
        with eval_mode(trainer.model), trainer.autocast():  # the dev metric during training: the loop's precision
            return parts.evaluate(trainer.model)

    trainer = Trainer(run.model, parts.objective, train, out, run.tokenizer, resume=resume,
                      on_eval=on_eval if parts.evaluate else None, higher_is_better=parts.higher_is_better)
    if ready is not None:  # everything is checked: a resume records its changed options now
        ready()
    name = run.spec.name
    if trainer.dist.main:
        m = run.method
        for note in run.notes:
            print(note, flush=True)
        print(f"{'resuming' if resume else 'fine-tuning'} {name}: {run.model.config.name or run.model.config.arch} "
              f"({m['total'] / 1e6:.2f}M parameters, {m['trainable']:,} trainable = {share(m['fraction'])}, "
              f"method {m['method']}) on {trainer.device} for {trainer.max_steps} steps of {trainer.samples_per_step} "
              f"examples -> {out}", flush=True)
    summary = trainer.fit()
    if not trainer.dist.main:
        return summary
    best = load_checkpoint(out)
    if best.config.lora:
        save_adapter(best, out / "adapter", base=args.model)
    plot_dev_metric(out / "metrics.jsonl", out / "dev_metric.png", out.name)
    report = parts.finish(best, out)
    test = getattr(args, "test", None)  # the tasks with a --test option
    if test and parts.test is not None:
        report["test"], headline = parts.test(best, test)
        report["headline"] = f"{report.get('headline', '')}; {headline}"
    report = {"task": name, "best_step": summary["best_step"], "steps": summary["steps"],
              "seconds": summary["seconds"], "method": run.method, **report}
    lio.write_json(out / "report.json", report)
    what = report.get("headline") or ""
    print(f"done: {summary['steps']} steps in {summary['seconds']:.0f}s; best checkpoint (step {summary['best_step']}) "
          f"in {out}/best{'; adapter in ' + str(out / 'adapter') if best.config.lora else ''}; {what}", flush=True)
    keep = ("steps", "max_steps", "seconds", "tok_per_s", "best_step", "best_val", "stopped_early", "out")
    return {**{k: summary[k] for k in keep if k in summary}, "dev_loss": summary.get("val_loss"),
            **report}


def share(fraction: float) -> str:
    """A fraction as a percentage with the digits that matter (100.00%, 1.45%, 0.0034%)."""
    return f"{100 * fraction:.2f}%" if fraction >= 0.001 else f"{100 * fraction:.2g}%"


def plot_dev_metric(metrics: Path, png: Path, title: str) -> Path | None:
    """The dev metric against steps (when the task has one besides the loss)."""
    rows = [r for r in read_metrics(metrics) if r.get("split") == "val" and isinstance(r.get("value"), (int, float))]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot([r["step"] for r in rows], [r["value"] for r in rows], "o-", color="tab:green", markersize=3)
    best = max(rows, key=lambda r: r["value"])
    ax.annotate(f"{best['value']:.4f}", (best["step"], best["value"]), textcoords="offset points", xytext=(0, 8),
                ha="center", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel(f"dev {rows[-1].get('metric', 'metric')}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return lio.save_figure(fig, png)


def load_for_inference(checkpoint: str, device: str = "auto", task: TaskSpec | None = None,
                       verb: str | None = None) -> Transformer:
    """A fine-tuned model ready to predict: best checkpoint of a run, LoRA merged into the weights. With `task`, a
    model without that task's head is a one-line error naming the command that makes one (and `verb`, the command
    that was run: `eval <task>` unless given)."""
    model = load_checkpoint(checkpoint, device=resolve_device(device), dtype="fp32")
    if task is not None and model.config.head != task.head:
        raise ConfigError(f"{checkpoint} has a {model.config.head} head, not {task.noun}; {verb or 'eval ' + task.name} "
                          f"needs a model fine-tuned with `lmforge {task.command}`")
    if model.config.lora:
        tokenizer = model.tokenizer
        model = merge_lora(model)
        model.tokenizer = tokenizer
    return model.eval()


__all__ = ["FinetuneConfig", "MethodConfig", "ModelSource", "Run", "run_task", "build_run", "load_base",
           "resumed_model", "start", "resume", "execute", "eval_mode", "load_for_inference",
           "plot_dev_metric", "share", "is_model_path"]
