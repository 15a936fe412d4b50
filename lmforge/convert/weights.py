"""Reading and writing Hugging Face weight files without a second copy.

Reading: `WeightFiles` opens `model.safetensors`, the shards named by `model.safetensors.index.json`, or (only
through `torch.load(weights_only=True)`) `pytorch_model.bin` and its shards. Safetensors files are parsed here
(an 8-byte header length, a JSON header, then raw little-endian data) and memory-mapped copy-on-write, so every
tensor is a view of the file: nothing is read until used, and a tensor that needs no change (the common case)
becomes a model parameter without being copied. A tensor that must change (a transpose, a split, another
dtype or device) is copied once and its pages in the mapping are released right away (`MADV_DONTNEED`), so at
no moment are there two resident copies of more than one tensor.

Writing is `lmforge.tensor_io` (one writer for every weight file).
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from .. import io as lio
from ..errors import CheckpointError
from ..tensor_io import SAFETENSORS, SAFETENSORS_INDEX, ST_DTYPES

BIN = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

PAGE = mmap.PAGESIZE


@dataclass
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path


class SafetensorsFile:
    """One .safetensors file: the header parsed, the data mapped copy-on-write (private, writable)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ValueError("shorter than the 8-byte header length")
                (n,) = struct.unpack("<Q", head)
                if n > size - 8 or n > 100_000_000:
                    raise ValueError(f"header length {n} does not fit in a file of {size} bytes")
                header = json.loads(f.read(n))
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > 0 else None
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.start = 8 + n
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            try:
                dtype = ST_DTYPES[entry["dtype"]]
                shape = tuple(int(d) for d in entry["shape"])
                begin, end = (int(x) for x in entry["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{path}: tensor {name} has an unreadable header entry {entry!r} "
                                      f"(dtypes lmforge reads: {', '.join(ST_DTYPES)})") from None
            numel = 1
            for d in shape:
                numel *= d
            nbytes = numel * torch.empty((), dtype=dtype).element_size()
            if end - begin != nbytes or self.start + end > size:
                raise CheckpointError(f"{path}: tensor {name} (shape {list(shape)}, {entry['dtype']}) needs {nbytes} "
                                      f"bytes at [{begin}, {end}) but the file has {size - self.start} bytes of data; "
                                      "the file is truncated or corrupt")
            self.entries[name] = (dtype, shape, self.start + begin, nbytes)

    def get(self, name: str) -> torch.Tensor:
        dtype, shape, offset, nbytes = self.entries[name]
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        flat = torch.frombuffer(self._map, dtype=dtype, count=nbytes // torch.empty((), dtype=dtype).element_size(),
                                offset=offset)
        return flat.view(shape)

    def release(self, name: str) -> None:
        """Drop this tensor's pages from memory (the file keeps them); only whole pages inside its range."""
        if self._map is None or not hasattr(self._map, "madvise"):
            return
        _, _, offset, nbytes = self.entries[name]
        first = -(-offset // PAGE) * PAGE
        last = ((offset + nbytes) // PAGE) * PAGE
        if last > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)


class WeightFiles:
    """Name -> tensor over a Hugging Face folder's weight files (safetensors preferred, .bin only weights-only)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: list[Path] = []
        self._where: dict[str, Any] = {}
        self._bin: dict[str, torch.Tensor] = {}
        self.source = ""
        if (folder / SAFETENSORS).exists():
            self._open_safetensors([folder / SAFETENSORS])
        elif (folder / SAFETENSORS_INDEX).exists():
            self._open_safetensors(self._shards(folder / SAFETENSORS_INDEX))
        elif (folder / BIN).exists():
            self._open_bin([folder / BIN])
        elif (folder / BIN_INDEX).exists():
            self._open_bin(self._shards(folder / BIN_INDEX))
        else:
            present = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth",
                                                                              ".gguf", ".h5", ".msgpack", ".ckpt"))
            found = f" (found {', '.join(present)})" if present else ""
            raise CheckpointError(f"{folder} has no weights lmforge reads{found}; expected {SAFETENSORS}, "
                                  f"{SAFETENSORS_INDEX} with its shards, or {BIN} (read weights-only)")
        # public name -> stored name: checkpoints converted from TensorFlow (the original BERTs) name LayerNorm
        # parameters gamma/beta; transformers reads them as weight/bias, so does lmforge
        self._stored: dict[str, str] = {}
        for name in list(self._where):
            for old_suffix, new_suffix in ((".gamma", ".weight"), (".beta", ".bias")):
                if name.endswith(old_suffix) and name[: -len(old_suffix)] + new_suffix not in self._where:
                    self._stored[name[: -len(old_suffix)] + new_suffix] = name
        for public, stored in self._stored.items():
            self._where[public] = self._where.pop(stored)
            if stored in self._bin:
                self._bin[public] = self._bin.pop(stored)

    def _name(self, name: str) -> str:
        return self._stored.get(name, name)

    def _shards(self, index_file: Path) -> list[Path]:
        try:
            weight_map = lio.read_json(index_file)["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("'weight_map' is not an object")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index_file} is not a shard index (needs a 'weight_map' object): {e}") from None
        files = []
        for name in dict.fromkeys(weight_map.values()):
            if not isinstance(name, str) or name != Path(name).name or name in ("", ".", "..") or "\\" in name:
                raise CheckpointError(f"{index_file} names shard {name!r}, which is not a file name in "
                                      f"{index_file.parent}; shards must sit beside the index (no folders, no ..)")
            if not (index_file.parent / name).exists():
                raise CheckpointError(f"{index_file} names shard {name}, which is not in {index_file.parent}; "
                                      "the download is incomplete")
            files.append(index_file.parent / name)
        return files

    def _open_safetensors(self, files: list[Path]) -> None:
        self.source = files[0].name if len(files) == 1 else f"{len(files)} safetensors shards"
        for path in files:
            handle = SafetensorsFile(path)
            self.files.append(path)
            for name in handle.entries:
                self._where[name] = handle

    def _open_bin(self, files: list[Path]) -> None:
        self.source = files[0].name if len(files) == 1 else f"{len(files)} .bin shards"
        for path in files:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:  # not a zip archive (legacy format): mmap is impossible, still weights-only
                if "mmap" not in str(e):
                    raise CheckpointError(f"{path} cannot be read: {str(e).splitlines()[0]}") from None
                state = self._load_weights_only(path, mmap=False)
            except Exception as e:
                raise _bin_refusal(path, e) from None
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise CheckpointError(f"{path} holds {type(state).__name__}, not a name -> tensor dictionary; "
                                      "lmforge reads only plain state dicts from .bin files")
            self.files.append(path)
            self._bin.update(state)
            for name in state:
                self._where[name] = None

    @staticmethod
    def _load_weights_only(path: Path, mmap: bool) -> Any:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as e:
            raise _bin_refusal(path, e) from None

    # ---- access ---------------------------------------------------------------------------------------
    def keys(self) -> Iterable[str]:
        return self._where.keys()

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def info(self, name: str) -> TensorInfo:
        handle = self._where[name]
        if handle is None:
            t = self._bin[name]
            return TensorInfo(t.dtype, tuple(t.shape), self.files[0])
        dtype, shape, _, _ = handle.entries[self._name(name)]
        return TensorInfo(dtype, shape, handle.path)

    def get(self, name: str) -> torch.Tensor:
        handle = self._where[name]
        return self._bin[name] if handle is None else handle.get(self._name(name))

    def release(self, name: str) -> None:
        handle = self._where[name]
        if handle is not None:
            handle.release(self._name(name))

    @property
    def stored_dtype(self) -> torch.dtype | None:
        """The dtype of most floating-point bytes in the files."""
        counts: dict[torch.dtype, int] = {}
        for name in self._where:
            info = self.info(name)
            if info.dtype.is_floating_point:
                n = 1
                for d in info.shape:
                    n *= d
                counts[info.dtype] = counts.get(info.dtype, 0) + n
        return max(counts, key=counts.get) if counts else None


def _bin_refusal(path: Path, error: Exception) -> CheckpointError:
    text = str(error)
    if "weights_only" in text or "pickle" in text.lower() or "GLOBAL" in text:
        why = ("it holds Python objects besides tensors, and lmforge never unpickles code (it reads .bin files only "
               "with torch.load(weights_only=True))")
    else:
        first = text.strip().splitlines()[0][:160] if text.strip() else type(error).__name__
        why = f"it is not a readable PyTorch weights file ({first})"
    return CheckpointError(f"refusing to load {path}: {why}; use the model's safetensors files, or convert it to "
                           "safetensors with a tool you trust")


__all__ = ["WeightFiles", "SafetensorsFile", "SAFETENSORS_INDEX"]
