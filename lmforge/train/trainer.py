"""The one training loop, for every objective (pretraining and fine-tuning).

It takes a model, an objective (batches + loss) and `TrainConfig`; what it reports at evaluation (the loss, and a
perplexity when the objective predicts tokens, plus any task metric of `on_eval`) comes from them, not from a task. Switches,
not forks: autocast (bf16 on CUDA), `torch.compile`, gradient accumulation with exact loss normalisation,
clipping, warm-up + cosine schedule, periodic evaluation, early stopping, best/last checkpoints, and
multi-process data parallelism under `torchrun` (rank-aware logging, checkpointing and data sharding).

Exact resume: the `last/` checkpoint holds the weights, the optimizer state (safetensors), the RNG states and
the step (JSON). Batches are pure functions of the step (see `data.batches`) and the schedule is a pure
function of the step, so a run killed at any moment and resumed logs the same losses as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from .. import io as lio
from ..checkpoint import SHARDED_WEIGHTS, write_checkpoint
from ..config import check_field_types
from ..device import native_bf16, parse_dtype, resolve_device
from ..tensor_io import save_safetensors, save_sharded
from ..errors import CheckpointError, ConfigError, LmforgeError
from ..model import Transformer, kernels
from .distributed import (collective_dir, gradient_sync, load_model_state, load_optimizer_state_shards, model_state,
                          optimizer_state_shards, parallelize, setup_distributed, whole_weights)
from ..model.flops import flops_per_token
from .logs import MetricsLogger, plot_losses
from .objectives import Objective
from .options import TrainConfig
from .speed import CompileProbe, mfu, peak_flops

STATE_DIR = "state"
SHARDED_OPTIMIZER = "optimizer.dcp"


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    best_val: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    stopped_early: bool = False
    compiled: str | None = None  # --compile auto's decision ("on" | "off"; None until made), kept for a resume


# ---- optimizer and schedule ----------------------------------------------------------------------------

def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on norms, biases, or position/segment embeddings."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() < 2 or "pos_embed" in name or "type_embed" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    groups = param_groups(model, config.weight_decay)
    kwargs: dict[str, Any] = dict(lr=config.lr, betas=(config.beta1, config.beta2))
    try:  # the fused kernel where this torch has one for the device (CUDA, and CPU since torch 2.4)
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, foreach=device.type == "cuda", **kwargs)


def lr_at(step: int, config: TrainConfig, max_steps: int) -> float:
    """Linear warm-up to lr, then cosine (or linear) decay to min_lr at max_steps; a pure function of step."""
    min_lr = config.min_lr if config.min_lr is not None else config.lr / 10
    if step < config.warmup_steps:
        return config.lr * (step + 1) / (config.warmup_steps + 1)
    if config.schedule == "constant" or step >= max_steps:
        return config.lr if config.schedule == "constant" else min_lr
    progress = (step - config.warmup_steps) / max(1, max_steps - config.warmup_steps)
    if config.schedule == "linear":
        return config.lr - (config.lr - min_lr) * progress
    return min_lr + 0.5 * (config.lr - min_lr) * (1 + math.cos(math.pi * progress))


# ---- optimizer / RNG state as safetensors + JSON ---------------------------------------------------------

def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entries in sd["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    return tensors, {"python": [py[0], list(py[1]), py[2]],
                     "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))


# --compile: the whole training forward (model and loss as one graph) for a model at most this wide and deep, where
# per-operator overhead outweighs the products (gpt-nano / llama-nano on a 2-core CPU: 1.05x the block-by-block
# compile); each block for larger ones (gpt-mini, 320 wide: the whole-model graph 0.9x the blocks' speed, compiling
# 2-3x longer, growing with depth). None: by this rule; "model" | "blocks": forced (tests, benchmarks).
WHOLE_MODEL_MAX = (256, 8)  # (d_model, layers)
COMPILE_SCOPE: str | None = None


def compile_scope(model: Transformer, sharded: bool) -> str:
    """What --compile compiles: "model" (the training forward as one graph) or "blocks" (each block; always for a
    sharded run, whose FSDP units are compiled before sharding)."""
    if sharded:
        return "blocks"
    if COMPILE_SCOPE:
        return COMPILE_SCOPE
    c = model.config
    layers = c.n_layer + (c.decoder_layers if c.arch == "encoder_decoder" else 0)
    return "model" if c.d_model <= WHOLE_MODEL_MAX[0] and layers <= WHOLE_MODEL_MAX[1] else "blocks"


class ObjectiveModule(nn.Module):
    """model + objective as one module whose forward returns (summed loss, target count)."""

    def __init__(self, model: Transformer, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.objective.loss(self.model, batch)


@torch.no_grad()
def eval_loss(model: nn.Module, objective: Objective, batch_size: int, limit: int | None = None,
              autocast: Callable[[], Any] = contextlib.nullcontext) -> tuple[float, int]:
    """The objective's mean loss per target over its evaluation batches (at most `limit`), and the target count;
    the model stays in the mode it is in."""
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for batch in objective.eval_batches(batch_size, limit):
        with autocast():
            loss, n = objective.loss(model, {k: v.to(device) for k, v in batch.items()})
        total += loss.double()
        count += n
    return ((total / count).item() if count.item() else float("nan")), int(count.item())


@contextlib.contextmanager
def _interrupts_between_steps() -> Iterator[Callable[[], bool]]:
    """Within this block (in the main thread), a first Ctrl-C is noted and acted on after the current step (the loop
    saves a checkpoint and stops); a second one interrupts at once."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    seen = []

    def handler(signum, frame):
        if seen:
            raise KeyboardInterrupt
        seen.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(seen)
    finally:
        signal.signal(signal.SIGINT, previous)


