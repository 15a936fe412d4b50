"""What every fine-tuning command shares: its options (`FinetuneConfig`), loading or building the model, the run
folder (`run.json`, `--resume`, the checks on `--out`, as `lmforge pretrain`), the one training loop with the
task's dev metric for early stopping and the best checkpoint, and the final report on the best checkpoint.

A task module supplies a builder `build(args, train, resumed) -> Task`; `start` and `resume` do the rest.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import torch

from .. import io as lio
from ..checkpoint import save_adapter
from ..device import resolve_device
from ..loading import load as load_checkpoint
from ..config import PRESETS, ModelConfig, parse_overrides
from ..errors import ConfigError, DataError, LmforgeError
from ..model import Transformer
from ..tokenizer import SPECIALS, Tokenizer, train_tokenizer
from ..train.objectives import Objective
from ..train.options import TrainConfig
from ..train.runs import build_config, check_out_folder, read_run, write_run
from ..train.trainer import Trainer, setup_distributed
from .data import sha256_files, split_dev
from ..model.lora import merge_lora
from ..model.trainable import apply_method, restore_method

EXTRA_FILES = ("report.json", "dev_metric.png", "confusion_dev.png", "adapter", "samples.jsonl", "predictions_dev.tsv")


@dataclass
class FinetuneConfig(TrainConfig):
    """The training options of `lmforge pretrain` with fine-tuning defaults, plus --max-length."""

    epochs: float | None = field(default=3.0, metadata={"help": "passes over the training data (used when "
                                                                  "--max-steps is not given)"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate (5e-5 suits pretrained models; use about "
                                                      "1e-3 for a model built from a preset)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on norms, biases or "
                                                                "position embeddings)"})
    beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    max_length: int = field(default=128, metadata={"help": "tokens per input; longer inputs are truncated (or cut "
                                                           "into windows with --stride)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_length < 4:
            raise ConfigError(f"--max-length={self.max_length} must be >= 4")


@dataclass
class MethodConfig:
    """What trains; the command line expands it into --method, --unfreeze-layers and the --lora-* options."""

    method: Literal["full", "frozen", "lora"] = field(default="full", metadata={
        "help": "full (every weight), frozen (the task head, plus --unfreeze-layers top blocks), lora (LoRA adapters "
                "on --lora-targets, plus the task head)"})
    unfreeze_layers: int = field(default=0, metadata={"help": "with frozen or lora, also train this many top blocks"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (the update is scaled by alpha / rank)"})
    lora_targets: str = field(default="q,v", metadata={"help": "comma-separated linear layers to adapt: q,k,v,o,gate,"
                                                                "up,down or full names (q_proj)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})


@dataclass
class ModelSource:
    """Where the model's tokenizer and shape come from when --model is a preset (trained from scratch)."""

    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder (for a preset, or to replace the "
                                                                   "checkpoint's)"})
    vocab_size: int = field(default=8000, metadata={"help": "vocabulary of the BPE tokenizer trained on the training "
                                                            "texts for a preset without --tokenizer"})
    set_: list[str] = field(default_factory=list, metadata={"help": "config override for a preset (--set n_layer=4), "
                                                                    "or dropout for a checkpoint"})


@dataclass
class Task:
    """One fine-tuning task, ready for the loop."""

    name: str
    model: Transformer
    tokenizer: Tokenizer
    objective: Objective
    evaluate: Callable[[Transformer], dict[str, Any]] | None  # dev metrics: {"metric": name, "value": x, ...}
    higher_is_better: bool
    finish: Callable[[Transformer, Path], dict[str, Any]]  # the final report on the best checkpoint
    method: dict[str, Any]
    data_files: list[str]
    notes: list[str] = field(default_factory=list)
    test: Callable[[Transformer, str], tuple[dict[str, Any], str]] | None = None  # --test FILE: (report, headline)


# ---- models ----------------------------------------------------------------------------------------------

def is_model_path(spec: str) -> bool:
    from ..convert.hub import looks_like_hub_id

    return Path(spec).exists() or (spec not in PRESETS and looks_like_hub_id(spec))


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
    config = build_config(spec, overrides, tok, context, objective)
    torch.manual_seed(seed)
    model = Transformer(config)
    model.tokenizer = tok
    return model


