"""The lmforge checkpoint: a folder with `config.json`, `model.safetensors`, `tokenizer.json` (+ its config).

This module is the one reader and writer of the native format (and of LoRA adapter folders). A training run
folder holds `last/` (with `state/` for exact resume) and `best/` checkpoints; `resolve_checkpoint` on a run
folder picks `best/` when there is one, else `last/`. Weights load memory-mapped into a model built on the meta
device (no second copy), in the dtype asked for. `lmforge.loading.load` picks this reader, the Hugging Face one or
the GGUF one for a path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from . import io as lio
from ._version import __version__
from .config import ModelConfig
from .device import parse_dtype, resolve_device
from .errors import CheckpointError, ConfigError
from .model import Transformer
from .model.heads import with_head
from .model.lora import apply_lora, head_prefixes, lora_spec
from .model.meta import build_empty, load_weights
from .tensor_io import read_sharded, save_safetensors
from .tokenizer import Tokenizer

WEIGHTS = "model.safetensors"
SHARDED_WEIGHTS = "model.dcp"  # a folder: the weights as saved by every process of an FSDP run (tensor_io.save_sharded)
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


# ---- saving --------------------------------------------------------------------------------------------

RUN = "run.json"


def read_run_info(path: str | os.PathLike) -> dict[str, Any]:
    """run.json of a run folder, or of the run a checkpoint folder (best/, last/) belongs to, or the copy a derived
    checkpoint keeps (quantized, pruned, factorised, exported); {} when none."""
    path = Path(path)
    for folder in (path, path.parent):
        if (folder / RUN).is_file():
            return lio.read_json(folder / RUN)
    return {}


def source_run_info(source: str | os.PathLike) -> dict[str, Any] | None:
    """The run.json a model made from `source` keeps beside it (quantized, pruned, factorised, exported): the run's
    when `source` is a run or checkpoint folder, None for a file (a .gguf, whose folder is not its run)."""
    return read_run_info(source) if Path(source).is_dir() else None


def write_checkpoint(folder: str | os.PathLike, model: Transformer, tokenizer: Tokenizer | None = None, *,
                     extra: dict[str, Any] | None = None, generation: dict[str, Any] | None = None,
                     weights: bool = True, run: dict[str, Any] | None = None) -> None:
    """Write config, weights and tokenizer into `folder` (callers wrap this in `io.atomic_dir`). `extra` entries
    go into config.json beside the model config (e.g. where a converted model came from); `generation` is
    written as generation_config.json; weights=False leaves the weights to the caller (a sharded run writes
    `model.dcp/` from every process); `run` (the run.json of the fine-tuning run the model comes from: its
    columns, lengths and labels) is kept beside it, so `predict` and `eval` on the new folder read them too."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lio.write_json(folder / CONFIG, {"lmforge_version": __version__, "lmforge_config": model.config.to_dict(),
                                     **(extra or {})})
    if weights:
        save_safetensors(model.state_dict_to_save(), folder / WEIGHTS)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save(folder)
    if generation:
        lio.write_json(folder / GENERATION_CONFIG, generation)
    if run:
        lio.write_json(folder / RUN, run)


def save(model: Transformer, path: str | os.PathLike, tokenizer: Tokenizer | None = None, *, overwrite: bool = False,
         **options: Any) -> Path:
    """Save a model (and its tokenizer) as an lmforge checkpoint folder, atomically (see `write_checkpoint`). An
    existing checkpoint there is replaced only with overwrite=True, and anything else never (`io.check_output`)."""
    if not isinstance(model, Transformer):
        raise ConfigError(f"save needs a model (lmforge.load or lmforge.build_model gives one); got {type(model).__name__}")
    lio.check_output(path, what="an lmforge checkpoint", overwrite=overwrite, ours=is_lmforge_checkpoint,
                     option="path", flag="overwrite=True")
    with lio.atomic_dir(path) as tmp:
        write_checkpoint(tmp, model, tokenizer, **options)
    return Path(path)