def _read_tensors(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """A safetensors file of a checkpoint's state, or a one-line error naming it when it is missing or damaged."""
    from safetensors.torch import load_file

    if not path.exists():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete (restore it, or start a new run)")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types for a truncated or foreign file
        raise CheckpointError(f"{path} is damaged ({str(e).splitlines()[0][:120]}); restore it from a copy, or start "
                              "a new run") from None


# ---- the loop ------------------------------------------------------------------------------------------

class Trainer:
    """Train `model` on `objective`, writing checkpoints, logs and plots under `out`."""

    def __init__(
        self,
        model: Transformer,
        objective: Objective,
        config: TrainConfig,
        out: str | os.PathLike,
        tokenizer=None,
        resume: bool = False,
        on_eval: Callable[["Trainer", dict], dict] | None = None,
        higher_is_better: bool = False,
    ) -> None:
        self.config, self.objective, self.out = config, objective, Path(out)
        self.tokenizer = tokenizer
        self.on_eval = on_eval  # extra evaluation (fine-tuning metrics); returns {"metric": name, "value": x}
        self.higher_is_better = higher_is_better
        self.dist = setup_distributed()
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device if self.dist.world == 1 or config.device != "auto" else
                                     (f"cuda:{self.dist.local_rank}" if torch.cuda.is_available() else "cpu"))
        self.amp_dtype = self._amp_dtype(config.dtype)
        self.sharded = config.strategy == "fsdp"  # sharded checkpoints (in one process too, so a run can change size)
        if self.sharded and self.amp_dtype == torch.float16:
            raise ConfigError("--strategy fsdp trains in bf16 or fp32 (fp16 needs loss scaling it does not do here); "
                              "use --dtype bf16")
        self.model = model.to(self.device)
        if config.activation_checkpointing:
            self.model.set_activation_checkpointing(True)
        self.state = TrainState()
        self.max_steps = self._max_steps()
        if config.warmup_steps >= self.max_steps and self.dist.main and not resume:
            print(f"note: --warmup-steps={config.warmup_steps} is not shorter than the run ({self.max_steps} steps): the "
                  f"learning rate never reaches --lr={config.lr:g}", flush=True)
        if resume and not self.sharded:
            self._load_weights_for_resume()
        # model FLOPs per trained token at sequence length T: a + b * T (MFU in the logs and the summary)
        base = flops_per_token(self.model, 0)["train"]
        self._flops = (base, flops_per_token(self.model, 1)["train"] - base)
        self._seq_len = config.context or self.model.config.context_length
        self.peak: float | None = None
        if self.dist.main:
            try:
                self.peak = peak_flops(self.device, self.amp_dtype or torch.float32, config.peak_tflops)
            except RuntimeError:  # (a device without matrix multiplies at this dtype: no MFU)
                self.peak = None
        # the loss is computed inside one module's forward, so DDP and FSDP see every use of the weights, whatever
        # methods of the model an objective calls (masked LM uses encode + the head on masked positions)
        self.objective_module = ObjectiveModule(self.model, objective)
        kernels.load_for_training(self.device)  # (lmforge's CPU attention kernel, seen by the first step compiled or not)
        if config.compile == "on":
            self._compile(True)
        self.train_model: nn.Module = parallelize(self.objective_module, self.model, config.strategy, self.device,
                                                  self.amp_dtype)
        self.optimizer = build_optimizer(self.model, config, self.device)  # (after FSDP: its parameters are shards)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        if resume:
            self._load_state()
        self.probe: CompileProbe | None = None
        if config.compile == "auto":
            if self.state.compiled == "on":
                self._compile(True)
            elif self.state.compiled is None and self.dist.world == 1 and not self.sharded:
                # (several processes must decide alike, and FSDP units are compiled before sharding: those stay eager)
                left = None if config.max_time is None else max(config.max_time - self.state.elapsed, 0.0)
                self.probe = CompileProbe(self.device, self.max_steps - self.state.step, time_left=left)
        self._prefetched: tuple[int, list[dict[str, torch.Tensor]]] | None = None

    def _compile(self, on: bool) -> None:
        """torch.compile what `compile_scope` says: the training forward (model and loss as one graph: elementwise
        work fused across the blocks, the head and the loss) of a small model, or each block (one graph, reused by
        every layer of the same shape; a sharded run's, compiled before sharding); or undo it."""
        if compile_scope(self.model, self.sharded) == "model":
            self.objective_module._compiled_call_impl = None
            if on:
                self.objective_module.compile()
            return
        for stack in (self.model.encoder, self.model.decoder):
            if stack is not None:
                for block in stack.layers:
                    if on:
                        block.compile()
                    else:
                        block._compiled_call_impl = None

    # ---- setup helpers ---------------------------------------------------------------------------------
    def _amp_dtype(self, name: str) -> torch.dtype | None:
        if name == "auto":
            return torch.bfloat16 if native_bf16(self.device) else None
        dtype = parse_dtype(name)
        if dtype == torch.float16 and self.device.type == "cpu":
            raise ConfigError("--dtype fp16 is for CUDA GPUs (loss scaling); on the CPU use --dtype bf16 (or auto, "
                              "which picks bf16 where the CPU computes it natively) or fp32")
        return None if dtype == torch.float32 else dtype

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _max_steps(self) -> int:
        c = self.config
        if c.max_steps:
            return c.max_steps
        if c.epochs:
            per_step = c.batch_size * c.grad_accum * self.dist.world
            return max(1, math.ceil(c.epochs * self.objective.samples_per_epoch() / per_step))
        return 1000

    @property
    def samples_per_step(self) -> int:
        return self.config.batch_size * self.config.grad_accum * self.dist.world

    def first_sample(self, step: int, micro: int) -> int:
        """Index of the first sample of this process's micro-batch (global batches are contiguous)."""
        c = self.config
        return ((step * c.grad_accum + micro) * self.dist.world + self.dist.rank) * c.batch_size

    # ---- checkpoints -----------------------------------------------------------------------------------
    def save_last(self) -> None:
        data_state = self.objective.data_state()
        if data_state is not None:  # each process's readers of streamed data: together, the whole position
            data_state = {k: v for part in self.dist.gather(data_state) for k, v in part.items()}
        opt = optimizer_state_shards(self.model, self.optimizer) if self.sharded else None
        with self._checkpoint_dir(self.out / "last") as tmp:
            if self.sharded:
                save_sharded(opt, tmp / STATE_DIR / SHARDED_OPTIMIZER)
            if self.dist.main:
                (tmp / STATE_DIR).mkdir(exist_ok=True)
                if not self.sharded:
                    opt_tensors, opt_meta = optimizer_state(self.optimizer)
                    save_safetensors(opt_tensors, tmp / STATE_DIR / "optimizer.safetensors")
                rng_tensors, rng_meta = rng_state()
                save_safetensors(rng_tensors, tmp / STATE_DIR / "rng.safetensors")
                lio.write_json(tmp / STATE_DIR / "trainer_state.json", {
                    "state": asdict(self.state), "optimizer": None if self.sharded else opt_meta, "rng": rng_meta,
                    "max_steps": self.max_steps, "samples_seen": self.state.step * self.samples_per_step,
                    "samples_per_step": self.samples_per_step, "world_size": self.dist.world,
                    "data": data_state, "scaler": self.scaler.state_dict() if self.scaler else None,
                })

    def save_best(self) -> None:
        with self._checkpoint_dir(self.out / "best"):
            pass

    @contextlib.contextmanager
    def _checkpoint_dir(self, path: Path) -> Iterator[Path]:
        """A checkpoint folder with the model (whole from rank 0, or sharded from every process) swapped in
        atomically for `path` once the caller has added to it."""
        if not self.sharded:
            if self.dist.main:
                with lio.atomic_dir(path) as tmp:
                    write_checkpoint(tmp, self.model, self.tokenizer)
                    yield tmp
            else:
                yield lio.scratch_paths(path)[0]
            self.dist.barrier()
            return
        with collective_dir(path, self.dist) as tmp:
            save_sharded(model_state(self.model), tmp / SHARDED_WEIGHTS)
            if self.dist.main:
                write_checkpoint(tmp, self.model, self.tokenizer, weights=False)
            yield tmp

    def _last_dir(self) -> Path:
        last = lio.recover_dir(self.out / "last")
        if not (last / STATE_DIR / "trainer_state.json").exists():
            raise CheckpointError(f"{self.out} has no resumable checkpoint (last/state/ is missing); "
                                  "start a new run instead of --resume")
        return last

    def _load_weights_for_resume(self) -> None:
        last = self._last_dir()
        weights = _read_tensors(last / "model.safetensors", self.device)
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if k not in self.model.tied_keys()]
        if missing or unexpected:
            raise CheckpointError(f"{last} does not fit this model (missing {missing[:3]}, unexpected "
                                  f"{unexpected[:3]}); was the run's config changed?")

    def _load_state(self) -> None:
        last = self._last_dir()
        state_file = last / STATE_DIR / "trainer_state.json"
        meta = lio.read_json(state_file)
        if self.sharded != (last / SHARDED_WEIGHTS).is_dir():
            raise CheckpointError(f"{last} holds {'whole' if self.sharded else 'sharded'} weights, and this run is set "
                                  f"to --strategy {self.config.strategy}; the checkpoint is not this run's")
        saved = meta.get("samples_per_step", self.samples_per_step) if isinstance(meta, dict) else None
        if isinstance(saved, int) and saved != self.samples_per_step:
            raise ConfigError(
                f"the run trained on {saved} sequences per step, and --batch-size {self.config.batch_size} x "
                f"--grad-accum {self.config.grad_accum} x {self.dist.world} processes make {self.samples_per_step}; give "
                "--batch-size/--grad-accum that keep the step's size, so the run continues as it was")
        try:
            self.state = TrainState(**meta["state"])
            check_field_types(self.state)
            if self.sharded:
                load_model_state(self.model, last / SHARDED_WEIGHTS)
                load_optimizer_state_shards(self.model, self.optimizer, last / STATE_DIR / SHARDED_OPTIMIZER)
            else:
                load_optimizer_state(self.optimizer, _read_tensors(last / STATE_DIR / "optimizer.safetensors",
                                                                   self.device), meta["optimizer"])
            set_rng_state(_read_tensors(last / STATE_DIR / "rng.safetensors", torch.device("cpu")), meta["rng"])
            if self.scaler and meta.get("scaler"):
                self.scaler.load_state_dict(meta["scaler"])
            self.objective.load_data_state(meta.get("data"), self.state.step * self.samples_per_step)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            if isinstance(e, LmforgeError) and not isinstance(e, ConfigError):  # (a file error names its file)
                raise
            raise CheckpointError(f"{last / STATE_DIR} is damaged ({type(e).__name__}: {str(e)[:120]}); the run cannot "
                                  "resume exactly from it: restore it from a copy, or start a new run") from None
        if self.state.step > self.max_steps:
            raise ConfigError(f"the run is at step {self.state.step}, past --max-steps={self.max_steps}; give a larger "
                              "--max-steps to continue it")

    # ---- evaluation ------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float] | None:
        self.model.eval()
        with whole_weights(self.train_model):
            val, count = eval_loss(self.model, self.objective, self.config.batch_size, self.config.eval_batches or None,
                                   self.autocast)
        self.model.train()
        if count == 0:
            return None
        return {"loss": val, **({"ppl": math.exp(min(val, 50.0))} if self.objective.perplexity else {})}

    def _after_eval(self, result: dict[str, Any] | None, logger: MetricsLogger | None) -> bool:
        """Log, keep the best checkpoint, and decide early stopping. Returns True to stop."""
        if result is None:
            return False
        with whole_weights(self.train_model):
            extra = self.on_eval(self, result) if self.on_eval else {}
        result = {**result, **extra}
        if logger:
            logger.log({"step": self.state.step, "split": "val", **result})
        score = result.get("value", result["loss"])
        higher = self.higher_is_better and "value" in result
        best = self.state.best_val
        if best is None or (score > best if higher else score < best):
            self.state.best_val, self.state.best_step, self.state.bad_evals = score, self.state.step, 0
            self.save_best()
        else:
            self.state.bad_evals += 1
        self.last_eval = result
        if self.dist.main:
            from tqdm.auto import tqdm

            shown = f"val loss {result['loss']:.4f}" + (f" (ppl {result['ppl']:.2f})" if "ppl" in result else "")
            if "value" in result:
                shown += f", {result.get('metric', 'metric')} {result['value']:.4f}"
            best = " (best)" if self.state.best_step == self.state.step else f" (best at step {self.state.best_step})"
            tqdm.write(f"step {self.state.step}/{self.max_steps}: {shown}{best}")
        patience = self.config.patience
        if patience and self.state.bad_evals >= patience:
            self.state.stopped_early = True
            return True
        return False

    # ---- training --------------------------------------------------------------------------------------
    def accumulate_gradients(self, step: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Forward and backward over the step's micro-batches; the gradient is that of the mean loss over all
        targets of the step (across micro-batches and processes), however they are split."""
        if self._prefetched is not None and self._prefetched[0] == step:
            batches = self._prefetched[1]
        else:
            batches = self._device_batches(step)
        self._prefetched = None
        count = self.dist.all_sum(sum(self.objective.count(b) for b in batches).to(self.device).float())
        tokens = sum(self.objective.tokens(b) for b in batches) * self.dist.world
        ids = batches[0].get("input_ids")
        if ids is not None and ids.dim() == 2:
            self._seq_len = ids.shape[1]
        loss_sum = None
        for m, batch in enumerate(batches):
            with gradient_sync(self.train_model, m == len(batches) - 1), self.autocast():
                loss, _ = self.train_model(batch)
                scaled = loss / count * self.dist.world  # DDP and FSDP average gradients over processes
            if self.scaler:
                self.scaler.scale(scaled).backward()
            else:
                scaled.backward()
            loss_sum = loss.detach().float() if loss_sum is None else loss_sum + loss.detach().float()
        return self.dist.all_sum(loss_sum), count, tokens

    def _device_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        """The step's micro-batches on the device; on CUDA copied from pinned memory without waiting."""
        c = self.config
        batches = [self.objective.batch(self.first_sample(step, m), c.batch_size) for m in range(c.grad_accum)]
        if self.device.type == "cpu":
            return batches
        pin = self.device.type == "cuda"
        return [{k: (v.pin_memory() if pin else v).to(self.device, non_blocking=True) for k, v in b.items()}
                for b in batches]

    def _prefetch(self, step: int) -> None:
        """On a GPU, build and send the next step's batches while this step still runs there. Only for batches
        that are pure functions of the step: a streamed corpus's readers keep their position for the checkpoint."""
        if self.device.type == "cuda" and step < self.max_steps and self.objective.data_state() is None:
            self._prefetched = (step, self._device_batches(step))

    def _step(self, step: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        c = self.config
        lr = lr_at(step, c, self.max_steps)
        if self.optimizer.param_groups[0]["lr"] != lr:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        loss_sum, count, tokens = self.accumulate_gradients(step)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip) if c.grad_clip > 0
                     else torch.zeros(()))
        if hasattr(grad_norm, "full_tensor"):  # (FSDP: the norm over every process's shards)
            grad_norm = grad_norm.full_tensor()
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._prefetch(step + 1)
        return loss_sum / count, grad_norm, tokens

    def mfu(self, tokens_per_s: float) -> float | None:
        """Model FLOPs utilisation of a training throughput (this process's share of the tokens on its device)."""
        a, b = self._flops
        return mfu(a + b * self._seq_len, tokens_per_s / self.dist.world, self.peak)

    def _probe_step(self, seconds: float) -> None:
        """--compile auto: feed the probe a step's time; compile or uncompile when it says so."""
        probe = self.probe
        probe.observe(seconds)
        if probe.wants_compile:
            probe.wants_compile = False
            self._compile(True)
        if probe.decision is not None:
            if probe.decision == "off" and probe.phase == "compiled":
                self._compile(False)
            self.state.compiled = probe.decision
            self.compile_report = probe.report
            self.probe = None
            if self.dist.main:
                from tqdm.auto import tqdm

                tqdm.write(f"--compile auto: {'compiled' if probe.decision == 'on' else 'eager'} "
                           f"({probe.report['why']})")

    def fit(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        c, st = self.config, self.state
        resumed = st.step > 0
        logger = MetricsLogger(self.out, resume_step=st.step if resumed else None) if self.dist.main else None
        self.model.train()
        bar = tqdm(total=self.max_steps, initial=st.step, desc="training", unit="step", dynamic_ncols=True,
                   disable=not (c.progress and self.dist.main), smoothing=0.1, delay=0.5)
        started = time.time() - st.elapsed
        self.last_eval: dict[str, Any] | None = None
        try:
            with _interrupts_between_steps() as interrupted:
                self._loop(logger, bar, started, interrupted)
        finally:
            bar.close()
            if logger:
                logger.close()
        summary = self.summary()
        if self.dist.main:
            plot_losses(self.out / "metrics.jsonl", self.out / "loss.png", title=self.out.name)
            lio.write_json(self.out / "summary.json", summary)
        return summary

    def _loop(self, logger: MetricsLogger | None, bar, started: float, interrupted: Callable[[], bool]) -> None:
        c, st = self.config, self.state
        window_start, window_tokens = time.time(), 0
        evaluated_at = -1
        while st.step < self.max_steps:
            probing = self.probe is not None
            t0 = time.perf_counter() if probing else 0.0
            loss, grad_norm, tokens = self._step(st.step)
            if probing:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self._probe_step(time.perf_counter() - t0)
            st.step += 1
            st.tokens += tokens
            window_tokens += tokens
            st.elapsed = time.time() - started
            if st.step % c.log_every == 0 or st.step == 1 or st.step == self.max_steps:
                now = time.time()
                rate = window_tokens / max(now - window_start, 1e-9)
                window_start, window_tokens = now, 0
                value = loss.item()
                if not math.isfinite(value):
                    raise LmforgeError(f"the loss became {value} at step {st.step}; lower --lr (now {c.lr}) "
                                       "or raise --warmup-steps, and resume from the last checkpoint")
                row = {"step": st.step, "split": "train", "loss": value,
                       "lr": float(f"{lr_at(st.step - 1, c, self.max_steps):.6g}"),
                       "grad_norm": round(float(grad_norm), 6), "tokens": st.tokens, "tok_per_s": round(rate, 1),
                       "elapsed": round(st.elapsed, 2)}
                utilisation = self.mfu(rate)
                if utilisation is not None:
                    row["mfu"] = round(utilisation, 4)
                if logger:
                    logger.log(row)
                bar.set_postfix(loss=f"{value:.4f}", tok_s=f"{rate:,.0f}", lr=f"{row['lr']:.2e}", refresh=False)
            bar.update(1)
            stop = False
            if c.eval_every and st.step % c.eval_every == 0:
                stop = self._after_eval(self.evaluate(), logger)
                evaluated_at = st.step
            timed_out = c.max_time is not None and st.elapsed >= c.max_time
            save = stop or timed_out or (c.save_every and st.step % c.save_every == 0) or evaluated_at == st.step
            if save or interrupted():  # Ctrl-C is acted on here, with the step complete: the checkpoint resumes exactly
                self.save_last()
            if interrupted():
                if self.dist.main:
                    from tqdm.auto import tqdm

                    tqdm.write(f"interrupted at step {st.step}: saved {self.out / 'last'}; continue with --resume")
                raise KeyboardInterrupt
            if stop or timed_out:
                break
        if evaluated_at != st.step:
            self._after_eval(self.evaluate(), logger)
            self.save_last()

    def summary(self) -> dict[str, Any]:
        st = self.state
        last = self.last_eval or {}
        rate = st.tokens / max(st.elapsed, 1e-9)
        utilisation = self.mfu(rate)
        speed = {"mfu": round(utilisation, 4) if utilisation is not None else None,
                 "peak_tflops": round(self.peak / 1e12, 3) if self.peak else None,
                 "flops_per_token": int(self._flops[0] + self._flops[1] * self._seq_len),
                 "compile": self.config.compile if self.config.compile != "auto" else
                 {"auto": st.compiled or "off", **getattr(self, "compile_report", {})}}
        if self.config.compile == "on" or st.compiled == "on":
            speed["compile_scope"] = compile_scope(self.model, self.sharded)  # what was compiled: model | blocks
        return {"steps": st.step, "max_steps": self.max_steps, "tokens": st.tokens, "seconds": round(st.elapsed, 1),
                "tok_per_s": round(rate, 1), **speed, "val_loss": last.get("loss"),
                "val_ppl": last.get("ppl"), "best_val": st.best_val,
                "best_step": st.best_step, "stopped_early": st.stopped_early,
                **({k: v for k, v in last.items() if k not in ("loss", "ppl")}),
                "out": str(self.out)}

