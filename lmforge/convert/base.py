"""What every Hugging Face family converter shares: reading `config.json` with clear errors, the tensor
renaming rules, and the registry keyed by `model_type`.

A family maps a Hugging Face config to a `ModelConfig` (and back) and names, for every lmforge tensor, the
Hugging Face tensor it comes from as a `Rule`: a name, optionally a slice of the last dimension (GPT-2's fused
c_attn), a transpose (GPT-2's Conv1D) and a reshape (BART's (1, vocab) final_logits_bias). The same rules are
read forwards to load and backwards to export, so the two directions cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError, choices


@dataclass(frozen=True)
class Rule:
    """Where one lmforge tensor lives in a Hugging Face checkpoint."""

    hf: str
    transpose: bool = False
    part: tuple[int, int] | None = None  # (index, count): this slice of the Hugging Face tensor's last dimension
    hf_shape: tuple[int, ...] | None = None  # the Hugging Face shape when it differs by more than the above
    zeros_if_missing: bool = False  # a buffer some checkpoints omit (BART's final_logits_bias)

    def expected_hf_shape(self, lm_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.hf_shape is not None:
            return self.hf_shape
        shape = list(reversed(lm_shape)) if self.transpose else list(lm_shape)
        if self.part is not None:
            shape[-1] *= self.part[1]
        return tuple(shape)

    def to_lmforge(self, t: torch.Tensor, lm_shape: tuple[int, ...]) -> torch.Tensor:
        """A view (no copy) of the Hugging Face tensor in lmforge's layout."""
        if self.part is not None:
            i, n = self.part
            size = t.shape[-1] // n
            t = t[..., i * size:(i + 1) * size]
        if self.transpose:
            t = t.t()
        if tuple(t.shape) != tuple(lm_shape):
            t = t.reshape(lm_shape)
        return t

    @property
    def is_view(self) -> bool:
        """True when the lmforge tensor is the stored tensor itself (no slice, transpose or reshape)."""
        return self.part is None and not self.transpose and self.hf_shape is None


class HFConfig:
    """A Hugging Face config.json with lookups that fail with the key's name."""

    def __init__(self, data: dict[str, Any], source: str) -> None:
        self.data = data
        self.source = source
        self.model_type = data.get("model_type")

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key, default)
        return default if value is None else value

    def require(self, key: str, *alternatives: str) -> Any:
        for k in (key, *alternatives):
            if self.data.get(k) is not None:
                return self.data[k]
        raise CheckpointError(f"{self.source} has no {key!r}, which model_type={self.model_type} needs")

    def unsupported(self, key: str, value: Any, supported: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}={value!r} is not supported for model_type={self.model_type}; "
                           f"lmforge supports {supported}")

    def expect(self, key: str, allowed: tuple, default: Any, supported: str | None = None) -> Any:
        value = self.data.get(key, default)
        value = default if value is None else value
        if value not in allowed:
            raise self.unsupported(key, value, supported or f"{key} in ({choices(allowed)})")
        return value

    def first_id(self, key: str) -> int | None:
        value = self.data.get(key)
        if isinstance(value, list):
            return value[0] if value else None
        return value


# Hugging Face activation names -> lmforge's (non-gated MLPs)
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}
# lmforge activation -> Hugging Face name written on export
LM_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def activation_from_hf(hf: HFConfig, key: str, default: str = "gelu") -> str:
    name = hf.get(key, default)
    if name not in HF_ACTIVATIONS:
        raise hf.unsupported(key, name, f"{key} in ({choices(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[name]


class ExportError(ConfigError):
    """An lmforge option that the target Hugging Face format cannot express."""


def cannot_export(model_type: str, option: str, value: Any, why: str) -> ExportError:
    return ExportError(f"cannot export to Hugging Face model_type={model_type}: lmforge option {option}={value!r} "
                       f"has no equivalent there ({why})")


def require(model_type: str, config: ModelConfig, option: str, allowed: tuple, why: str) -> None:
    """Raise a clear export error when config.<option> (resolved) is not one of `allowed`."""
    value = config.resolved(option) if option in ("qkv_bias", "attn_out_bias", "mlp_bias", "lm_head_bias",
                                                  "attn_dropout") else getattr(config, option)
    if value not in allowed:
        raise cannot_export(model_type, option, value, why)


class Family:
    """A Hugging Face model family: config mapping both ways and tensor rules."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    architectures_read: ClassVar[str]  # for error messages: the classes whose checkpoints load

    # ---- import -------------------------------------------------------------------------------------------
    def prefix(self, hf: HFConfig, keys: set[str]) -> str:
        """The base-model prefix the checkpoint uses ('model.', 'bert.', '' for a bare base model)."""
        for prefix in self.prefixes(hf):
            if prefix + self.embedding_key(hf) in keys:
                return prefix
        raise CheckpointError(f"{hf.source}: no token embedding tensor found (looked for "
                              f"{', '.join(p + self.embedding_key(hf) for p in self.prefixes(hf))}); "
                              f"the weights do not belong to a {hf.model_type} model "
                              f"({self.architectures_read})")

    def prefixes(self, hf: HFConfig) -> tuple[str, ...]:
        raise NotImplementedError

    def embedding_key(self, hf: HFConfig) -> str:
        raise NotImplementedError

    def to_lmforge(self, hf: HFConfig, keys: set[str], prefix: str) -> ModelConfig:
        raise NotImplementedError

    def rules(self, config: ModelConfig, prefix: str, model_type: str, keys: set[str] | None = None) -> dict[str, Rule]:
        """lmforge tensor name -> Rule, for every tensor of a model built from `config` (`keys`: the checkpoint's
        tensor names when loading, None when exporting)."""
        raise NotImplementedError

    def ignorable(self, key: str, config: ModelConfig) -> bool:
        """Tensors a checkpoint may carry that are not weights (buffers, tied duplicates)."""
        return False

    # ---- export -------------------------------------------------------------------------------------------
    def export_model_type(self, config: ModelConfig, wanted: str | None) -> str:
        return wanted or self.model_types[0]

    def to_hf_config(self, config: ModelConfig, model_type: str) -> dict[str, Any]:
        """The Hugging Face config.json content; raises ExportError naming an option HF cannot express."""
        raise NotImplementedError

    def export_prefix(self, config: ModelConfig, model_type: str) -> str:
        raise NotImplementedError

    def export_config(self, config: ModelConfig) -> ModelConfig:
        """`config` with every bias the Hugging Face format always has (lmforge's missing ones export as zeros)."""
        return config

    def extra_export_tensors(self, config: ModelConfig, model_type: str, model) -> dict[str, torch.Tensor]:
        """Tensors the Hugging Face model needs that lmforge does not store (e.g. zero token-type embeddings)."""
        return {}


__all__ = ["Rule", "HFConfig", "Family", "ExportError", "cannot_export"]
