"""Hugging Face interoperability: load, convert and export GPT-2, the Llama family (Llama, Mistral, Qwen2),
BERT/RoBERTa and BART checkpoints.

    model = lmforge.convert.from_hf("./hf-model")           # or lmforge.load("./hf-model") / lmforge.load("org/name")
    lmforge.convert.to_hf("./lm-model", "./hf-out")         # transformers' from_pretrained loads ./hf-out
    lmforge.convert.from_gguf("model.gguf")                 # llama.cpp's format (or lmforge.load("model.gguf"))
    lmforge.convert.to_gguf("./lm-model", "out.gguf", type="q8_0")

See docs/interop.md (Hugging Face) and docs/export.md (GGUF) for the supported options and the limits.
"""

from .api import from_hf, hf_folder, is_hf_folder, to_hf, write_lmforge
from .base import ExportError
from .gguf import from_gguf, to_gguf
from .registry import supported_model_types

__all__ = ["from_hf", "to_hf", "hf_folder", "is_hf_folder", "write_lmforge", "ExportError",
           "supported_model_types", "from_gguf", "to_gguf"]
