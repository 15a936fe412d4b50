"""Hugging Face interoperability: load, convert and export GPT-2, the Llama family (Llama, Mistral, Qwen2),
BERT/RoBERTa and BART checkpoints.

    model = lmforge.convert.from_hf("./hf-model")           # or lmforge.load("./hf-model") / lmforge.load("org/name")
    lmforge.convert.to_hf("./lm-model", "./hf-out")         # transformers' from_pretrained loads ./hf-out

See docs/interop.md for the supported options and the limits.
"""

from .api import from_hf, hf_folder, is_hf_folder, to_hf, write_lmforge
from .base import ExportError
from .registry import supported_model_types

__all__ = ["from_hf", "to_hf", "hf_folder", "is_hf_folder", "write_lmforge", "ExportError",
           "supported_model_types"]