def base_model(args: dict[str, Any], texts: Callable[[], Iterable[str]], train: TrainConfig, notes: list[str],
               objective: str = "clm") -> Transformer:
    """`load_base` with the run's --model, --tokenizer, --vocab-size and --set."""
    return load_base(args["model"], tokenizer=args.get("tokenizer"), texts=texts, vocab_size=args["vocab_size"],
                     set_=args.get("set_"), objective=objective, context=train.max_length, seed=train.seed, notes=notes)


def adapt(model: Transformer, args: dict[str, Any]) -> dict[str, Any]:
    """Apply the run's --method (and LoRA options) to the model; returns the method summary for run.json."""
    return apply_method(model, **args["method"])


def train_and_dev(args: dict[str, Any], read: Callable[[str], list], seed: int) -> tuple[list, list, str]:
    """The training items and the dev items: from --dev, else a seeded --dev-fraction of the training file."""
    items = read(args["train"])
    if args.get("dev"):
        return items, read(args["dev"]), args["dev"]
    items, dev = split_dev(items, args["dev_fraction"], seed)
    return items, dev, f"{args['train']} (held-out {args['dev_fraction']:.0%})"


def command(name: str, params: dict[str, Any], build: Callable[[dict[str, Any], FinetuneConfig, dict | None], Task],
            required: Sequence[str], example: str) -> dict[str, Any]:
    """The body of every `lmforge finetune <task>` entry: --resume, or a new run from the entry's parameters
    (`MethodConfig` and `ModelSource` flattened into run.json's args)."""
    params = dict(params)
    options = params.pop("options", None) or FinetuneConfig()
    if params.get("resume"):
        return resume(name, params["resume"], options, build)
    missing = [k for k in required if not params.get(k)]
    if missing:
        flags = ", ".join("--" + k.replace("_", "-") for k in required)
        raise ConfigError(f"{name} needs {flags} (or --resume RUN); missing {', '.join('--' + k.replace('_', '-') for k in missing)}; "
                          f"e.g. lmforge {name} {example}")
    source = params.pop("source", None) or ModelSource()
    params["method"] = asdict(params.get("method") or MethodConfig())
    args = {**params, **asdict(source)}
    args["set_"] = list(args.get("set_") or [])
    return start(name, args, options, build)


def resumed_model(info: dict[str, Any], out: Path) -> tuple[Transformer, Tokenizer]:
    """The model of a run being resumed, as it was built (head, adapter, frozen parts); the loop loads its weights."""
    config = ModelConfig.from_dict(info["model_config"])
    model = Transformer(config)
    tokenizer = Tokenizer.load(out / "last")
    model.tokenizer = tokenizer
    restore_method(model, info["method"])
    return model, tokenizer


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

def start(command: str, args: dict[str, Any], train: FinetuneConfig,
          build: Callable[[dict[str, Any], FinetuneConfig, dict | None], Task]) -> dict[str, Any]:
    """A new fine-tuning run in args["out"]."""
    if not args.get("out"):
        raise LmforgeError(f"{command} needs --out (the run folder), or --resume RUN")
    out = Path(args["out"])
    dist = setup_distributed()
    if dist.main:
        check_out_folder(out, bool(args.get("overwrite")), extra=EXTRA_FILES)
    dist.barrier()
    torch.manual_seed(train.seed)
    task = build(args, train, None)
    out.mkdir(parents=True, exist_ok=True)
    if dist.main:
        write_run(out, command, task.name, task.data_files[0] if task.data_files else None, task.model.config, train,
                  args=args, data_sha256=sha256_files(task.data_files), method=task.method)
    dist.barrier()
    return execute(task, train, out, args, resume=False)


