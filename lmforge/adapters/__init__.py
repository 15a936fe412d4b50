"""LoRA adapters, the public names in one place: the layer swap (`lmforge.model.lora`) and the adapter's files
(`lmforge.checkpoint`). See docs/finetuning.md."""

from ..checkpoint import load_adapter, save_adapter
from ..model.lora import LoRALinear, apply_lora, merge_lora, trainable_fraction

__all__ = ["LoRALinear", "apply_lora", "merge_lora", "save_adapter", "load_adapter", "trainable_fraction"]
