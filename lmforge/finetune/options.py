"""The options every fine-tuning command shares: what trains (`MethodConfig`), where a preset's tokenizer comes from
(`ModelSource`), the training options (`FinetuneConfig`), and `TaskArgs`, the base of each task's arguments."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from ..config import check_field_types, check_options
from ..errors import ConfigError
from ..train.options import TrainConfig


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

    def __post_init__(self) -> None:
        check_options(self, {"unfreeze_layers": 0, "lora_rank": 1})


@dataclass
class ModelSource:
    """Where the model's tokenizer and shape come from when --model is a preset (trained from scratch)."""

    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder (for a preset, or to replace the "
                                                                   "checkpoint's)"})
    vocab_size: int = field(default=8000, metadata={"help": "vocabulary of the BPE tokenizer trained on the training "
                                                            "texts for a preset without --tokenizer"})
    set_: list[str] = field(default_factory=list, metadata={"help": "config override for a preset (--set n_layer=4), "
                                                                    "or dropout for a checkpoint"})

    def __post_init__(self) -> None:
        self.set_ = list(self.set_ or [])  # (the command line gives None for no --set)
        check_options(self, {"vocab_size": 1})


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


PATH_FIELDS = ("model", "tokenizer", "train", "dev", "test", "word_vectors", "train_src", "train_tgt", "dev_src",
               "dev_tgt")


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A field of a task's arguments with its --help text (the entry function's docstring is made from these)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def _hidden(factory: Callable[[], Any]) -> Any:
    return field(default_factory=factory, metadata={"hidden": True})


@dataclass
class TaskArgs:
    """The arguments of a fine-tuning run: a task's subclass adds its fields; the task's entry function (and so its
    command line) is made from them (`lmforge.finetune.runs.entry_function`). run.json records them as "args" and
    --resume reads them back. The hidden fields come from the --method and model-source options."""

    model: str | None = option(None, "checkpoint or run folder, Hugging Face folder or hub id, or a preset to train "
                                     "from scratch")
    out: str | None = option(None, "run folder")
    resume: str | None = option(None, "a run folder to continue exactly where it stopped")
    overwrite: bool = option(False, "replace a run that already exists in --out")
    dev_fraction: float = option(0.1, "share of the training file held out as dev when --dev is not given")
    method: dict[str, Any] = _hidden(lambda: dataclasses.asdict(MethodConfig()))
    tokenizer: str | None = _hidden(lambda: None)
    vocab_size: int = _hidden(lambda: 8000)
    set_: list[str] = _hidden(list)

    def __post_init__(self) -> None:
        check_field_types(self, prefix="--")
        if not 0 < self.dev_fraction < 1:
            raise ConfigError(f"--dev-fraction={self.dev_fraction} must be between 0 and 1")

    @classmethod
    def from_call(cls, params: dict[str, Any]) -> "TaskArgs":
        """From an entry function's parameters: `method` (MethodConfig) and `source` (ModelSource) flattened."""
        params = dict(params)
        source = params.pop("source", None) or ModelSource()
        params["method"] = dataclasses.asdict(params.get("method") or MethodConfig())
        values = {**params, **dataclasses.asdict(source)}
        values["set_"] = list(values.get("set_") or [])
        for name in PATH_FIELDS:  # run.json keeps absolute paths, so --resume works from any folder
            value = values.get(name)
            if isinstance(value, str) and value and Path(value).exists():
                values[name] = str(Path(value).resolve())
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TaskArgs":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["MethodConfig", "ModelSource", "FinetuneConfig", "TaskArgs", "option"]