# ---- finding and loading -------------------------------------------------------------------------------

def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder behind `path`: itself, or a run folder's best/ (else last/)."""
    path = Path(path)
    for sub in ("best", "last"):
        lio.recover_dir(path / sub)
    lio.recover_dir(path)
    if (path / CONFIG).exists():
        return path
    for sub in ("best", "last"):
        if (path / sub / CONFIG).exists():
            return path / sub
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the folder does not exist{lio.not_found_hint(path)}")
    raise CheckpointError(f"{path} is not a checkpoint: no config.json there (nor in best/ or last/); "
                          "point at a training run folder or a checkpoint folder")


def read_config(folder: str | os.PathLike) -> ModelConfig:
    folder = Path(folder)
    try:
        data = lio.read_json(folder / CONFIG)
    except OSError as e:
        raise CheckpointError(f"cannot read {folder / CONFIG}: {e.strerror or e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("lmforge_config"), dict):
        raise CheckpointError(f"{folder / CONFIG} is not an lmforge config (no 'lmforge_config' object)")
    try:
        return ModelConfig.from_json_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{folder / CONFIG}: {e}") from None


def is_lmforge_checkpoint(folder: Path) -> bool:
    try:
        data = lio.read_json(folder / CONFIG)
    except (FileNotFoundError, NotADirectoryError, ValueError):  # (an unreadable file is said as such, not guessed)
        return False
    return isinstance(data, dict) and "lmforge_config" in data


class _SafetensorsFiles:
    """Lazy name -> tensor view over one or more .safetensors files (memory-mapped)."""

    def __init__(self, files: list[Path]) -> None:
        from safetensors import safe_open

        self.handles = {}
        self.where: dict[str, Any] = {}
        for file in files:
            with open(file, "rb"):  # the operating system's own error (permission, a folder) rather than a guess
                pass
            try:
                handle = safe_open(str(file), framework="pt")
            except Exception as e:
                raise CheckpointError(f"{file} is not a readable safetensors file ({e}); it may be truncated") from None
            self.handles[file] = handle
            for key in handle.keys():
                self.where[key] = handle

    def keys(self):
        return self.where.keys()

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.where[key].get_tensor(key)


def load_native(folder: str | os.PathLike, device: str | torch.device | None = "cpu",
                dtype: str | torch.dtype | None = None) -> Transformer:
    """Load the lmforge checkpoint in `folder` (see `resolve_checkpoint` for run folders) in eval mode, with
    `.config` and `.tokenizer`."""
    folder = Path(folder)
    config = read_config(folder)
    target = resolve_device(device)
    model = build_empty(config)
    weights = folder / WEIGHTS
    if not weights.exists() and (folder / SHARDED_WEIGHTS).is_dir():  # saved by the processes of an FSDP run
        tensors: Any = read_sharded(folder / SHARDED_WEIGHTS)
        weights = folder / SHARDED_WEIGHTS
    elif not weights.exists():
        raise CheckpointError(f"{folder} has no {WEIGHTS}; the checkpoint is incomplete")
    else:
        tensors = _SafetensorsFiles([weights])
    load_weights(model, tensors, device=target, dtype=parse_dtype(dtype), source=str(weights))
    model.tokenizer = Tokenizer.load(folder) if (folder / "tokenizer.json").exists() else None
    return model.eval()


# ---- LoRA adapters -------------------------------------------------------------------------------------

def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors: every LoRA matrix, plus the task head it was trained with."""
    heads = head_prefixes(model)
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k or (heads and k.startswith(heads))}


def save_adapter(model: torch.nn.Module, folder: str | os.PathLike, base: str | None = None) -> Path:
    """Write the adapter alone: `adapter.safetensors` + `adapter_config.json` (rank, alpha, targets, the head)."""
    config = model.config
    if not config.lora:
        raise ConfigError("this model has no LoRA adapter to save (its config has no lora entry)")
    head = {k: getattr(config, k) for k in ("head", "num_labels", "labels", "pooling", "pooler")}
    with lio.atomic_dir(folder) as tmp:
        save_safetensors(adapter_state(model), tmp / ADAPTER_WEIGHTS)
        lio.write_json(tmp / ADAPTER_CONFIG, {"lmforge_adapter": "lora", **config.lora, "base_model": base,
                                              "base_shape": _shape(config), "task_head": head})
    return Path(folder)


SHAPE_FIELDS = ("arch", "vocab_size", "d_model", "n_layer", "n_head", "n_kv_head")


def _shape(config: ModelConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in SHAPE_FIELDS}


def read_adapter_config(folder: str | os.PathLike) -> dict[str, Any]:
    file = Path(folder) / ADAPTER_CONFIG
    if not file.exists():
        raise CheckpointError(f"{folder} is not a LoRA adapter folder: {ADAPTER_CONFIG} is missing")
    data = lio.read_json(file)
    if not isinstance(data, dict) or data.get("lmforge_adapter") != "lora":
        raise CheckpointError(f"{file} is not an lmforge LoRA adapter (no \"lmforge_adapter\": \"lora\")")
    try:
        lora_spec(data["rank"], data["alpha"], data["targets"], data.get("dropout", 0.0))
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{file} is damaged ({type(e).__name__}: {e}); restore the adapter folder") from None
    return data


def load_adapter(model: torch.nn.Module, folder: str | os.PathLike) -> torch.nn.Module:
    """Put a saved adapter (and its task head) on a base model; returns the adapted model (a new one when the
    head had to be swapped)."""
    from safetensors.torch import load_file

    info = read_adapter_config(folder)
    if model.config.lora:
        raise ConfigError(f"the model already carries a LoRA adapter; merge it first (lmforge lora merge) before "
                          f"putting {folder} on it")
    shape, ours = info.get("base_shape"), _shape(model.config)
    if isinstance(shape, dict) and any(shape.get(k) != ours[k] for k in shape):
        differs = ", ".join(f"{k}={shape.get(k)} (the model's {ours[k]})" for k in SHAPE_FIELDS if shape.get(k) != ours[k])
        raise CheckpointError(f"{folder} belongs to another base model ({differs}); put it on the model it was "
                              f"trained on{': ' + str(info['base_model']) if info.get('base_model') else ''}")
    head = info.get("task_head") or {}
    try:
        if head.get("head", "lm") != "lm" and model.config.head != head["head"]:
            model = with_head(model, head["head"], head["labels"] or [str(i) for i in range(head["num_labels"])],
                              pooling=head.get("pooling", "cls"), pooler=head.get("pooler"))
        apply_lora(model, info["rank"], info["alpha"], info["targets"], info.get("dropout", 0.0))
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / ADAPTER_CONFIG} is damaged ({type(e).__name__}: {e})") from None
    except ConfigError as e:
        raise CheckpointError(f"{folder} does not fit this model ({e}); was it trained on another base model?") from None
    try:
        tensors = load_file(str(Path(folder) / ADAPTER_WEIGHTS))
    except Exception as e:  # missing or truncated
        raise CheckpointError(f"{Path(folder) / ADAPTER_WEIGHTS} cannot be read ({str(e).splitlines()[0][:120]}); "
                              "restore the adapter folder") from None
    state = model.state_dict()
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise CheckpointError(f"{folder}: the adapter has tensors this model does not have ({', '.join(unknown[:3])}"
                              f"{' ...' if len(unknown) > 3 else ''}); was it trained on another base model?")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(state[key].shape):
            raise CheckpointError(f"{folder}: {key} has shape {tuple(value.shape)}, the model expects "
                                  f"{tuple(state[key].shape)}; the adapter belongs to another base model")
    model.load_state_dict(tensors, strict=False)
    return model


__all__ = ["save", "write_checkpoint", "resolve_checkpoint", "read_config", "is_lmforge_checkpoint", "load_native",
           "save_adapter", "load_adapter", "read_adapter_config", "adapter_state", "CONFIG", "WEIGHTS",
           "GENERATION_CONFIG"]
