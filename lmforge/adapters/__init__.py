"""Parameter-efficient adapters as layer swaps (LoRA)."""

from .lora import (LoRALinear, apply_lora, load_adapter, merge_lora, save_adapter,  # noqa: F401
                   trainable_fraction)

__all__ = ["LoRALinear", "apply_lora", "merge_lora", "save_adapter", "load_adapter", "trainable_fraction"]
