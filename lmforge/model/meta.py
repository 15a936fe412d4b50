"""Models built without memory and filled from weights: build on the meta device, then assign each tensor.

`build_empty` builds a `Transformer` whose parameters are on the meta device; `load_weights` checks every name
and shape against the model and assigns the tensors (keeping each tensor's single copy, e.g. a memory-mapped
file); `materialize_buffers` computes what weights do not carry (rotary frequencies, sinusoid tables). Every
reader of weights (native checkpoints, Hugging Face folders, GGUF files) goes through these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Iterator

import torch

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from .blocks import Rotary, rope_parameters, sinusoidal_table
from .transformer import Transformer

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


def check_fits_in_memory(config: ModelConfig, what: str = "training") -> None:
    """Refuse a shape whose weights (and, for training, gradients and AdamW moments: 16 bytes a parameter) cannot fit
    in this machine's memory, before anything is allocated (a typo like n_layer=1000000 would swap or be killed)."""
    import os

    params = parameter_count(config)
    need = params * (16 if what == "training" else 4)
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > memory:
        raise ConfigError(f"this shape has {params / 1e9:.2f}B parameters: {what} needs about {need / 2**30:.0f} GiB "
                          f"and this machine has {memory / 2**30:.0f} GiB; check n_layer, d_model and vocab_size")


def parameter_count(config: ModelConfig) -> int:
    """Parameters of this shape, counted on the meta device. Blocks are alike, so a deep shape is counted from one
    and two blocks per stack: building a million meta blocks (a typo like n_layer=1000000) would itself take tens of
    GiB of Python objects."""
    enc_dec = config.arch == "encoder_decoder"
    first = config.unique_layers or config.n_layer
    second = (config.unique_layers or config.decoder_layers) if enc_dec else 1
    if first + second <= 12:
        return build_empty(config).num_parameters()

    def count(a: int, b: int) -> int:
        shape = dataclasses.replace(config, n_layer=a, n_decoder_layer=b if enc_dec else None, unique_layers=None)
        return build_empty(shape).num_parameters()

    base = count(1, 1)
    return base + (first - 1) * (count(2, 1) - base) + (second - 1) * (count(1, 2) - base)


def build_empty(config: ModelConfig) -> Transformer:
    """A model whose parameters are on the meta device (no memory), ready for `load_weights(assign=True)`."""
    with _skip_init(), torch.device("meta"):
        return Transformer(config)


def materialize_buffers(model: Transformer, device: torch.device) -> None:
    """Compute the non-persistent buffers (rotary frequencies, sinusoid tables) that weights do not carry."""
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


__all__ = ["build_empty", "load_weights", "materialize_buffers"]
