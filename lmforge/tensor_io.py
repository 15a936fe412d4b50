"""Writing safetensors files one tensor at a time: the one writer of every weight file lmforge makes.

`stream_safetensors` writes the header first (from the planned names, dtypes and shapes), then each tensor's
bytes as it is produced, atomically, so writing never holds a second copy of a model; `save_safetensors` does
that for a dict of tensors (checkpoints, optimizer state, adapters); `write_safetensors_shards` splits tensors
into shards plus `model.safetensors.index.json` when they exceed a size (Hugging Face exports).
"""

from __future__ import annotations

import contextlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import io as lio
from .errors import CheckpointError, ConfigError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        ST_DTYPES[_name] = getattr(torch, _attr)
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def parse_size(size: int | str) -> int:
    """'2GB', '500MB', '10GiB' or a number of bytes (> 0)."""
    text = str(size).strip().upper().replace(" ", "")
    units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    value = None
    for unit, mult in units.items():
        if text.endswith(unit):
            try:
                value = int(float(text[: -len(unit)]) * mult)
            except ValueError:
                pass
            break
    if value is None and text.isdigit():
        value = int(text)
    if value is None or value <= 0:
        raise ConfigError(f"max_shard_size={size!r} is not a size; use e.g. 2GB, 500MB or a number of bytes (> 0)")
    return value


@dataclass
class PlannedTensor:
    """A tensor to write: its name, dtype and shape up front, its data produced only when written."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


def stream_safetensors(path: Path, tensors: list[PlannedTensor], metadata: dict[str, str] | None = None) -> None:
    """Write a .safetensors file one tensor at a time (atomically): the header from the plan, then each tensor's
    bytes as it is produced, so memory holds one tensor, not the file."""
    order = sorted(tensors, key=lambda t: -torch.empty((), dtype=t.dtype).element_size())  # keeps data aligned
    header: dict[str, Any] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for t in order:
        if t.dtype not in ST_NAMES:
            raise CheckpointError(f"cannot write tensor {t.name}: dtype {t.dtype} has no safetensors name")
        header[t.name] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with lio.atomic_write(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in order:
            tensor = t.produce().detach()
            if tuple(tensor.shape) != tuple(t.shape) or tensor.dtype != t.dtype:
                raise CheckpointError(f"internal: tensor {t.name} is {tuple(tensor.shape)} {tensor.dtype}, planned "
                                      f"{t.shape} {t.dtype}")
            if tensor.numel():
                f.write(tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)


def write_safetensors_shards(folder: Path, tensors: list[PlannedTensor], max_shard_bytes: int,
                             metadata: dict[str, str] | None = None) -> list[str]:
    """model.safetensors, or numbered shards + model.safetensors.index.json when the tensors exceed
    max_shard_bytes (a tensor larger than that gets a shard of its own). Returns the file names written."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    if len(shards) == 1:
        stream_safetensors(folder / SAFETENSORS, shards[0], metadata)
        return [SAFETENSORS]
    n = len(shards)
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map: dict[str, str] = {}
    for name, shard in zip(names, shards):
        stream_safetensors(folder / name, shard, metadata)
        weight_map.update({t.name: name for t in shard})
    total = sum(t.nbytes for t in tensors)
    lio.write_json(folder / SAFETENSORS_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return names + [SAFETENSORS_INDEX]


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a dict of tensors as one .safetensors file, atomically (CPU copies made one tensor at a time)."""
    stream_safetensors(Path(path), [PlannedTensor(k, v.dtype, tuple(v.shape), lambda v=v: v) for k, v in tensors.items()],
                       metadata)


__all__ = ["SAFETENSORS", "SAFETENSORS_INDEX", "ST_DTYPES", "ST_NAMES", "PlannedTensor", "parse_size",
           "stream_safetensors", "save_safetensors", "write_safetensors_shards"]


# ---- sharded checkpoints (torch.distributed.checkpoint) ---------------------------------------------------

@contextlib.contextmanager
def _quiet_dcp():
    """torch.distributed.checkpoint warns when it runs in a single process, which is what loading for inference is."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


def save_sharded(state: dict[str, torch.Tensor], folder: str | Path) -> None:
    """Write `state` with torch.distributed.checkpoint, each process its own shards (DTensors are saved as their local
    shards, plain tensors once): one safetensors file per process, the sharding in each file's header, no pickled
    metadata. Every process of the group calls it; in a single process it writes one file."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    distributed = dist.is_available() and dist.is_initialized()
    with _quiet_dcp():
        dcp.save(state, storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True,
                                                                enable_consolidation=False), no_dist=not distributed)


def sharded_metadata(folder: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) of every tensor of a sharded checkpoint, from its files' headers."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    folder = Path(folder)
    if not folder.is_dir() or not any(folder.glob("*.safetensors")):
        raise CheckpointError(f"{folder} holds no sharded weights (*.safetensors); the checkpoint is incomplete")
    try:
        metadata = HuggingFaceStorageReader(str(folder)).read_metadata()
    except Exception as e:  # (a truncated file or a foreign header: the reader's own error types)
        raise CheckpointError(f"{folder} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                              "restore it from a copy") from None
    return {name: (tuple(m.size), m.properties.dtype) for name, m in metadata.state_dict_metadata.items()
            if hasattr(m, "size")}


def load_sharded(state: dict[str, torch.Tensor], folder: str | Path, collective: bool = True) -> None:
    """Fill `state` in place from a sharded checkpoint, whatever number of processes wrote it: plain tensors receive
    whole values, DTensors their own shard of them (resharding happens here). With `collective`, every process of
    the group calls it; else this process reads alone."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    distributed = collective and dist.is_available() and dist.is_initialized()
    try:
        with _quiet_dcp():
            dcp.load(state, storage_reader=HuggingFaceStorageReader(str(folder)), no_dist=not distributed)
    except Exception as e:
        raise CheckpointError(f"{folder} cannot be read into this model ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''}); restore it from a copy") from None


def read_sharded(folder: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The whole tensors under `prefix` of a sharded checkpoint, in this process (for inference and conversion)."""
    shapes = sharded_metadata(folder)
    state = {name: torch.empty(shape, dtype=dtype) for name, (shape, dtype) in shapes.items() if name.startswith(prefix)}
    load_sharded(state, folder, collective=False)
    return {name[len(prefix):]: tensor for name, tensor in state.items()}