def resume(command: str, run: str, overrides: TrainConfig,
           build: Callable[[dict[str, Any], FinetuneConfig, dict | None], Task]) -> dict[str, Any]:
    """Continue a killed or finished run exactly where its last checkpoint stopped."""
    path = Path(run)
    info, train = read_run(path, overrides, FinetuneConfig)
    if info.get("command") != command:
        raise LmforgeError(f"{run} is a `{info.get('command')}` run; resume it with `lmforge {info.get('command')} "
                           f"--resume {run}`")
    now = sha256_files([p for p in info.get("data_sha256", {}) if Path(p).exists()])
    for file, digest in info.get("data_sha256", {}).items():
        if file not in now:
            raise DataError(f"{file}, a data file of this run, is gone; restore it to resume")
        if now[file] != digest:
            raise DataError(f"{file} changed since the run started; restore the original to resume exactly")
    torch.manual_seed(train.seed)
    task = build(info["args"], train, info)
    return execute(task, train, path, info["args"], resume=True)


def execute(task: Task, train: FinetuneConfig, out: Path, args: dict[str, Any], resume: bool) -> dict[str, Any]:
    """Train, then write the adapter, plots and report of the best checkpoint; `args` are the run's arguments."""
    def on_eval(trainer: Trainer, result: dict) -> dict:
        with eval_mode(trainer.model), trainer.autocast():  # the dev metric during training: the loop's precision
            return task.evaluate(trainer.model)

    trainer = Trainer(task.model, task.objective, train, out, task.tokenizer, resume=resume,
                      on_eval=on_eval if task.evaluate else None, higher_is_better=task.higher_is_better)
    if trainer.dist.main:
        m = task.method
        for note in task.notes:
            print(note, flush=True)
        print(f"{'resuming' if resume else 'fine-tuning'} {task.name}: {task.model.config.name or task.model.config.arch} "
              f"({m['total'] / 1e6:.2f}M parameters, {m['trainable']:,} trainable = {share(m['fraction'])}, "
              f"method {m['method']}) on {trainer.device} for {trainer.max_steps} steps of {trainer.samples_per_step} "
              f"examples -> {out}", flush=True)
    summary = trainer.fit()
    if not trainer.dist.main:
        return summary
    best = load_checkpoint(out)
    if best.config.lora:
        save_adapter(best, out / "adapter", base=args.get("model"))
    plot_dev_metric(out / "metrics.jsonl", out / "dev_metric.png", out.name)
    report = task.finish(best, out)
    if args.get("test") and task.test is not None:
        report["test"], headline = task.test(best, args["test"])
        report["headline"] = f"{report.get('headline', '')}; {headline}"
    report = {"task": task.name, "best_step": summary["best_step"], "steps": summary["steps"],
              "seconds": summary["seconds"], "method": task.method, **report}
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
    from ..train.logs import read_metrics

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


def run_info(path: str | Path) -> dict[str, Any]:
    """run.json of a run folder, or of the run a checkpoint folder (best/, last/) belongs to; {} when none."""
    path = Path(path)
    for folder in (path, path.parent):
        if (folder / "run.json").exists():
            return lio.read_json(folder / "run.json")
    return {}


HEAD_NAMES = {"classify": ("a classifier", "classify"), "tag": ("a tagger", "ner")}


def load_for_inference(checkpoint: str, device: str = "auto", head: str | None = None) -> Transformer:
    """A fine-tuned model ready to predict: best checkpoint of a run, LoRA merged into the weights. With `head`
    (classify | tag), a model with another head is a one-line error naming the command that makes one."""
    model = load_checkpoint(checkpoint, device=resolve_device(device), dtype="fp32")
    if head and model.config.head != head:
        what, task = HEAD_NAMES[head]
        raise ConfigError(f"{checkpoint} has a {model.config.head} head, not {what}; eval {task} needs a model "
                          f"fine-tuned with `lmforge finetune {task}`")
    if model.config.lora:
        tokenizer = model.tokenizer
        model = merge_lora(model)
        model.tokenizer = tokenizer
    return model.eval()


__all__ = ["FinetuneConfig", "MethodConfig", "ModelSource", "Task", "command", "base_model", "adapt", "train_and_dev", "load_base", "resumed_model", "start", "resume", "execute", "eval_mode",
           "run_info", "load_for_inference", "plot_dev_metric"]
