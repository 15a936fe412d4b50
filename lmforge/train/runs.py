"""Run folders, for pretraining and fine-tuning alike: the checks on `--out`, `run.json` (everything needed to
resume), reading it back for `--resume`, and the model config a preset gets from its tokenizer.

A run folder holds `run.json`, `last/` (+ `state/`) and `best/` checkpoints, `metrics.jsonl`, `metrics.csv`,
`tensorboard/`, `loss.png` and `summary.json` (fine-tuning adds its report, plots and adapter).
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path
from typing import Any

from .. import io as lio
from .._version import __version__
from ..config import ModelConfig
from ..errors import LmforgeError
from ..tokenizer import Tokenizer
from .options import TrainConfig
from .trainer import setup_distributed

RUN_FILE = "run.json"
RUN_FILES = (RUN_FILE, "last", "best", "metrics.jsonl", "metrics.csv", "tensorboard", "loss.png", "summary.json")


def is_run(folder: Path) -> bool:
    return (Path(folder) / RUN_FILE).exists()


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Refuse a --out where a new run would lose something (an earlier run without --overwrite, anything that is
    not a run even with it); nothing is deleted here, see `clear_run`."""
    run_file = out / RUN_FILE
    if run_file.exists() and not overwrite:
        run = lio.read_json(run_file)
        raise LmforgeError(f"{out} already holds a run ({run.get('objective')} on {run.get('data')}); continue it with "
                           f"`lmforge {run.get('command', 'pretrain')} --resume {out}`, choose another --out, or pass "
                           "--overwrite to replace it")
    lio.check_output(out, what="an lmforge run", overwrite=overwrite, ours=is_run)


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


def read_run(run: Path, overrides: TrainConfig, config_cls: type[TrainConfig] = TrainConfig
             ) -> tuple[dict[str, Any], TrainConfig]:
    """A run folder's run.json and training options, with the resuming command's --max-steps, --max-time and
    --progress applied (and recorded in run.json)."""
    run_file = run / RUN_FILE
    if not run_file.exists():
        raise LmforgeError(f"{run} is not a run folder (no run.json); give the --out folder of an earlier run")
    info = lio.read_json(run_file)
    train = config_cls.from_dict(info["train"])
    changes = {k: getattr(overrides, k) for k in ("max_steps", "max_time") if getattr(overrides, k) is not None}
    changes["progress"] = overrides.progress
    if changes:
        train = config_cls.from_dict({**train.to_dict(), **changes})
        info["train"] = train.to_dict()
        if setup_distributed().main:
            lio.write_json(run_file, info)
    return info, train


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
    return ModelConfig.from_name(preset, **values)


__all__ = ["RUN_FILE", "RUN_FILES", "is_run", "check_out_folder", "clear_run", "write_run", "read_run", "build_config"]
