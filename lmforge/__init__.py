"""lmforge: train, adapt, compress and ship Transformer language models."""

__version__ = "0.1.0"

from .config import ModelConfig  # noqa: E402
from .errors import LmforgeError  # noqa: E402
from .model import KVCache, Transformer, build_model  # noqa: E402

__all__ = ["ModelConfig", "LmforgeError", "KVCache", "Transformer", "build_model", "__version__"]

from .checkpoint import load, save  # noqa: E402
from .tokenizer import Tokenizer, train_tokenizer  # noqa: E402

__all__ += ["load", "save", "Tokenizer", "train_tokenizer"]

from .generate import generate  # noqa: E402  (the function; the module stays importable as lmforge.generate.*)

__all__ += ["generate"]

from . import convert  # noqa: E402  (lmforge.convert.from_hf / to_hf: Hugging Face interop; needs no transformers)

__all__ += ["convert"]
