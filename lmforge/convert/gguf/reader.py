"""Reading a GGUF file: its metadata as plain Python values, its tensors dequantized to float32 one at a time.

The file is memory-mapped by `gguf.GGUFReader`; nothing is dequantized until a tensor is asked for. Every type the
`gguf` package can dequantize is read (F32, F16, BF16, the legacy Q4_0 ... Q8_0, the K-quants Q2_K ... Q6_K, the
IQ and TQ types, MXFP4, NVFP4), and the plain F64 / integer types by a cast. A file that is not GGUF, is cut
short, or is one part of a split model is a one-line error naming it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CheckpointError, FileError

MAGIC = b"GGUF"
PLAIN_TYPES = ("F64", "I8", "I16", "I32", "I64")  # read by a cast, not by a dequantizer


def is_gguf_file(path: str | os.PathLike) -> bool:
    """True for a path to read as GGUF: one named *.gguf that is not a folder (a missing or damaged one then says
    so), or a file that starts with GGUF's magic bytes."""
    path = Path(path)
    if path.suffix.lower() == ".gguf" and not path.is_dir():
        return True
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def dequantizable() -> frozenset[str]:
    """The ggml type names this reader can turn into float32: whatever `gguf.quants.dequantize` implements (probed
    on one zero block, so a newer `gguf` brings its new types), plus the plain types."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    names = set(PLAIN_TYPES)
    for qtype in GGMLQuantizationType:
        block, size = GGML_QUANT_SIZES.get(qtype, (0, 0))
        if not size:
            continue
        try:
            dequantize(np.zeros((1, size), dtype=np.uint8), qtype)
        except (NotImplementedError, ValueError, TypeError):
            continue
        names.add(qtype.name)
    return frozenset(names)


class GGUFFile:
    """A GGUF file: `metadata` (key -> value), `architecture`, and tensors by name (dequantized on request)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"no GGUF file at {self.path}: the file does not exist")
        if self.path.is_dir():
            raise CheckpointError(f"{self.path} is a folder; give the path of a .gguf file")
        with open(self.path, "rb") as f:  # the operating system's own error (a permission) rather than a guess
            magic = f.read(4)
        if magic != MAGIC:
            raise FileError(f"{self.path} is not a GGUF file (it does not start with the bytes 'GGUF'); llama.cpp "
                            "models are .gguf files")
        from gguf import GGUFReader

        try:
            self.reader = GGUFReader(str(self.path))
        except Exception as e:  # the reader fails in many ways on a damaged file (struct, index, value errors)
            raise FileError(f"{self.path} is damaged: not a readable GGUF file ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else 'no detail'}); it may be truncated, "
                            "download or write it again") from None
        self.metadata: dict[str, Any] = {}
        for name, field in self.reader.fields.items():
            if not name.startswith("GGUF."):
                self.metadata[name] = field.contents()
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.architecture = self.metadata.get("general.architecture")
        self._check_complete()

    def _check_complete(self) -> None:
        if not isinstance(self.architecture, str) or not self.architecture:
            raise FileError(f"{self.path} has no general.architecture; it is not a model file llama.cpp can load")
        if int(self.metadata.get("split.count", 1) or 1) > 1:
            raise CheckpointError(f"{self.path} is part {int(self.metadata.get('split.no', 0)) + 1} of a model split "
                                  f"into {self.metadata['split.count']} files; merge them first "
                                  "(llama-gguf-split --merge FIRST.gguf OUT.gguf)")
        size = self.path.stat().st_size
        for t in self.tensors.values():
            if t.data_offset + t.n_bytes > size:
                raise FileError(f"{self.path} is damaged: tensor {t.name} ends at byte {t.data_offset + t.n_bytes} "
                                f"of a {size}-byte file; it is truncated, download or write it again")

    # ---- metadata ---------------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        """An architecture-scoped key: get('embedding_length') reads '<architecture>.embedding_length'."""
        value = self.metadata.get(f"{self.architecture}.{key}")
        return default if value is None else value

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise CheckpointError(f"{self.path}: metadata key {self.architecture}.{key} is missing, and a "
                                  f"{self.architecture} model needs it; the file is incomplete")
        return value

    # ---- tensors ----------------------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape in torch order (GGUF lists dimensions innermost first)."""
        return tuple(int(d) for d in reversed(self.tensors[name].shape.tolist()))

    def type_name(self, name: str) -> str:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(int(self.tensors[name].tensor_type)).name

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name in self.tensors:
            kind = self.type_name(name)
            counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def array(self, name: str) -> np.ndarray:
        """The tensor as a new float32 array in torch layout (e.g. (out_features, in_features))."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        t = self.tensors[name]
        kind = self.type_name(name)
        if kind not in dequantizable():
            raise CheckpointError(f"{self.path}: tensor {name} is stored as {kind}, which the gguf package cannot "
                                  f"dequantize (it reads {', '.join(sorted(dequantizable()))}); requantize the model "
                                  "with llama-quantize to one of those")
        if kind in PLAIN_TYPES:
            out = np.asarray(t.data).astype(np.float32)
        else:
            out = np.asarray(dequantize(t.data, GGMLQuantizationType(int(t.tensor_type))), dtype=np.float32)
        out = out.reshape(self.shape(name))
        return out.copy() if np.may_share_memory(out, t.data) else out  # F32 comes back as a view of the mapping


__all__ = ["GGUFFile", "is_gguf_file", "dequantizable"]
