"""`lmforge.load`: one entry for every model source, dispatched here.

- an lmforge checkpoint folder or training run folder (`lmforge.checkpoint`),
- a Hugging Face model folder (config.json with `model_type`; `lmforge.convert`),
- a Hugging Face hub id, written `hf:org/name` (downloaded by `lmforge.convert.hub`),
- a GGUF file, llama.cpp's format (`lmforge.convert.gguf`: dequantized, tokenizer rebuilt from its metadata),
- an ONNX export folder (`lmforge.export.onnx`): an `OnnxModel` run by ONNX Runtime, which generate and predict take.
"""

from __future__ import annotations

import os

import torch

from . import io as lio
from .checkpoint import CONFIG, load_native, resolve_checkpoint
from .convert import from_hf
from .convert.gguf import from_gguf, is_gguf_file
from .convert.hub import hub_repo
from .errors import CheckpointError, LmforgeError
from .export.onnx import KEY as ONNX_KEY
from .export.onnx import load_onnx
from .model import Transformer


def load(
    path: str | os.PathLike,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
) -> Transformer:
    """Load a model: an lmforge checkpoint or run folder, a Hugging Face folder, a hub id (hf:org/name), a GGUF
    file (model.gguf), or an ONNX export folder (an `OnnxModel` on ONNX Runtime; device and dtype do not apply).

    Returns the `Transformer` in eval mode with `.config` and `.tokenizer`.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise LmforgeError(f"load needs the path of a checkpoint, run or Hugging Face folder, a .gguf file (or "
                           f"hf:org/name); got {path!r}")
    if hub_repo(path) is not None:
        return from_hf(str(path), device=device, dtype=dtype)
    if is_gguf_file(path):
        return from_gguf(path, device=device, dtype=dtype)
    folder = resolve_checkpoint(path)
    config = lio.read_json(folder / CONFIG)  # a damaged or unreadable config.json is named as such
    if isinstance(config, dict) and ONNX_KEY in config:  # before the native check: it holds an lmforge config too
        return load_onnx(folder)
    if isinstance(config, dict) and "lmforge_config" in config:
        return load_native(folder, device=device, dtype=dtype)
    if isinstance(config, dict) and "model_type" in config:  # a Hugging Face model folder
        return from_hf(folder, device=device, dtype=dtype)
    raise CheckpointError(f"{folder / CONFIG} is neither an lmforge config (no 'lmforge_config' key) nor a "
                          "Hugging Face one (no 'model_type')")


__all__ = ["load"]
