"""GGUF, llama.cpp's file format, in and out (docs/export.md).

    model = lmforge.load("model.gguf")                         # = from_gguf: dequantized, tokenizer rebuilt
    lmforge.convert.to_gguf(model, "out.gguf", type="q8_0")    # llama | qwen2 | gpt2 | bert layouts
    llamacpp_logits("out.gguf", [ids])                         # llama.cpp's own logits (llama-cpp-python)

GGUF files are read and written as the Hugging Face checkpoint they stand for, through the family tables of
`lmforge.convert`, which is why this lives here and not beside the ONNX exporter.
"""

from .exporter import GGUFExport, to_gguf
from .importer import from_gguf, gguf_model_config
from .llamacpp import llamacpp_available, llamacpp_logits, llamacpp_tokenize
from .quants import TYPES as GGUF_TYPES
from .reader import GGUFFile, is_gguf_file
from .vocab import TOKENIZER_MODES

__all__ = ["from_gguf", "to_gguf", "GGUFExport", "gguf_model_config", "GGUFFile", "is_gguf_file", "GGUF_TYPES",
           "TOKENIZER_MODES", "llamacpp_available", "llamacpp_logits", "llamacpp_tokenize"]
