"""Run folders, for pretraining and fine-tuning alike: the checks on `--out`, `run.json` (everything needed to
resume), reading it back for `--resume`, and the model config a preset gets from its tokenizer.

A run folder holds `run.json`, `last/` (+ `state/`) and `best/` checkpoints, `metrics.jsonl`, `metrics.csv`,
`tensorboard/`, `loss.png` and `summary.json` (fine-tuning adds its report, plots and adapter).
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
from pathlib import Path
from typing import Any, Iterator

from .. import io as lio
from .._version import __version__
from ..config import ModelConfig
from ..errors import ConfigError, FileError, LmforgeError
from ..tokenizer import Tokenizer
from .options import TrainConfig
from .distributed import setup_distributed

RUN_FILE = "run.json"
RUN_FILES = (RUN_FILE, "last", "best", "metrics.jsonl", "metrics.csv", "tensorboard", "loss.png", "summary.json")


def run_command(folder: Path) -> str | None:
    """The command that made the run in `folder` (pretrain, finetune classify, ...), None when it holds no run."""
    file = Path(folder) / RUN_FILE
    if not file.exists():
        return None
    info = lio.read_json(file)
    return info.get("command", "pretrain") if isinstance(info, dict) else None


def check_out_folder(out: Path, overwrite: bool, command: str = "pretrain") -> None:
    """Refuse a --out where a new run would lose something: an earlier run without --overwrite, and, even with it,
    anything that is not a run of the same command; nothing is deleted here, see `clear_run`."""
    run_file = out / RUN_FILE
    if run_file.exists() and not overwrite:
        run = lio.read_json(run_file)
        raise LmforgeError(f"{out} already holds a run ({run.get('objective')} on {run.get('data')}); continue it with "
                           f"`lmforge {run.get('command', 'pretrain')} --resume {out}`, choose another --out, or pass "
                           "--overwrite to replace it")
    lio.check_output(out, what=f"an `lmforge {command}` run", overwrite=overwrite,
                     ours=lambda folder: run_command(folder) == command)


def clear_run(out: Path, extra: tuple[str, ...] = ()) -> None:
    """Remove the files of an earlier run in `out` (and `extra` ones): called once everything of the new run has
    been checked, just before it writes, so a mistake in the new command never costs the old run."""
    for name in RUN_FILES + tuple(extra):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def write_run(out: Path, command: str, objective: str, data: str | None, model_config: ModelConfig,
              train: TrainConfig, **fields: Any) -> None:
    """Write run.json: the command, objective, data, model config and training options (+ the command's own
    fields), with the lmforge version and the time."""
    lio.write_json(out / RUN_FILE, {
        "lmforge_version": __version__, "command": command, "objective": objective, **fields, "data": data,
        "model_config": model_config.to_dict(), "train": train.to_dict(),
        "created": datetime.datetime.now().isoformat(timespec="seconds")})


# what a resuming command may change (the batch split only so that the step's size stays: another number of processes)
RESUME_OPTIONS = ("max_steps", "max_time", "progress", "device", "threads", "batch_size", "grad_accum",
                  "activation_checkpointing")


def read_run(run: Path, overrides: TrainConfig, config_cls: type[TrainConfig] = TrainConfig,
             command: str = "pretrain") -> tuple[dict[str, Any], TrainConfig]:
    """A run folder's run.json and training options, with the resuming command's --max-steps, --max-time,
    --progress, --device and --threads applied (`record_run` writes them once the resume is checked). A run of
    another command, or another training option given with --resume, is a one-line error."""
    run_file = run / RUN_FILE
    if not run_file.exists():
        raise LmforgeError(f"{run} is not a run folder (no run.json); give the --out folder of an earlier run")
    info = lio.read_json(run_file)
    if not isinstance(info, dict) or not isinstance(info.get("train"), dict):
        raise FileError(f"{run_file} is damaged (no 'train' options); the run cannot be resumed from it")
    if info.get("command", "pretrain") != command:
        raise LmforgeError(f"{run} is a `{info.get('command')}` run; resume it with `lmforge {info.get('command')} "
                           f"--resume {run}`")
    needed = ("model_config", "args", "method") if command.startswith("finetune") else \
        ("model_config", "data", "objective", "tokenizer_sha256")
    missing = [k for k in needed if not info.get(k)]
    if missing or not isinstance(info["model_config"], dict):
        raise FileError(f"{run_file} is damaged (no {', '.join(missing) or 'model_config'}); the run cannot be resumed "
                        "from it")
    try:
        train = config_cls.from_dict(info["train"])
    except ConfigError as e:
        raise FileError(f"{run_file}: {e}") from None
    defaults, given, current = config_cls().to_dict(), overrides.to_dict(), train.to_dict()
    changed = [k for k in given if k not in RESUME_OPTIONS and given[k] != defaults[k] and given[k] != current[k]]
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in changed)
        raise ConfigError(f"{flags}: a resumed run keeps the options it started with ({', '.join(f'{k}={current[k]}' for k in changed)}); "
                          "with --resume only --max-steps, --max-time, --device, --threads, --progress, "
                          "--activation-checkpointing and (keeping the step's size) --batch-size/--grad-accum change")
    changes = {k: given[k] for k in ("max_steps", "max_time", "threads") if given[k] is not None}
    changes["progress"] = overrides.progress
    changes.update({k: given[k] for k in ("batch_size", "grad_accum", "activation_checkpointing")
                    if given[k] != defaults[k]})
    if overrides.device != "auto":
        changes["device"] = overrides.device
    train = config_cls.from_dict({**current, **changes})
    info["train"] = train.to_dict()
    return info, train


def record_run(run: Path, info: dict[str, Any]) -> None:
    """Write back run.json with the options a resume changed; called once the resume has been checked."""
    if setup_distributed().main:
        lio.write_json(run / RUN_FILE, info)


@contextlib.contextmanager
def new_run(out: Path, extra: tuple[str, ...] = ()) -> Iterator[None]:
    """Around a new run from the making of its folder on: if it fails before its first checkpoint, what it wrote is
    removed (the folder too, when the run made it), so that retrying the command (fixed) starts afresh instead of
    finding a run to --resume."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if not (out / "last").exists() and setup_distributed().main:
            clear_run(out, extra)
            if made and not any(out.iterdir()):
                out.rmdir()
        raise


def build_config(preset: str, overrides: dict[str, Any], tokenizer: Tokenizer, context: int | None,
                 objective: str) -> ModelConfig:
    """A preset's config sized to the tokenizer (vocabulary, special ids), with the given overrides."""
    values: dict[str, Any] = {"vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_id,
                              "bos_token_id": tokenizer.start_id, "eos_token_id": tokenizer.end_id}
    if context:
        values["context_length"] = context
    if objective == "seq2seq":
        values["decoder_start_token_id"] = tokenizer.bos_id
    values.update(overrides)
    config = ModelConfig.from_name(preset, **values)
    if config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"--set vocab_size={config.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} "
                          "tokens: ids past the embedding table would crash; leave vocab_size to the tokenizer")
    return config


__all__ = ["RUN_FILE", "RUN_FILES", "run_command", "check_out_folder", "clear_run", "new_run", "write_run", "read_run", "record_run", "build_config"]
