"""Every Hugging Face family lmforge converts, by model_type."""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError, choices
from . import bart, bert, gpt2, llama
from .base import Family

REGISTRY: dict[str, Family] = {t: family for family in (gpt2.FAMILY, llama.FAMILY, bert.FAMILY, bart.FAMILY)
                               for t in family.model_types}


def family_for(model_type: Any, source: str) -> Family:
    if model_type not in REGISTRY:
        raise CheckpointError(f"{source}: model_type={model_type!r} is not supported; lmforge converts "
                              f"{choices(sorted(REGISTRY))}")
    return REGISTRY[model_type]


def supported_model_types() -> list[str]:
    return sorted(REGISTRY)


__all__ = ["REGISTRY", "family_for", "supported_model_types"]
