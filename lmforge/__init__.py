"""lmforge: train, adapt, compress and ship Transformer language models.

The public API is imported on first use (`lmforge.load` imports the loaders, `lmforge.generate` the decoding
engine), so `import lmforge` and `lmforge --help` load neither torch nor anything else heavy.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ._version import __version__

# PyTorch's CPU allocator backs allocations of 2 MB and more with transparent huge pages when this is set before torch
# allocates its first tensor (c10's THP_MEM_ALLOC_ENABLE): weights streamed once a decoding step then cost one TLB
# entry per 2 MB instead of per 4 KB. Ad-hoc tests saw batch-1 decoding 10-30% faster; the benchmark did not confirm
# it (1.00x, docs/performance.md); it costs nothing measured. A value the user set is kept; with torch imported
# before lmforge it has no effect.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

_API = {"ModelConfig": "config", "LmforgeError": "errors", "KVCache": "model", "Transformer": "model",
        "build_model": "model", "load": "loading", "save": "checkpoint", "Tokenizer": "tokenizer",
        "train_tokenizer": "tokenizer", "generate": "generate", "embed": "apps.embed"}
_PACKAGES = ("convert",)

__all__ = [*_API, *_PACKAGES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    elif name in _PACKAGES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
