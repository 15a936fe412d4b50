"""Compression: quantization (weight-only int8/int4 by round-to-nearest or GPTQ, dynamic int8) as a layer swap on a
loaded model, and the compression report that measures any compressed model against its original (size, speed,
perplexity, KL divergence and top-token agreement); pruning (magnitude, Wanda, 2:4, heads and neurons removed)
and low-rank factorisation (SVD, ASVD, SVD-LLM). Distillation is an objective of the training loop
(`lmforge.train.distill`). See docs/compression.md."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# imported on first use, so that `lmforge <verb> --help` for the compression verbs does not import torch
_API = {"quantize": "quantize", "prune": "prune", "factorize": "lowrank", "merge_lowrank": "lowrank"}


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """The import system sets `lmforge.compress.quantize` to the submodule whenever `compress/quantize.py` is first
    imported (by `from .quantize import ...` anywhere); that must not hide the function of the same name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["quantize", "prune", "factorize", "merge_lowrank"]
