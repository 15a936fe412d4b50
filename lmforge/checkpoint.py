"""The lmforge checkpoint: a folder with `config.json`, `model.safetensors`, `tokenizer.json` (+ its config).

A training run folder holds `last/` (with `state/` for exact resume) and `best/` checkpoints; `load` on a run
folder picks `best/` when there is one, else `last/`. Weights load memory-mapped into a model built on the
meta device (no second copy), in the dtype asked for.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any, Iterator

import torch

from . import __version__
from . import io as lio
from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .model import Transformer
from .tokenizer import Tokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
RUN_FILE = "run.json"
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype in ("auto",):
        return None
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported; use fp32 | bf16 | fp16 | auto")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not a device; use cpu | cuda | cuda:N | mps | auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but this torch has no CUDA device; use --device cpu")
    return device


# ---- saving --------------------------------------------------------------------------------------------

def write_checkpoint(folder: str | os.PathLike, model: Transformer, tokenizer: Tokenizer | None = None) -> None:
    """Write config, weights and tokenizer into `folder` (callers wrap this in `io.atomic_dir`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lio.write_json(folder / CONFIG, {"lmforge_version": __version__, "lmforge_config": model.config.to_dict()})
    lio.save_safetensors(model.state_dict_to_save(), folder / WEIGHTS, metadata={"format": "pt"})
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save(folder)


def save(model: Transformer, path: str | os.PathLike, tokenizer: Tokenizer | None = None) -> Path:
    """Save a model (and its tokenizer) as an lmforge checkpoint folder, atomically."""
    with lio.atomic_dir(path) as tmp:
        write_checkpoint(tmp, model, tokenizer)
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
        raise CheckpointError(f"no checkpoint at {path}: the folder does not exist")
    raise CheckpointError(f"{path} is not a checkpoint: no config.json there (nor in best/ or last/); "
                          "point at a training run folder or a checkpoint folder")


def read_config(folder: str | os.PathLike) -> ModelConfig:
    folder = Path(folder)
    try:
        data = lio.read_json(folder / CONFIG)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {folder / CONFIG}: {e}") from None
    if "lmforge_config" not in data:
        raise CheckpointError(f"{folder / CONFIG} is not an lmforge config (no 'lmforge_config' key)")
    return ModelConfig.from_json_dict(data)


def is_lmforge_checkpoint(folder: Path) -> bool:
    try:
        return "lmforge_config" in lio.read_json(folder / CONFIG)
    except (OSError, ValueError):
        return False


_SKIP_INIT = threading.local()


def _skippable(fn):
    def init(tensor, *args, **kwargs):
        return tensor if getattr(_SKIP_INIT, "active", False) else fn(tensor, *args, **kwargs)

    init.__wrapped__ = fn
    return init


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Turn `torch.nn.init`'s initialisers into no-ops in this thread (other threads keep initialising): on the
    meta device they compute nothing, and running them there imports torch._dynamo (about 70 MB and a second),
    which would dominate loading a small model."""
    for n in dir(torch.nn.init):
        fn = getattr(torch.nn.init, n)
        if n.endswith("_") and not n.startswith("_") and callable(fn) and not hasattr(fn, "__wrapped__"):
            setattr(torch.nn.init, n, _skippable(fn))
    _SKIP_INIT.active = True
    try:
        yield
    finally:
        _SKIP_INIT.active = False


def build_empty(config: ModelConfig) -> Transformer:
    """A model whose parameters are on the meta device (no memory), ready for `load_weights(assign=True)`."""
    with _skip_init(), torch.device("meta"):
        return Transformer(config)


def materialize_buffers(model: Transformer, device: torch.device) -> None:
    """Compute the non-persistent buffers (rotary frequencies, sinusoid tables) that weights do not carry."""
    from .model.blocks import Rotary, rope_parameters, sinusoidal_table

    for module in model.modules():
        if isinstance(module, Rotary):
            module.inv_freq = rope_parameters(model.config)[0].to(device)
        if hasattr(module, "sinusoid"):
            module.sinusoid = sinusoidal_table(model.config.context_length, model.config.d_model).to(device)


def load_weights(
    model: Transformer,
    tensors: dict[str, Any] | Any,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    source: str,
) -> Transformer:
    """Assign tensors (a name -> tensor mapping, or a callable giving them lazily) into a meta model,
    checking names and shapes; keeps each tensor's single copy."""
    expected = {k: v for k, v in model.state_dict().items() if k not in model.tied_keys()}
    names = set(tensors.keys())
    missing = sorted(set(expected) - names)
    unexpected = sorted(names - set(expected))
    if missing:
        raise CheckpointError(f"{source} is missing {len(missing)} tensor(s): {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''}; the file is truncated or was saved from a "
                              "different model configuration")
    if unexpected:
        raise CheckpointError(f"{source} has {len(unexpected)} tensor(s) this model does not have: "
                              f"{', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}; "
                              "config.json and the weights disagree (another architecture?)")
    state = {}
    for name, ref in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(ref.shape):
            raise CheckpointError(f"{source}: tensor {name} has shape {tuple(tensor.shape)}, the config expects "
                                  f"{tuple(ref.shape)}; config.json and the weights disagree")
        want = dtype if (dtype is not None and tensor.is_floating_point()) else tensor.dtype
        state[name] = tensor.to(device=device, dtype=want)
    model.load_state_dict(state, strict=False, assign=True)
    if model.tied:
        model.lm_head.weight = model.tok_embed.weight
    materialize_buffers(model, device)
    return model


class _SafetensorsFiles:
    """Lazy name -> tensor view over one or more .safetensors files (memory-mapped)."""

    def __init__(self, files: list[Path]) -> None:
        from safetensors import safe_open

        self.handles = {}
        self.where: dict[str, Any] = {}
        for file in files:
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


def load(
    path: str | os.PathLike,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
) -> Transformer:
    """Load a model: an lmforge checkpoint or run folder, or a Hugging Face folder or hub id.

    Returns the `Transformer` in eval mode with `.config` and `.tokenizer`.
    """
    from .convert.hub import looks_like_hub_id

    if looks_like_hub_id(path):  # "org/name" that is not a local path: the Hugging Face hub
        from .convert import from_hf

        return from_hf(str(path), device=device, dtype=dtype)
    folder = resolve_checkpoint(path)
    if not is_lmforge_checkpoint(folder):
        from .convert import from_hf, is_hf_folder

        if is_hf_folder(folder):  # config.json with model_type: a Hugging Face model folder
            return from_hf(folder, device=device, dtype=dtype)
        raise CheckpointError(f"{folder / CONFIG} is neither an lmforge config (no 'lmforge_config' key) nor a "
                              "Hugging Face one (no 'model_type')")
    config = read_config(folder)
    target = resolve_device(device)
    model = build_empty(config)
    weights = folder / WEIGHTS
    if not weights.exists():
        raise CheckpointError(f"{folder} has no {WEIGHTS}; the checkpoint is incomplete")
    load_weights(model, _SafetensorsFiles([weights]), device=target, dtype=parse_dtype(dtype), source=str(weights))
    model.tokenizer = Tokenizer.load(folder) if (folder / "tokenizer.json").exists() else None
    return model.eval()


__all__ = ["save", "load", "write_checkpoint", "resolve_checkpoint", "read_config", "load_weights",
           "build_empty", "parse_dtype", "resolve_device"]
