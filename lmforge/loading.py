"""`lmforge.load`: one entry for every model source, dispatched here.

- an lmforge checkpoint folder or training run folder (`lmforge.checkpoint`),
- a Hugging Face model folder (config.json with `model_type`; `lmforge.convert`),
- a Hugging Face hub id "org/name" that is not a local path (downloaded by `lmforge.convert.hub`).
"""

from __future__ import annotations

import os

import torch

from .checkpoint import CONFIG, is_lmforge_checkpoint, load_native, resolve_checkpoint
from .convert import from_hf, is_hf_folder
from .convert.hub import looks_like_hub_id
from .errors import CheckpointError
from .model import Transformer


def load(
    path: str | os.PathLike,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
) -> Transformer:
    """Load a model: an lmforge checkpoint or run folder, or a Hugging Face folder or hub id.

    Returns the `Transformer` in eval mode with `.config` and `.tokenizer`.
    """
    if looks_like_hub_id(path):  # "org/name" that is not a local path: the Hugging Face hub
        return from_hf(str(path), device=device, dtype=dtype)
    folder = resolve_checkpoint(path)
    if is_lmforge_checkpoint(folder):
        return load_native(folder, device=device, dtype=dtype)
    if is_hf_folder(folder):  # config.json with model_type: a Hugging Face model folder
        return from_hf(folder, device=device, dtype=dtype)
    raise CheckpointError(f"{folder / CONFIG} is neither an lmforge config (no 'lmforge_config' key) nor a "
                          "Hugging Face one (no 'model_type')")


__all__ = ["load"]
