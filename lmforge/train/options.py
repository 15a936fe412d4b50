"""`TrainConfig`: the options every training command shares (pretrain and every fine-tuning task)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from ..config import check_field_types
from ..errors import ConfigError


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    max_steps: int | None = _opt(None, "optimizer steps to train (default: from --epochs, else 1000)")
    epochs: float | None = _opt(None, "passes over the training data (used when --max-steps is not given)")
    max_time: float | None = _opt(None, "stop (and save) after this many seconds of training")
    batch_size: int = _opt(16, "sequences per micro-batch (per process)")
    grad_accum: int = _opt(1, "micro-batches per optimizer step (the loss is normalised over all of them)")
    lr: float = _opt(3e-4, "peak learning rate")
    min_lr: float | None = _opt(None, "learning rate at the end of the cosine decay (default: lr / 10)")
    warmup_steps: int = _opt(100, "linear warm-up steps")
    schedule: Literal["cosine", "linear", "constant"] = _opt("cosine", "decay after warm-up")
    weight_decay: float = _opt(0.1, "AdamW weight decay (not on norms, biases or position embeddings)")
    beta1: float = _opt(0.9, "AdamW beta1")
    beta2: float = _opt(0.95, "AdamW beta2")
    grad_clip: float = _opt(1.0, "clip the gradient norm to this (0 = off)")
    context: int | None = _opt(None, "tokens per training sequence (default: the model's context_length)")
    eval_every: int = _opt(200, "evaluate on the validation split every N steps (0 = only at the end)")
    eval_batches: int = _opt(50, "validation batches per evaluation (0 = the whole split)")
    save_every: int = _opt(500, "write the last/ checkpoint every N steps (and at every evaluation)")
    patience: int | None = _opt(None, "early stopping: stop after N evaluations without improvement")
    log_every: int = _opt(10, "log training metrics every N steps")
    seed: int = _opt(1337, "seed for initialisation, data order, masking and dropout")
    compile: Literal["auto", "on", "off"] = _opt("auto", "torch.compile each block: on | off | auto (compile when the rest of the run is long enough to pay for compiling and a timed probe shows compiled steps faster)")
    peak_tflops: float | None = _opt(None, "the device's peak TFLOP/s at the training dtype, for MFU (default: measured with a matrix multiply once, cached)")
    strategy: Literal["ddp", "fsdp"] = _opt("ddp", "under torchrun: ddp replicates the model in every process; fsdp "
                                                   "(FSDP2) shards weights, gradients and optimizer state across them, "
                                                   "and writes sharded checkpoints")
    activation_checkpointing: bool = _opt(False, "recompute each block's activations in the backward pass instead of "
                                                 "keeping them (less memory, about a third more compute)")
    device: str = _opt("auto", "cpu | cuda | cuda:N | mps | auto")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = _opt("auto", "autocast dtype (auto: bf16 where the hardware has native bf16 matmul: CUDA, CPUs with AVX512-BF16/AMX; else fp32)")
    label_smoothing: float = _opt(0.0, "label smoothing for seq2seq and classification losses")
    mlm_probability: float = _opt(0.15, "masked LM: fraction of tokens to predict")
    nsp: bool = _opt(False, "masked LM: add next-sentence prediction (needs a model with nsp_head)")
    threads: int | None = _opt(None, "CPU threads for torch (default: torch's choice)")
    progress: bool = _opt(True, "show a progress bar")

    def __post_init__(self) -> None:
        if isinstance(self.compile, bool):  # (run.json files written before --compile took auto | on | off)
            self.compile = "on" if self.compile else "off"
        check_field_types(self, prefix="--")
        positive = ("batch_size", "grad_accum")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 1")
        for name in ("max_steps", "context", "threads", "patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={value} must be >= 1")
        if self.seed < 0 or (self.max_time is not None and self.max_time <= 0):
            raise ConfigError(f"--seed must be >= 0 and --max-time > 0 (got seed={self.seed}, max_time={self.max_time})")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"--epochs={self.epochs} must be > 0")
        if self.lr <= 0 or (self.min_lr is not None and not 0 <= self.min_lr <= self.lr):
            raise ConfigError(f"--lr must be > 0 and 0 <= --min-lr <= --lr (got lr={self.lr}, min_lr={self.min_lr})")
        for name in ("warmup_steps", "eval_every", "eval_batches", "save_every", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 0")
        if self.patience is not None and self.eval_every == 0:
            raise ConfigError("--patience counts evaluations, and --eval-every 0 evaluates only at the end; give "
                              "--eval-every N to stop early")
        if self.compile not in ("auto", "on", "off"):
            raise ConfigError(f"--compile={self.compile!r} is not allowed; use auto | on | off")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ConfigError(f"--peak-tflops={self.peak_tflops} must be > 0 (the device's peak, e.g. 989 for an "
                              "H100's bf16)")
        if self.log_every < 1:
            raise ConfigError("--log-every must be >= 1")
        for name in ("beta1", "beta2", "label_smoothing", "mlm_probability"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(self, name)} must be in [0, 1)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
