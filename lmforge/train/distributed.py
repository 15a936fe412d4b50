"""Training in several processes under `torchrun`: the process group, DDP or FSDP2 around the model, and the
collective side of checkpoints.

- `setup_distributed` reads torchrun's environment and joins the group (NCCL on GPUs, gloo on CPUs).
- `parallelize` wraps the loss module: DDP replicates the model in every process and averages gradients; FSDP2
  (`torch.distributed.fsdp.fully_shard`, one group per block plus the rest at the root) shards parameters,
  gradients and optimizer state, gathering each block's weights just before it runs (in `param_dtype` under a
  mixed-precision policy; gradients are reduced in fp32).
- `gradient_sync` skips the gradient reduction on all but the last micro-batch of a step, for either strategy.
- `collective_dir` builds a checkpoint folder that every process writes its shards into and that rank 0 swaps in
  atomically once all have finished (the run folder must be on a file system every node sees).
- `sharded_state` / `load_sharded_state`: the model and AdamW state as torch.distributed.checkpoint writes them
  (one safetensors file per process, see `tensor_io.save_sharded`), readable by any number of processes.

On torch 2.13 with gloo, FSDP2 averages gradients over processes exactly as DDP does (checked by
tests/train/test_distributed.py, which would fail on the summed gradients of pytorch#162338).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .. import io as lio
from ..errors import CheckpointError
from ..tensor_io import load_sharded, sharded_metadata


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Dist":
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(value)
        return value

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value` (JSON-like), in rank order, on every process."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out


def setup_distributed() -> Dist:
    """Read torchrun's environment and join the process group (NCCL on GPUs, gloo on CPUs); idempotent."""
    dist = Dist.from_env()
    if dist.world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(dist.local_rank)
        torch.distributed.init_process_group(backend)
    return dist


def parallelize(module: nn.Module, model: nn.Module, strategy: str, device: torch.device,
                param_dtype: torch.dtype | None) -> nn.Module:
    """`module` (which computes the loss with `model` inside) wrapped for the processes of the group."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    shared = bool(getattr(model.config, "unique_layers", None))  # a block run several times stays in the root group
    for stack in (model.encoder, model.decoder):
        if stack is not None and not shared:
            for block in stack.layers:
                fully_shard(block, mp_policy=policy)
    fully_shard(module, mp_policy=policy)
    return module


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def gradient_sync(module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Within the block, the backward pass reduces gradients over processes only if `enabled` (skip it on all but
    the last micro-batch of an accumulated step)."""
    if enabled or not torch.distributed.is_initialized():
        return contextlib.nullcontext()
    if is_sharded(module):
        return _fsdp_no_sync(module)
    return module.no_sync()


@contextlib.contextmanager
def _fsdp_no_sync(module) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


@contextlib.contextmanager
def whole_weights(module: nn.Module) -> Iterator[None]:
    """Inside the block the model can be called directly, not only through `module`'s forward (evaluation code,
    task metrics, generation): FSDP's root parameters are gathered; each block gathers its own as it runs."""
    if not is_sharded(module):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


@contextlib.contextmanager
def collective_dir(path: Path, dist: Dist) -> Iterator[Path]:
    """`io.atomic_dir` for every process: rank 0 makes the scratch folder, every process writes into it, and rank 0
    swaps it in for `path` once all of them are done."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(lio.atomic_dir(path)) if dist.main else lio.scratch_paths(path)[0]
        dist.barrier()
        yield tmp
        dist.barrier()
    dist.barrier()


# ---- sharded model and optimizer state -------------------------------------------------------------------

def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights to save (DTensor shards under FSDP), without the tied output weight."""
    tied = model.tied_keys() if hasattr(model, "tied_keys") else set()
    return {k: v for k, v in model.state_dict().items() if k not in tied}


def load_model_state(model: nn.Module, folder: Path) -> None:
    """Fill the model (whole or sharded) from sharded weights written by any number of processes."""
    state = model_state(model)
    saved = sharded_metadata(folder)
    missing, unexpected = sorted(set(state) - set(saved)), sorted(set(saved) - set(state))
    if missing or unexpected:
        raise CheckpointError(f"{folder} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                              "was the run's config changed?")
    load_sharded(state, folder)  # in place: the tensors are the model's own (or its shards)


_FLAT = None


def _flat_options():
    global _FLAT
    if _FLAT is None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        _FLAT = StateDictOptions(flatten_optimizer_state_dict=True)
    return _FLAT


def optimizer_state_shards(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's tensors keyed by parameter name (`state.<name>.exp_avg`, ...), sharded like the parameters."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=_flat_options())
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def load_optimizer_state_shards(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Restore the optimizer from `optimizer_state_shards` saved by any number of processes."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    params = dict(model.named_parameters())
    template: dict[str, torch.Tensor] = {}
    for name, (shape, dtype) in sharded_metadata(folder).items():
        fqn, _, _key = name.removeprefix("state.").rpartition(".")
        p = params.get(fqn)
        if not name.startswith("state.") or p is None:
            raise CheckpointError(f"{folder} holds optimizer state for {name!r}, which this model does not have; was "
                                  "the run's config changed?")
        same = tuple(shape) == tuple(p.shape)  # moments are sharded like their parameter; scalars (step) are whole
        template[name] = torch.zeros_like(p, dtype=dtype) if same else torch.zeros(shape, dtype=dtype)
    load_sharded(template, folder)
    groups = {k: v for k, v in get_optimizer_state_dict(model, optimizer, options=_flat_options()).items()
              if not torch.is_tensor(v)}
    set_optimizer_state_dict(model, optimizer, {**groups, **template}, options=_flat_options())
