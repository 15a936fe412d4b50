"""Devices and dtypes: what the user names (`--device cuda`, `--dtype bf16`) as torch objects, with one-line errors."""

from __future__ import annotations

import torch

from .errors import ConfigError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype name (fp32 | bf16 | fp16) as a torch dtype; None and "auto" give None (keep / choose later)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype in ("auto",):
        return None
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported; use fp32 | bf16 | fp16 | auto")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A device name as a torch device; None and "auto" pick CUDA when there is one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not a device; use cpu | cuda | cuda:N | mps | auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but this torch has no CUDA device; use --device cpu")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix multiplies are native (and so faster than fp32) on this device: CUDA GPUs with bf16,
    and CPUs with AVX512-BF16 or AMX, where they run 2-4x faster than fp32 ones."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


__all__ = ["DTYPES", "parse_dtype", "resolve_device", "native_bf16"]
